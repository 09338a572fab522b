"""The objective that placement search is handed (built on the simulator), and the search run end to
end: candidates scored on calib, the chosen placement re-evaluated on test."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from branchy.cache import FeatureCache
from branchy.measures import confidence, is_confident
from placement import Constraint, Placement, SearchSpace, search
from placement.search import SearchResult

from .calibrate import budgeted_thresholds, calib_thresholds, thresholds_for_accuracy
from .costs import CostModel, DeviceProfile
from .simulate import simulate_gated, simulate_oracle
from .stats import summarize

METRICS = ("accuracy_%", "mean_ms", "p95_ms", "mean_MACs")  # what the objective returns per placement


class PlacementObjective:
    """``Placement -> metrics`` on one split: accuracy (%), mean and p95 latency (ms), mean MACs.
    Predictor decisions and costs are computed once up front; the object pickles for joblib workers."""

    def __init__(self, cache: FeatureCache, predictors: dict, *, profile: str | DeviceProfile = "measured",
                 split: str = "calib", measure: str = "entropy", thresholds=None) -> None:
        self.costs = CostModel.from_cache(cache, profile)
        z = np.asarray(cache.logits(split))
        self.conf = confidence(z, measure)
        self.correct = z.argmax(-1) == cache.labels(split)[:, None]
        self.measure = measure
        self.split = split
        self.default_thresholds = (calib_thresholds(cache, measure=measure) if thresholds is None
                                   else np.asarray(thresholds, dtype=float))
        self.decisions, self.gate_cost = {}, {}
        for name, p in (predictors or {}).items():
            if p.spec.target in ("gate", "entropy"):
                self.decisions[name] = p.enter(cache, split)
            elif p.spec.target == "exit":
                self.decisions[name] = p.predict(cache, split).astype(np.int64)
            else:
                continue
            self.gate_cost[name] = (self.costs.predictor_ms(p.cost["macs"], p.cost["ms_b1"]), float(p.cost["macs"]))

    def outcome(self, pl: Placement):
        k = self.costs.num_exits
        if pl.num_exits != k:
            raise ValueError(f"placement has {pl.num_exits} exits, the cache {k}")
        t = np.asarray(pl.thresholds if pl.thresholds is not None else self.default_thresholds, dtype=float)
        passes = is_confident(self.conf, t, self.measure)
        n = len(self.correct)
        enter, gate_at, gms, gmacs = np.ones((n, k), bool), np.full(k, -1), np.zeros(k), np.zeros(k)
        for i, g in enumerate(pl.gates):
            if g is not None:
                if g.predictor not in self.decisions:
                    raise ValueError(f"placement gates exit {i} with predictor {g.predictor!r}, which is not among "
                                     f"the fitted predictors ({', '.join(sorted(self.decisions)) or 'none'})")
                enter[:, i] = self.decisions[g.predictor]
                gate_at[i] = g.at
                gms[i], gmacs[i] = self.gate_cost[g.predictor]
        jump = None
        if pl.jump is not None:
            if pl.jump.predictor not in self.decisions:
                raise ValueError(f"unknown jump predictor {pl.jump.predictor!r}")
            jump = (pl.jump.at, self.decisions[pl.jump.predictor], *self.gate_cost[pl.jump.predictor])
        return simulate_gated(passes, self.correct, self.costs, enter=enter, gate_at=gate_at, gate_ms=gms,
                              gate_macs=gmacs, kept=np.asarray(pl.kept), jump=jump, name="placement")

    def __call__(self, pl: Placement) -> dict:
        s = summarize(self.outcome(pl), n_boot=0)
        return {k: s[k] for k in METRICS}


def exit_macs(cache: FeatureCache) -> np.ndarray:
    return np.cumsum(cache.cost_vector("stage", "macs")) + cache.cost_vector("exit", "macs")


def threshold_options(cache: FeatureCache, measure: str = "entropy", n: int = 6) -> list:
    """Threshold vectors tuned on calib for the optimiser: per-exit target accuracies and budgeted rules."""
    z, y = np.asarray(cache.logits("calib")), cache.labels("calib")
    opts = [tuple(thresholds_for_accuracy(z, y, a, measure=measure)) for a in np.linspace(0.95, 1.0, n)]
    opts += [tuple(budgeted_thresholds(z, p, measure=measure)) for p in np.geomspace(0.1, 2.0, n)]
    return opts


def run_placement(cache: FeatureCache, predictors: dict, strategy: str, *, constraint: Constraint = Constraint(),
                  profile: str | DeviceProfile = "measured", measure: str = "entropy", n_jobs: int = 1, seed: int = 0,
                  progress: bool = True, thresholds=None, **options) -> tuple[SearchResult, pd.DataFrame]:
    """Search on calib; return the result and the chosen placement next to full, cascade and oracle on
    calib and test."""
    space = SearchSpace.from_predictors(predictors, cache.num_exits, exit_macs(cache))
    obj = PlacementObjective(cache, predictors, profile=profile, split="calib", measure=measure, thresholds=thresholds)
    if strategy == "budget" and "threshold_options" not in options:
        options["threshold_options"] = [None] + threshold_options(cache, measure)
    res = search(strategy, space, obj, constraint=constraint, n_jobs=n_jobs, seed=seed, progress=progress, **options)
    test = PlacementObjective(cache, predictors, profile=profile, split="test", measure=measure,
                              thresholds=obj.default_thresholds)
    rows = []
    k = cache.num_exits
    ref = {"full": Placement.plain(k, [False] * (k - 1) + [True]), "cascade": Placement.plain(k),
           f"placement ({strategy})": res.chosen}
    for split, o in (("calib", obj), ("test", test)):
        for name, pl in ref.items():
            rows.append({"policy": name, "split": split, "placement": pl.describe(), **o(pl)})
        orc = _oracle_row(o)
        rows.append({"policy": "oracle", "split": split, "placement": "-", **orc})
    return res, pd.DataFrame(rows)


def _oracle_row(o: PlacementObjective) -> dict:
    s = summarize(simulate_oracle(o.correct, o.costs), n_boot=0)
    return {k: s[k] for k in METRICS}


def write_placement(res: SearchResult, compare: pd.DataFrame, out: str | Path, *, profile_name: str = "") -> None:
    """candidates.csv, front.csv (Pareto front on calib), comparison.csv, placement.json and two plots."""
    from . import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from .sweep import pareto_front

    res.table.drop(columns="placement").to_csv(out / "candidates.csv", index=False)
    pareto_front(res.table).drop(columns="placement").to_csv(out / "front.csv", index=False)
    compare.to_csv(out / "comparison.csv", index=False)
    res.chosen.save(out / "placement.json")
    fig, ax = plots.plot_placement_map(res.chosen, title=f"chosen placement ({res.strategy})")
    plots.save(fig, out / "placement_map.png")
    fig, ax = plots.plot_search_front(res.table, title=f"{res.strategy}: candidates on calib ({profile_name}); "
                                                      f"{res.constraint.describe()}")
    plots.save(fig, out / "placement_front.png")
