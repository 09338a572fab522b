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
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from branchy.core import check_int, from_mapping, read_yaml, setting, show_progress

from ..core.costs import get_profile
from ..core.paired import non_inferior, ratio_ci
from .baselines import RATIOS, compare_references
from .verdict import pays
from .config import StudyConfig


def merge_mappings(a: dict, b: dict) -> dict:
    """``b`` over ``a``, mappings merged key by key."""
    out = copy.deepcopy(a)
    for k, v in (b or {}).items():
        both = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = merge_mappings(out[k], v) if both else copy.deepcopy(v)
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
        import re

        from .config import check_dataset_named

        if not self.backbones:
            raise ValueError("backbones: name at least one backbone")
        if not self.profiles:
            raise ValueError("profiles: name at least one device profile (e.g. [raspberry-pi-4]; see `branchy "
                             "profiles`)")
        for section in ("backbones", "datasets", "schemes"):  # each study's folder is out/{bb}-{dk}-{scheme}
            for k in getattr(self, section):
                if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", k):
                    raise ValueError(f"{section}: key {k!r} names a study folder ({self.out}/BACKBONE-DATASET-"
                                     f"SCHEME), so it must start with a letter or digit and hold only letters, "
                                     f"digits and _ . + -: rename it")
        for dk, data in self.datasets.items():
            check_dataset_named(data, f"datasets.{dk}")
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
                    raw = merge_mappings(merge_mappings(self.base, bb_map),
                                         {"train": {**(spec.get("train") or {}), "scheme": scheme}})
                    raw = merge_mappings(raw, {"data": self.datasets[dk], "name": key,
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


def compare_study(key: str, result, profiles, *, n_boot: int = 1000) -> list[dict]:
    """The comparison rows of one finished study (:func:`analysis.study.pipeline.run_study`'s result), one per
    device profile (``measured`` first): :func:`analysis.study.baselines.compare_references` under the study's
    placement constraint."""
    cfg: StudyConfig = result["config"]
    done = result.get("references")
    have = {} if done is None or not len(done) else {r["profile"]: r for r in done.to_dict("records")}
    rows = []
    extra = [p for p in have if p.startswith("measured-")]  # the study's other measured backends
    for prof in dict.fromkeys(["measured", *extra, *profiles]):
        if get_profile(prof).name in have and cfg.policies.bootstrap == n_boot:  # the study compared them already
            rows.append({"study": key, **have[get_profile(prof).name]})
            continue
        row = compare_references(result["cache"], result["predictors"], rule=result["rule"], cfg=cfg.policies,
                                 constraint=cfg.placement.constraint, profile=prof, n_boot=n_boot,
                                 n_jobs=cfg.placement.n_jobs, seed=cfg.placement.seed)
        rows.append({"study": key, **row})
    return rows


def run_suite(suite: SuiteConfig, *, redo: bool = False, log=print, progress: bool = True) -> pd.DataFrame:
    """Run every study (reusing what a previous run wrote), then write and return ``comparison.csv``.
    ``progress``: a bar ``suite`` over the studies (unit: study), so the suite shows an ETA."""
    from .pipeline import run_study

    out = Path(suite.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    studies = suite.studies()
    with tqdm(total=len(studies), desc="suite", unit="study", disable=not show_progress(progress)) as bar:
        for key, cfg in studies:
            log(f"[suite] {key}")
            result = run_study(cfg, redo=redo)
            rows += compare_study(key, result, suite.profiles, n_boot=suite.bootstrap)
            pd.DataFrame(rows).to_csv(out / "comparison.csv", index=False)  # kept up to date as studies finish
            bar.update(1)
    return pd.DataFrame(rows)


def paying(df: pd.DataFrame) -> pd.Series:
    """Rows where predictors pay (:func:`analysis.study.verdict.pays`): ``gated_vs_free_hi < 1`` at non-inferior
    accuracy and, on a row also run for real, the real run's CI below 1 too."""
    if "gated_vs_free_hi" not in df:
        return pd.Series(False, index=df.index)
    return pd.Series([pays(r) for r in df.to_dict("records")], index=df.index, dtype=bool)


def real_line(df: pd.DataFrame) -> str | None:
    """``real runs: R rows, faster policy agrees in A of P pairs, real gated/best-free R0-R1, simulated-only pays on
    N, confirmed on C`` (None when no row was run for real)."""
    if "real_n" not in df or not df["real_n"].notna().any():
        return None
    d = df[df["real_n"].notna()]
    agree, total = int(d["real_pairs_agree"].sum()), int(d["real_pairs"].sum())
    g = d["real_gated_vs_free"].dropna() if "real_gated_vs_free" in d else pd.Series(dtype=float)
    sim_only = [r for r in d.to_dict("records") if pays({k: v for k, v in r.items() if not k.startswith("real_")})]
    span = f"{g.min():.3f}-{g.max():.3f}" if len(g) else "-"
    return (f"real runs: {len(d)} rows ({', '.join(sorted(d.real_backend.unique()))}, batch 1), faster policy agrees "
            f"in {agree} of {total} pairs, real gated/best-free {span}, simulation alone says predictors pay on "
            f"{len(sim_only)} of them, the real run confirms {int(paying(d).sum())}")


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


__all__ = ["RATIOS", "SuiteConfig", "compare_study", "load_suite", "non_inferior", "paying", "ratio_ci",
           "real_line", "run_suite", "suite_line"]
