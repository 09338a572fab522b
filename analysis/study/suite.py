"""A suite of studies run one after another (for instance five backbones on clean and corrupted data under two
training schemes) and one comparison table across them (``comparison.csv``). Per study and device profile, on test
with everything decided on calib (:mod:`analysis.study.baselines`): accuracy and mean / p95 latency (ms per sample
at batch 1) of ``full``, the default cascade, the best confidence rule, the best predictor-free policy, the best
placement with a predictor, the best of all, the accuracy-matched oracle and the oracle; the ratios between them
with paired bootstrap 95 % CIs over test samples and, for a measured profile, over its independent profilings; and
whether predictors pay (best gated against best predictor-free, CI below 1, non-inferior accuracy).
``perfect_gates_vs_cascade``: free perfect gates in front of every side exit of the default cascade, the most a
predictor can save over *that cascade with its kept exits and thresholds*
(:func:`analysis.core.breakeven.perfect_gates_outcome`), not over every policy."""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from branchy.config import check_int, from_mapping, read_yaml, setting

from ..core.breakeven import perfect_gates_outcome
from ..core.costs import get_profile
from ..core.evidence import Evidence, outcome
from .config import StudyConfig


def _merge(a: dict, b: dict) -> dict:
    """``b`` over ``a``, mappings merged key by key."""
    out = copy.deepcopy(a)
    for k, v in (b or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


@dataclass(frozen=True)
class SuiteConfig:
    """``base``: the study mapping every study starts from (YAML of a study, without data and model);
    ``backbones``: name -> the study mapping merged over it (``model``, ``train``, ...); ``datasets``: data
    mappings by key (``{mnist5k: {dataset: mnist5k}}``); ``schemes``: scheme -> ``{datasets: [keys] (default
    all), train: {...}, trunk_from: SCHEME}`` (``trunk_from``: start from that scheme's trained net, as ic-only
    and ztw can). ``profiles``: the device profiles compared; the placement is searched under each."""

    name: str = setting("suite", "the suite's name")
    out: str = setting("runs/suite", "folder of the suite: one subfolder per study, plus comparison.csv")
    base: dict = setting({}, "the study mapping every study starts from")
    backbones: dict = setting({}, "backbone name -> study mapping merged over base")
    datasets: dict = setting({"mnist5k": {"dataset": "mnist5k"}}, "data key -> data mapping")
    schemes: dict = setting({"joint": {}}, "scheme -> {datasets, train, trunk_from}")
    profiles: tuple[str, ...] = setting(("raspberry-pi-4", "jetson-nano"), "device profiles compared")
    strategy: str = setting("greedy", "placement strategy searched under each profile")
    bootstrap: int = setting(1000, "bootstrap resamples of the ratios' CIs")

    def __post_init__(self) -> None:
        if not self.backbones:
            raise ValueError("backbones: name at least one backbone")
        for p in self.profiles:
            get_profile(p)
        check_int("bootstrap", self.bootstrap, 0)
        for s, spec in self.schemes.items():
            unknown = set(spec or {}) - {"datasets", "train", "trunk_from"}
            if unknown:
                raise ValueError(f"schemes.{s}: unknown key(s) {sorted(unknown)}; known: datasets, train, trunk_from")
            for d in (spec or {}).get("datasets") or ():
                if d not in self.datasets:
                    raise ValueError(f"schemes.{s}.datasets: {d!r} is not one of datasets ({', '.join(self.datasets)})")
            src = (spec or {}).get("trunk_from")
            if src is not None and (src not in self.schemes or list(self.schemes).index(src) > list(self.schemes).index(s)):
                raise ValueError(f"schemes.{s}.trunk_from: {src!r} must be a scheme listed before {s}")
        self.studies()  # every study config is checked before any work

    def studies(self) -> list[tuple[str, StudyConfig]]:
        """``(key, StudyConfig)`` in run order: per backbone, per scheme (in the order given), per dataset."""
        out = []
        for bb, bb_map in self.backbones.items():
            for scheme, spec in self.schemes.items():
                spec = spec or {}
                for dk in spec.get("datasets") or list(self.datasets):
                    key = f"{bb}/{dk}/{scheme}"
                    raw = _merge(_merge(self.base, bb_map), {"train": {**(spec.get("train") or {}), "scheme": scheme}})
                    raw = _merge(raw, {"data": self.datasets[dk], "name": key,
                                       "out": str(Path(self.out) / f"{bb}-{dk}-{scheme}")})
                    raw.setdefault("model", {}).setdefault("name", bb)
                    if spec.get("trunk_from"):
                        raw["train"]["init_checkpoint"] = str(Path(self.out) / f"{bb}-{dk}-{spec['trunk_from']}" /
                                                              "model" / "model.pt")
                    raw["profiles"] = list(dict.fromkeys(["measured", *self.profiles]))
                    raw["placement"] = {**raw.get("placement", {}), "strategies": [self.strategy],
                                        "profile": self.profiles[0]}
                    out.append((key, from_mapping(StudyConfig, raw, key)))
        return out


def load_suite(path: str | Path) -> SuiteConfig:
    return from_mapping(SuiteConfig, read_yaml(path, "suite config"), "")


def ratio_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """mean(a) / mean(b) over the same samples, with a paired bootstrap 95 % CI. ``a`` and ``b`` are ``[N]``, or
    ``[R, N]``: the same samples' latencies under R independent cost tables (profilings), the first the one the
    decisions used. Then the point is the first table's ratio and every resample also draws a table (the same for
    ``a`` and ``b``), so the CI carries the costs' own spread as well as the samples'."""
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    if a.shape != b.shape:
        raise ValueError(f"ratio_ci: a {a.shape} and b {b.shape} must hold the same samples and tables")
    r = a[0].mean() / b[0].mean()
    if n_boot <= 0:
        return float(r), np.nan, np.nan
    rng = np.random.default_rng(seed)
    n_tab, n = a.shape
    idx = rng.integers(0, n, (n_boot, n))
    if n_tab == 1:
        rs = a[0][idx].mean(1) / b[0][idx].mean(1)
    else:
        tab = rng.integers(0, n_tab, n_boot)[:, None]
        rs = a[tab, idx].mean(1) / b[tab, idx].mean(1)
    return float(r), float(np.percentile(rs, 2.5)), float(np.percentile(rs, 97.5))


REFERENCES = ("full", "cascade", "best-rule", "best-free", "best-gated", "best", "matched-oracle", "oracle")
# ratio columns: name -> (numerator, denominator)
RATIOS = {"gated_vs_free": ("best-gated", "best-free"), "free_vs_full": ("best-free", "full"),
          "cascade_vs_full": ("cascade", "full"), "best_rule_vs_cascade": ("best-rule", "cascade"),
          "gated_vs_cascade": ("best-gated", "cascade"), "best_vs_matched_oracle": ("best", "matched-oracle"),
          "best_vs_oracle": ("best", "oracle"), "perfect_gates_vs_cascade": ("perfect-gates", "cascade")}


def _col(name: str) -> str:
    return name.replace("-", "_")


def compare_study(key: str, result: dict, profiles, *, n_boot: int = 1000) -> list[dict]:
    """The comparison rows of one finished study (:func:`analysis.study.pipeline.run_study`'s result), one per
    device profile: every reference of :mod:`analysis.study.baselines` decided on calib under that profile and the
    study's placement constraint, reported on test, with paired bootstrap CIs of the ratios (test samples and, for a
    measured profile, its independent profilings) and of the accuracy differences. ``gated_vs_free``: the best
    placement with a predictor against the best predictor-free policy; a row says predictors ``pay`` when the upper
    end of its CI is below 1 and the lower end of the accuracy difference's CI is at least -``max_acc_drop``."""
    from ..core.costs import measured_cost_models
    from .baselines import decide_baselines

    cfg: StudyConfig = result["config"]
    cache, preds, rule = result["cache"], result["predictors"], result["rule"]
    pcfg = cfg.policies
    con = cfg.placement.constraint
    eps = con.max_acc_drop if con.max_acc_drop is not None else 0.0
    rows = []
    for prof in dict.fromkeys(["measured", *profiles]):
        name = get_profile(prof).name
        base = decide_baselines(cache, preds, profile=prof, rule=rule, cfg=pcfg, constraint=con,
                                n_jobs=cfg.placement.n_jobs, seed=cfg.placement.seed)
        obj = base.objective
        tables = measured_cost_models(cache, prof)
        test0 = Evidence.build(cache, "test", measure=pcfg.measure, predictors=preds, costs=tables[0])
        tests = [test0] + [replace(test0, costs=c) for c in tables[1:]]
        outs: dict[str, list] = {}
        for n, d in base.decided.items():
            cuts = obj.cuts(d.placement)
            outs[n] = [obj.outcome(d.placement, ev, cuts) for ev in tests]
        for n in ("matched-oracle", "oracle"):
            outs[n] = [outcome(ev, n, rule) for ev in tests]
        if not cache.chained:
            outs["perfect-gates"] = [perfect_gates_outcome(ev, rule, overlap=pcfg.overlap) for ev in tests]
        row = {"study": key, "profile": name, "n_test": test0.n, "cost_tables": len(tables),
               "acc_eps_pts": eps}
        for n, o in outs.items():
            c = _col(n)
            row[f"{c}_acc_%"] = 100 * float(o[0].correct.mean())
            row[f"{c}_ms"] = float(o[0].latency_ms.mean())
            row[f"{c}_p95_ms"] = float(np.percentile(o[0].latency_ms, 95))
        for n, d in base.decided.items():
            row[f"{_col(n)}_placement"] = d.placement.describe()
            row[f"{_col(n)}_rule"] = d.how
        for col, (num, den) in RATIOS.items():
            if num in outs and den in outs:
                lat = lambda n: np.stack([o.latency_ms for o in outs[n]])  # noqa: E731
                r, lo, hi = ratio_ci(lat(num), lat(den), n_boot, seed=0)
                row.update({col: r, f"{col}_lo": lo, f"{col}_hi": hi})
        for col, (num, den) in (("gated_vs_free", ("best-gated", "best-free")), ("free_vs_full", ("best-free", "full")),
                                ("best_vs_full", ("best", "full"))):
            if num in outs:
                d, lo, hi = _acc_diff_ci(outs[num][0].correct, outs[den][0].correct, n_boot)
                row.update({f"{col}_acc_pts": d, f"{col}_acc_lo_pts": lo, f"{col}_acc_hi_pts": hi})
        row["pays"] = bool("gated_vs_free" in row and row["gated_vs_free_hi"] < 1
                           and non_inferior(row.get("gated_vs_free_acc_lo_pts"), row.get("gated_vs_free_acc_pts"), eps))
        row["note"] = (f"exits chained ({cache.chain}): no placement can remove or gate an exit" if cache.chained else
                       "" if "best-gated" in outs else "no placement with a predictor (none fitted)")
        rows.append(row)
    return rows


def non_inferior(lo, point, eps: float) -> bool:
    """Non-inferior accuracy: the lower end of the paired 95 % CI of the accuracy difference (points) is at least
    ``-eps`` (the point estimate when no CI was drawn)."""
    v = lo if lo is not None and np.isfinite(lo) else point
    return v is not None and np.isfinite(v) and v >= -eps - 1e-9


def _acc_diff_ci(a: np.ndarray, b: np.ndarray, n_boot: int) -> tuple[float, float, float]:
    """Accuracy of ``a`` minus ``b`` in points, paired bootstrap 95 % CI."""
    d = 100 * (a.astype(float) - b.astype(float))
    if n_boot <= 0:
        return float(d.mean()), np.nan, np.nan
    idx = np.random.default_rng(1).integers(0, len(d), (n_boot, len(d)))
    m = d[idx].mean(1)
    return float(d.mean()), float(np.percentile(m, 2.5)), float(np.percentile(m, 97.5))


def run_suite(suite: SuiteConfig, *, redo: bool = False, log=print) -> pd.DataFrame:
    """Run every study (reusing what a previous run wrote), then write and return ``comparison.csv``."""
    from .pipeline import run_study

    out = Path(suite.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for key, cfg in suite.studies():
        log(f"[suite] {key}")
        result = run_study(cfg, redo=redo)
        rows += compare_study(key, result, suite.profiles, n_boot=suite.bootstrap)
        pd.DataFrame(rows).to_csv(out / "comparison.csv", index=False)  # kept up to date as studies finish
    return pd.DataFrame(rows)


def paying(df: pd.DataFrame) -> pd.Series:
    """Rows where predictors pay: ``gated_vs_free_hi < 1`` at non-inferior accuracy (:func:`non_inferior`)."""
    if "gated_vs_free_hi" not in df:
        return pd.Series(False, index=df.index)
    return pd.Series([bool(r.get("gated_vs_free_hi", np.nan) < 1 and
                           non_inferior(r.get("gated_vs_free_acc_lo_pts"), r.get("gated_vs_free_acc_pts"),
                                        r.get("acc_eps_pts", 0.0)))
                      for r in df.to_dict("records")], index=df.index, dtype=bool)


def suite_line(df: pd.DataFrame) -> str:
    """``backbones: gated/best-free min R [LO, HI], predictors pay on N of M rows, best/matched-oracle max Q
    (B backbones, P profiles)``. R: the smallest ``gated_vs_free`` among rows whose gated accuracy is non-inferior
    (all rows with a gated placement when none is); M: rows where a placement with a predictor exists."""
    has = df[df["gated_vs_free"].notna()] if "gated_vs_free" in df else df.iloc[:0]
    ok = has[[non_inferior(r.get("gated_vs_free_acc_lo_pts"), r.get("gated_vs_free_acc_pts"), r.get("acc_eps_pts", 0))
              for r in has.to_dict("records")]] if len(has) else has
    pool = ok if len(ok) else has
    if len(pool):
        r = pool.loc[pool["gated_vs_free"].idxmin()]
        head = f"{r['gated_vs_free']:.3f} [{r['gated_vs_free_lo']:.3f}, {r['gated_vs_free_hi']:.3f}]"
    else:
        head = "nan [nan, nan]"
    q = df["best_vs_matched_oracle"].max() if "best_vs_matched_oracle" in df else float("nan")
    backbones = df.study.str.split("/").str[0].nunique()
    return (f"backbones: gated/best-free min {head}, predictors pay on {int(paying(df).sum())} of {len(has)} rows, "
            f"best/matched-oracle max {q:.3f} ({backbones} backbones, {df.profile.nunique()} profiles)")


__all__ = ["REFERENCES", "RATIOS", "SuiteConfig", "compare_study", "load_suite", "non_inferior", "paying", "ratio_ci",
           "run_suite", "suite_line"]
