"""The objective that placement search is handed (the one evaluator, :mod:`analysis.core.evidence`), and the
search run end to end: candidates scored on calib, the chosen placement re-evaluated on test."""
from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pandas as pd

from branchy.cache import FeatureCache
from branchy.exits import ExitRule
from placement import Constraint, Placement, SearchResult, SearchSpace, search

from ..core.calibrate import budgeted_thresholds, calib_rule, target_how, thresholds_for_accuracy
from ..core.costs import DEFAULT_PROFILE, CostModel, DeviceProfile
from ..core.evidence import Evidence, full_outcome, oracle_outcome, outcome, tune_cuts
from ..core.policies import PolicyConfig, learned_cuts
from ..core.stats import summarize
from .placement_config import PlacementConfig

METRICS = ("accuracy_%", "mean_ms", "p95_ms", "mean_MACs")  # what the objective returns per placement


class PlacementObjective:
    """``Placement -> metrics`` on calib: accuracy (%), mean and p95 latency (ms), mean MACs, with every gate's
    cut tuned on calib out-of-fold predictor scores for that placement and rule (cost-aware gates). The
    evidence is built once; the object pickles for joblib workers."""

    def __init__(self, cache: FeatureCache, predictors: dict, *, profile: str | DeviceProfile = DEFAULT_PROFILE,
                 measure: str = "entropy", rule: ExitRule | None = None, cfg: PolicyConfig | None = None,
                 split: str = "calib", rows: np.ndarray | None = None) -> None:
        if split != "calib":
            raise ValueError("placements are searched on calib (out-of-fold predictor scores); test only reports")
        self.cfg = cfg or PolicyConfig(measure=measure)
        self.costs = CostModel.from_cache(cache, profile)
        self.ev = Evidence.build(cache, "calib", measure=self.cfg.measure, predictors=predictors, costs=self.costs)
        rows = np.arange(self.ev.n) if rows is None else np.asarray(rows)
        self.ev = self.ev.subset(rows)  # ``rows``: the part of calib the search may see
        self.rule = rule if rule is not None else calib_rule(cache, self.cfg.target_acc, measure=self.cfg.measure)
        self.split = "calib"
        # a sequentially calibrated rule is recalibrated for every set of kept exits (the samples that reach
        # an exit depend on which exits come before it)
        self._z, self._y = (np.asarray(cache.logits("calib"))[rows], cache.labels("calib")[rows]) \
            if self.rule.tuned_by.startswith("target-acc") else (None, None)
        self._rules: dict = {}

    def forget_rules(self) -> None:
        """Drop the rules recalibrated per set of kept exits (after ``rule`` or ``cfg`` changed)."""
        self._rules = {}

    def rule_for(self, pl: Placement) -> ExitRule:
        """The rule a placement is scored under: its own thresholds, else the default one (recalibrated on
        calib for its kept exits when the default is the sequential target-accuracy rule)."""
        if pl.thresholds is not None or self._z is None or all(pl.kept):
            return self.rule
        if pl.kept not in self._rules:
            t = thresholds_for_accuracy(self._z, self._y, _fraction(self.cfg.target_acc), measure=self.rule.measure,
                                        kept=pl.kept)
            self._rules[pl.kept] = ExitRule(self.rule.measure, tuple(t), self.rule.tuned_by + " (kept exits)",
                                            "calib")
        return self._rules[pl.kept]

    def cuts(self, pl: Placement) -> dict:
        """The cuts of ``pl``'s predictors tuned on calib: gates within ``cfg.gate_max_drop`` points of always
        entering; a learned policy's leave cuts by :func:`analysis.core.policies.learned_cuts` (at calib accuracy
        >= full's less ``cfg.learned_max_drop`` points, or one shared cut certified under ``cfg.risk``)."""
        if pl.learned:
            return learned_cuts(self.ev, pl, self.rule_for(pl), self.cfg)
        return tune_cuts(self.ev, pl, self.rule_for(pl), max_drop=self.cfg.gate_max_drop, overlap=self.cfg.overlap)

    def outcome(self, pl: Placement, ev: Evidence | None = None, cuts: dict | None = None):
        cuts = self.cuts(pl) if cuts is None else cuts
        return outcome(ev or self.ev, pl, self.rule_for(pl), cuts=cuts, overlap=self.cfg.overlap, name="placement")

    def __call__(self, pl: Placement) -> dict:
        o = self.outcome(pl)
        s = summarize(o, n_boot=0)
        # predictor_runs_%: samples on which some predictor ran (0: its gates sit on exits nothing enters, or its jump
        # comes after every sample has left: a predictor-free policy in disguise)
        return {**{k: s[k] for k in METRICS}, "predictor_runs_%": 100 * float((o.breakdown["predictors"] > 0).mean())}


