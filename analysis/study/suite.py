"""A suite of studies run one after another (for instance five backbones on clean and corrupted data under two
training schemes) and one comparison table across them. Per study and device profile, on test with everything
decided on calib: accuracy and mean / p95 latency (ms per sample at batch 1) of ``full``, the cascade, the best
placement the search finds on calib, the best placement with predictors (gates or a jump) and the oracle, with the
ratios best/oracle and best-gated/cascade and their paired bootstrap 95 % CIs. ``perfect_gates/cascade``: free
perfect gates in front of every side exit under the calibrated exit rule, the most any predictor can save over the
cascade with those thresholds (:func:`analysis.core.breakeven.perfect_gates_outcome`)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from branchy.config import check_int, from_mapping, read_yaml, setting
from placement import Placement

from ..core.breakeven import perfect_gates_outcome
from ..core.costs import get_profile
from ..core.evidence import Evidence
from .config import StudyConfig
from .placement_study import PlacementObjective, run_placement


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
    """mean(a) / mean(b) over the same samples, with a paired bootstrap 95 % CI."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    r = a.mean() / b.mean()
    if n_boot <= 0:
        return r, np.nan, np.nan
    idx = np.random.default_rng(seed).integers(0, len(a), (n_boot, len(a)))
    rs = a[idx].mean(1) / b[idx].mean(1)
    return float(r), float(np.percentile(rs, 2.5)), float(np.percentile(rs, 97.5))


def _best_gated(res) -> Placement | None:
    """The best feasible candidate (by the search's own constraint) that uses a predictor (a gate or a jump)."""
    rows = [r for r in res.table.to_dict("records") if r.get("candidate", True) and r["feasible"]
            and (any(g is not None for g in r["placement"].gates) or r["placement"].jump is not None)]
    if not rows:
        return None
    for i, r in enumerate(rows):
        r.setdefault("_order", i)
    return min(rows, key=lambda r: res.constraint.key(r, res.full_accuracy))["placement"]


def compare_study(key: str, result: dict, profiles, *, strategy: str = "greedy", n_boot: int = 1000) -> list[dict]:
    """The comparison rows of one finished study (:func:`analysis.study.pipeline.run_study`'s result)."""
    cfg: StudyConfig = result["config"]
    cache, preds, rule = result["cache"], result["predictors"], result["rule"]
    pcfg = cfg.policies
    rows = []
    for prof in dict.fromkeys(["measured", *profiles]):
        sim = result["simulation"]["outcomes"][get_profile(prof).name]
        named = {n: sim[n] for n in ("full", "cascade", "oracle")}
        note = ""
        if cache.chained:
            note = f"exits chained ({cache.chain}): no placement can remove or gate an exit"
        else:
            done = result.get("placements", {}).get(strategy)
            if done is not None and get_profile(prof).name == get_profile(cfg.placement.profile).name:
                res = done[0]  # the study searched under this profile already
            else:
                res, _ = run_placement(cache, preds, strategy, constraint=cfg.placement.constraint, profile=prof,
                                       rule=rule, cfg=pcfg, progress=False, seed=cfg.placement.seed,
                                       n_jobs=cfg.placement.n_jobs, scheduler=cfg.placement.scheduler,
                                       **cfg.placement.options(strategy))
            obj = PlacementObjective(cache, preds, profile=prof, rule=rule, cfg=pcfg)
            test = Evidence.build(cache, "test", measure=pcfg.measure, predictors=preds, costs=obj.costs)
            named["best"] = obj.outcome(res.chosen, test)
            named["perfect_gates"] = perfect_gates_outcome(test, rule, overlap=pcfg.overlap)
            gated = _best_gated(res)
            if gated is not None:
                named["best_gated"] = obj.outcome(gated, test)
            else:
                note = "no feasible placement with predictors on calib"
        row = {"study": key, "profile": get_profile(prof).name, "n_test": len(named["full"].latency_ms)}
        for n, o in named.items():
            row[f"{n}_acc_%"] = 100 * float(o.correct.mean())
            row[f"{n}_mean_ms"] = float(o.latency_ms.mean())
            row[f"{n}_p95_ms"] = float(np.percentile(o.latency_ms, 95))
        for num, den in (("best", "oracle"), ("best_gated", "cascade"), ("best", "cascade"),
                         ("perfect_gates", "cascade")):
            if num in named:
                r, lo, hi = ratio_ci(named[num].latency_ms, named[den].latency_ms, n_boot, seed=0)
                row.update({f"{num}/{den}": r, f"{num}/{den}_lo": lo, f"{num}/{den}_hi": hi})
        for n in ("best", "best_gated"):
            if n in named:
                d, lo, hi = _acc_diff_ci(named[n].correct, named["full" if n == "best" else "cascade"].correct, n_boot)
                row.update({f"{n}_acc_vs_{'full' if n == 'best' else 'cascade'}_pts": d,
                            f"{n}_acc_vs_{'full' if n == 'best' else 'cascade'}_lo": lo,
                            f"{n}_acc_vs_{'full' if n == 'best' else 'cascade'}_hi": hi})
        row["note"] = note
        rows.append(row)
    return rows


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
        rows += compare_study(key, result, suite.profiles, strategy=suite.strategy, n_boot=suite.bootstrap)
        pd.DataFrame(rows).to_csv(out / "comparison.csv", index=False)  # kept up to date as studies finish
    return pd.DataFrame(rows)


def equal_accuracy(df: pd.DataFrame) -> pd.Series:
    """Rows where the best gated placement's accuracy equals the cascade's within the paired 95 % CI (or is
    better): the CI of (gated - cascade) accuracy reaches 0 or above."""
    if "best_gated_acc_vs_cascade_hi" not in df:
        return pd.Series(False, index=df.index)
    hi = df["best_gated_acc_vs_cascade_hi"].where(df["best_gated_acc_vs_cascade_hi"].notna(),
                                                  df.get("best_gated_acc_vs_cascade_pts"))
    return hi >= 0


def suite_line(df: pd.DataFrame) -> str:
    """``backbones: best/oracle max R1, best-gated/cascade min R2 (B backbones, P profiles)``; R2 over the rows where
    the gated placement's accuracy equals the cascade's within the CI (:func:`equal_accuracy`), as P2 asks."""
    r1 = df["best/oracle"].max() if "best/oracle" in df and df["best/oracle"].notna().any() else float("nan")
    ok = df[equal_accuracy(df)] if "best_gated/cascade" in df else df.iloc[:0]
    r2 = ok["best_gated/cascade"].min() if len(ok) and ok["best_gated/cascade"].notna().any() else float("nan")
    backbones = df.study.str.split("/").str[0].nunique()
    return (f"backbones: best/oracle max {r1:.3f}, best-gated/cascade min {r2:.3f} ({backbones} backbones, "
            f"{df.profile.nunique()} profiles)")


__all__ = ["SuiteConfig", "compare_study", "equal_accuracy", "load_suite", "ratio_ci", "run_suite", "suite_line"]