def _fraction(target_pct: float | None) -> float | None:
    """A target accuracy in percent (the settings' unit) as the fraction :func:`thresholds_for_accuracy` takes."""
    return None if target_pct is None else target_pct / 100


def exit_macs(cache: FeatureCache) -> np.ndarray:
    return np.cumsum(cache.cost_vector("stage", "macs")) + cache.cost_vector("exit", "macs")


def threshold_options(cache: FeatureCache, measure: str = "entropy", n: int = 6) -> list:
    """Threshold vectors tuned on calib for the optimiser: sequential per-exit target accuracies and
    budgeted rules."""
    z, y = np.asarray(cache.logits("calib")), cache.labels("calib")
    opts = [tuple(thresholds_for_accuracy(z, y, a, measure=measure)) for a in np.linspace(0.95, 1.0, n)]
    opts += [tuple(budgeted_thresholds(z, p, measure=measure)) for p in np.geomspace(0.1, 2.0, n)]
    return opts


def run_placement(cache: FeatureCache, predictors: dict, strategy: str, *, constraint: Constraint = Constraint(),
                  profile: str | DeviceProfile = DEFAULT_PROFILE, measure: str = "entropy", n_jobs: int = 1,
                  seed: int = 0, progress: bool = True, rule: ExitRule | None = None, cfg: PolicyConfig | None = None,
                  scheduler=None, **options) -> tuple[SearchResult, pd.DataFrame]:
    """Search on calib (out-of-fold predictor scores, cuts tuned per candidate); return the result and the
    chosen placement next to full, cascade and oracle on calib and test (test only reports: the chosen
    placement's cuts are the calib ones)."""
    if cache.chained:
        raise ValueError(f"the cache's exits are chained ({cache.chain}): removing or gating an exit would "
                         f"change the later exits' answers, so there is no placement to search; use the cascade")
    cfg = cfg or PolicyConfig(measure=measure)
    space = SearchSpace.from_predictors(predictors, cache.num_exits, exit_macs(cache), jump_leave=cfg.jump_leave)
    search_rows = cert_rows = None
    if cfg.risk is not None:  # search on one half of calib, certify on the other (Learn-then-Test)
        from ..core.guarantee import risk_controlled_rule

        perm = np.random.default_rng(seed).permutation(cache.size("calib"))
        search_rows, cert_rows = np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2:])
        ev_a = Evidence.build(cache, "calib", measure=cfg.measure, profile=profile).subset(search_rows)
        rule = risk_controlled_rule(ev_a, cfg.max_acc_drop, cfg.risk, num_classes=cache.num_classes).rule
        predictors = search_half_predictors(cache, predictors, search_rows, cfg, progress=progress)
        if strategy in ("budget", "nsga2"):  # the thresholds stay the search half's certified rule
            options["threshold_options"] = [None]
    obj = PlacementObjective(cache, predictors, profile=profile, rule=rule, cfg=cfg, rows=search_rows)
    if strategy in ("budget", "nsga2") and "threshold_options" not in options:
        options["threshold_options"] = [None] + threshold_options(cache, cfg.measure)
    res = search(strategy, space, obj, constraint=constraint, n_jobs=n_jobs, seed=seed, progress=progress,
                 scheduler=scheduler, **options)
    if cfg.risk is not None:
        certify_placement(res, cache, predictors, obj, cert_rows, cfg)
        res.predictors = predictors
    test = Evidence.build(cache, "test", measure=cfg.measure, predictors=predictors, costs=obj.costs)
    rows = []
    k = cache.num_exits
    ref = {"full": Placement.plain(k, [False] * (k - 1) + [True]), "cascade": Placement.plain(k),
           f"placement ({strategy})": res.chosen}
    for name, pl in ref.items():
        cuts = obj.cuts(pl)
        for split, ev in (("calib", obj.ev), ("test", test)):
            s = summarize(obj.outcome(pl, ev, cuts), n_boot=0)
            rows.append({"policy": name, "split": split, "placement": pl.describe(), **{m: s[m] for m in METRICS}})
    for split, ev in (("calib", obj.ev), ("test", test)):
        s = summarize(oracle_outcome(ev), n_boot=0)
        rows.append({"policy": "oracle", "split": split, "placement": "-", **{m: s[m] for m in METRICS}})
    return res, pd.DataFrame(rows)


def search_half_predictors(cache: FeatureCache, predictors: dict, rows: np.ndarray, cfg: PolicyConfig, *,
                           progress: bool = True) -> dict:
    """Every predictor cross-fitted again on the search half of calib (``rows``) only, its gate or exit target
    defined by the rule re-tuned the same way on that half (sequential target accuracy ``cfg.target_acc``), so
    nothing a Learn-then-Test certification relies on has seen the certification half: its samples are scored by
    these refits, and these refits are what the chosen placement deploys. ``progress``: one bar over every fit of
    them all (unit: fit)."""
    from tqdm.auto import tqdm

    from branchy.core import show_progress
    from predictors.fit import fit_steps, refit_on_rows

    if not predictors:
        return {}
    z, y = np.asarray(cache.logits("calib"))[rows], cache.labels("calib")[rows]
    t = thresholds_for_accuracy(z, y, _fraction(cfg.target_acc), measure=cfg.measure)
    target_rule = ExitRule(cfg.measure, tuple(t), f"{target_how(cfg.target_acc)} (search half)", "calib")
    out = {}
    total = sum(fit_steps(max(p.folds, 2)) for p in predictors.values())
    with tqdm(total=total, desc="refit predictors", unit="fit", disable=not show_progress(progress)) as bar:
        for name, p in predictors.items():
            same = p.spec.rule is not None and p.spec.rule.measure == cfg.measure
            out[name] = refit_on_rows(p, cache, rows, rule=target_rule if same else None, bar=bar)
    return out


def certify_placement(res: SearchResult, cache: FeatureCache, predictors: dict, obj: PlacementObjective,
                      rows: np.ndarray, cfg: PolicyConfig) -> None:
    """Learn-then-Test over the searched candidates on the calib rows the search never saw: candidates
    ordered from the slowest to the fastest on the search half (full first), each with its paired loss
    against full on the held-out half, fixed-sequence tested; the fastest certified one (on the search
    half) replaces ``res.chosen`` (full when none is). ``res.table`` gets ``p_value`` and ``certified``."""
    from ..core.risk import ltt_select, paired_loss

    k = cache.num_exits
    full = Placement.plain(k, [False] * (k - 1) + [True])
    ev_b = Evidence.build(cache, "calib", measure=cfg.measure, predictors=predictors, costs=obj.costs).subset(rows)
    cands = [r for r in res.table.to_dict("records") if r["placement"].key() != full.key()]
    cands.sort(key=lambda r: -r["mean_ms"])
    order = [full] + [r["placement"] for r in cands]
    lat = np.array([obj(full)["mean_ms"]] + [r["mean_ms"] for r in cands])
    full_ok = full_outcome(ev_b).correct
    losses = np.array([paired_loss(obj.outcome(pl, ev_b).correct, full_ok) for pl in order])
    lt = ltt_select(losses, lat, cfg.max_acc_drop / 100, cfg.risk)
    chosen = order[lt.index] if lt.index is not None else full
    keys = {pl.key(): (p, c) for pl, p, c in zip(order, lt.pvalues, lt.certified)}
    res.table["p_value"] = [keys.get(pl.key(), (np.nan, False))[0] for pl in res.table.placement]
    res.table["certified"] = [bool(keys.get(pl.key(), (np.nan, False))[1]) for pl in res.table.placement]
    res.table["chosen"] = [pl.key() == chosen.key() for pl in res.table.placement]
    res.chosen = chosen


def write_placement(res: SearchResult, compare: pd.DataFrame, out: str | Path, *, profile_name: str = "",
                    plan: dict | None = None) -> None:
    """candidates.csv, front.csv (Pareto front on calib), comparison.csv, placement.json, ``plan.json`` (the decision
    that runs it, :func:`analysis.study.plan.decision_plan`, when given) and two plots; with risk control also
    ``predictors/``, the search-half refits the certified placement runs."""
    from ..present import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from ..core.sweep import pareto_front

    if getattr(res, "predictors", None):  # the predictors the chosen placement runs (refitted for risk control)
        from predictors.store import save_predictors

        save_predictors(list(res.predictors.values()), out / "predictors")
    res.table.drop(columns="placement").to_csv(out / "candidates.csv", index=False)
    pareto_front(res.table).drop(columns="placement").to_csv(out / "front.csv", index=False)
    compare.to_csv(out / "comparison.csv", index=False)
    res.chosen.save(out / "placement.json")
    if plan is not None:
        from branchy.core import atomic_write

        atomic_write(out / "plan.json", json.dumps(plan, indent=1, allow_nan=False))
    fig, ax = plots.plot_placement_map(res.chosen, title=f"chosen placement ({res.strategy})")
    plots.save(fig, out / "placement_map.png")
    fig, ax = plots.plot_search_front(res.table, title=f"{res.strategy}: candidates on calib ({profile_name}); "
                                                      f"{res.constraint.describe()}")
    plots.save(fig, out / "placement_front.png")


__all__ = ["METRICS", "PlacementConfig", "PlacementObjective", "certify_placement", "exit_macs", "run_placement",
           "search_half_predictors", "threshold_options", "write_placement"]
