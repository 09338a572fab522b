"""The standard comparison on a cache: full, cascade, patience, gated, jump and oracle. Everything is
decided on ``calib`` (the exit rule, which gate goes in front of which exit, the gates' cuts, with the
predictors' out-of-fold scores) and reported on ``test`` by the one evaluator (:mod:`analysis.core.evidence`)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from branchy.cache import FeatureCache
from branchy.config import check_int, check_name, check_number, setting
from branchy.measures import MEASURES
from branchy.rule import ExitRule
from placement import Gate, Placement
from predictors.targets import check_thresholds

from ..core.calibrate import budgeted_thresholds, calib_rule, threshold_grid, thresholds_for_accuracy
from ..core.costs import CostModel, DeviceProfile
from ..core.evidence import Evidence, gate_report, outcome, tune_cuts
from ..core.simulate import Outcome
from ..core.stats import summarize, summary_table
from ..core.sweep import pareto_front


@dataclass(frozen=True)
class PolicyConfig:
    """How the standard policies are set up. ``target_acc``: accuracy (fraction) the samples each side
    exit accepts, among those that reach it, must reach on calib (None: the final exit's calib accuracy).
    ``patience``: PABEE's P. ``gate_max_drop``: points of calib accuracy a gate's cut may give up against
    always entering (0: gates may only save latency). ``max_acc_drop`` + ``risk``: choose the exit rule by
    Learn-then-Test so that the accuracy lost against ``full`` on new data exceeds ``max_acc_drop`` points
    with probability at most ``risk`` (see :mod:`analysis.core.guarantee`). ``bootstrap``: resamples of the CIs."""

    measure: str = setting("entropy", "confidence measure of the exit rule", choices=MEASURES.names)
    target_acc: float | None = setting(0.99, "accuracy (fraction) each side exit's accepted calib samples must "
                                             "reach (none: the final exit's calib accuracy)")
    patience: int = setting(1, "PABEE's P: leave once this many consecutive later exits agree")
    overlap: bool = setting(False, "run each branch concurrently with the next stage")
    bootstrap: int = setting(1000, "bootstrap resamples for the CIs")
    gate_max_drop: float = setting(0.0, "calib accuracy points a gate's cut may give up against always entering")
    max_acc_drop: float | None = setting(None, "with risk: accuracy points against full that may be lost "
                                               "(Learn-then-Test)")
    risk: float | None = setting(None, "with max_acc_drop EPS: choose the exit rule so that losing more than EPS "
                                       "points against full on new data has probability at most this")

    def __post_init__(self) -> None:
        check_name("measure", MEASURES, self.measure)
        if self.target_acc is not None:
            check_number("target_acc", self.target_acc, "in (0, 1] (an accuracy as a fraction, e.g. 0.99)",
                         lambda v: 0 < v <= 1)
        check_int("patience", self.patience, 1)
        check_int("bootstrap", self.bootstrap, 0)
        check_number("gate_max_drop", self.gate_max_drop, "of accuracy points in [0, 100]", lambda v: 0 <= v <= 100)
        if (self.max_acc_drop is None) != (self.risk is None):
            raise ValueError("max_acc_drop EPS and risk DELTA go together: the rule is chosen so that losing more "
                             "than EPS points against full has probability at most DELTA")
        if self.risk is not None:
            check_number("risk", self.risk, "in (0, 1) (a probability)", lambda v: 0 < v < 1)
            check_number("max_acc_drop", self.max_acc_drop, "in (0, 100) points (risk control)",
                         lambda v: 0 < v < 100)


def calibrate(cache: FeatureCache, cfg: PolicyConfig, *, ev_calib: Evidence | None = None) -> ExitRule:
    """The exit rule, tuned on calib: sequential target accuracy, or Learn-then-Test under ``risk``."""
    if cfg.risk is not None:
        from ..core.guarantee import risk_controlled_rule

        ev_calib = ev_calib or Evidence.build(cache, "calib", measure=cfg.measure)
        return risk_controlled_rule(ev_calib, cfg.max_acc_drop, cfg.risk, num_classes=cache.num_classes).rule
    return calib_rule(cache, cfg.target_acc, measure=cfg.measure)


@dataclass
class Chosen:
    """A policy decided on calib: its placement and its gates' cuts."""

    placement: Placement
    cuts: dict


def _best(ev: Evidence, rule: ExitRule, options: list[Placement], cfg: PolicyConfig, floor: float) -> Chosen:
    """Of ``options`` the fastest on calib (cuts tuned) whose accuracy stays at ``floor`` or above."""
    best, best_lat = None, np.inf
    for pl in options:
        cuts = tune_cuts(ev, pl, rule, max_drop=cfg.gate_max_drop, overlap=cfg.overlap)
        o = outcome(ev, pl, rule, cuts=cuts, overlap=cfg.overlap)
        if o.correct.mean() >= floor - 1e-12 and o.latency_ms.mean() < best_lat - 1e-12:
            best, best_lat = Chosen(pl, cuts), o.latency_ms.mean()
    return best


def choose_policies(ev: Evidence, rule: ExitRule, cfg: PolicyConfig = PolicyConfig()) -> dict[str, Chosen]:
    """The gated, gated-entropy and jump policies, decided on calib out-of-fold scores (``ev``): per side
    exit the gate (or none) that gives the lowest calib mean latency, its cut tuned; then the cuts of the
    chosen gates re-tuned together. A gate that does not pay on calib is left out."""
    k = ev.num_exits
    out: dict[str, Chosen] = {}
    if ev.chained:
        if ev.specs:
            warnings.warn(f"the cache's exits are chained ({ev.chain}): gated and jump policies would skip heads a "
                          f"later answer needs, so they are left out", stacklevel=2)
        return out
    cascade = Placement.plain(k)
    floor = outcome(ev, cascade, rule, overlap=cfg.overlap).correct.mean() - cfg.gate_max_drop / 100
    for target, name in (("gate", "gated"), ("entropy", "gated-entropy")):
        names = [n for n, s in ev.specs.items() if s.target == target and s.for_exit is not None
                 and s.for_exit < k - 1
                 and not (target == "gate" and s.rule is not None and s.rule.measure != rule.measure)]
        if not names:
            continue
        gates: list = [None] * k
        for e in range(k - 1):
            opts = [Placement(cascade.kept, tuple(Gate(n, ev.specs[n].at) if i == e else None for i in range(k)))
                    for n in sorted(names) if ev.specs[n].for_exit == e]
            best = _best(ev, rule, [cascade, *opts], cfg, floor)
            if best is not None and best.placement.gates[e] is not None:
                gates[e] = best.placement.gates[e]
        pl = Placement(cascade.kept, tuple(gates), label=name)
        out[name] = Chosen(pl, tune_cuts(ev, pl, rule, max_drop=cfg.gate_max_drop, overlap=cfg.overlap))
    jumps = sorted(n for n, s in ev.specs.items() if s.target == "exit"
                   and not (s.rule is not None and s.rule.measure != rule.measure))
    if jumps:  # the exit predictor that is fastest on calib, if any beats the cascade at its accuracy
        opts = [Placement(cascade.kept, cascade.gates, Gate(n, ev.specs[n].at), label="jump") for n in jumps]
        out["jump"] = _best(ev, rule, [cascade, *opts], cfg, floor)
    return out


@dataclass
class PolicyStudy:
    """Every standard policy on one split and profile, decided on calib: per-sample outcomes, the summary
    table, the exit rule, the chosen gated/jump policies and the per-gate break-even table (calib)."""

    outcomes: dict
    table: pd.DataFrame
    rule: ExitRule
    chosen: dict
    gates: pd.DataFrame
    evidence: tuple = ()  # (calib, split) evidence it was decided and scored on, for pareto_points to reuse


def study_policies(cache: FeatureCache, *, predictors: dict | None = None,
                   profile: str | DeviceProfile = "measured", cfg: PolicyConfig = PolicyConfig(),
                   split: str = "test", rule: ExitRule | None = None) -> PolicyStudy:
    """Decide every policy on calib (rule, gates, cuts; predictors' out-of-fold scores) and score them
    all with the one evaluator on ``split`` (``test``)."""
    if split == "calib":
        raise ValueError("report on test: calib is where thresholds and predictors are tuned")
    costs = CostModel.from_cache(cache, profile)
    ev_cal = Evidence.build(cache, "calib", measure=cfg.measure, predictors=predictors, costs=costs)
    if rule is None:
        rule = calibrate(cache, cfg, ev_calib=ev_cal)
    elif not isinstance(rule, ExitRule):
        rule = ExitRule.given(check_thresholds(rule, cache.num_exits), cache.num_exits, cfg.measure)
    if rule.measure != cfg.measure:
        raise ValueError(f"the exit rule decides on {rule.measure}, the policy config on {cfg.measure}")
    ev = Evidence.build(cache, split, measure=cfg.measure, predictors=predictors, costs=costs)
    chosen = choose_policies(ev_cal, rule, cfg)
    out: dict[str, Outcome] = {
        "full": outcome(ev, "full", rule),
        "cascade": outcome(ev, "cascade", rule, overlap=cfg.overlap),
        "patience": outcome(ev, "patience", rule, patience=cfg.patience, overlap=cfg.overlap)}
    for name, c in chosen.items():
        out[name] = outcome(ev, c.placement, rule, cuts=c.cuts, overlap=cfg.overlap, name=name)
    out["oracle"] = outcome(ev, "oracle", rule)
    table = summary_table(list(out.values()), reference=out["full"], n_boot=cfg.bootstrap)
    table.insert(1, "profile", costs.profile)
    gates = gate_table(ev_cal, rule, cfg)
    if len(gates):
        gates.insert(0, "profile", costs.profile)
    return PolicyStudy(out, table, rule, chosen, gates, (ev_cal, ev))


def gate_table(ev: Evidence, rule: ExitRule, cfg: PolicyConfig = PolicyConfig()) -> pd.DataFrame:
    """Every gate/entropy predictor alone in front of its exit, cut tuned on calib: its operating point and
    break-even cost (:func:`analysis.core.evidence.gate_report`), on calib out-of-fold scores."""
    k = ev.num_exits
    if ev.chained:
        return pd.DataFrame()
    rows = []
    for n, s in sorted(ev.specs.items()):
        if s.target not in ("gate", "entropy") or s.for_exit is None or s.for_exit >= k - 1:
            continue
        if s.target == "gate" and s.rule is not None and s.rule.measure != rule.measure:
            continue
        pl = Placement.plain(k)
        pl = Placement(pl.kept, tuple(Gate(n, s.at) if i == s.for_exit else None for i in range(k)))
        cuts = tune_cuts(ev, pl, rule, max_drop=cfg.gate_max_drop, overlap=cfg.overlap)
        rows.append(gate_report(ev, pl, rule, cuts, overlap=cfg.overlap))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def run_policies(cache: FeatureCache, *, predictors: dict | None = None, profile: str | DeviceProfile = "measured",
                 cfg: PolicyConfig = PolicyConfig(), split: str = "test",
                 thresholds=None) -> tuple[dict, pd.DataFrame]:
    """Every standard policy on ``split``; returns ``({name: Outcome}, summary table)``. ``thresholds``: an
    :class:`ExitRule` or thresholds (default: calibrated on calib per ``cfg``)."""
    st = study_policies(cache, predictors=predictors, profile=profile, cfg=cfg, split=split, rule=thresholds)
    return st.outcomes, st.table


def rule_settings(cache: FeatureCache, measure: str = "entropy", n_settings: int = 15) -> list[tuple]:
    """Threshold settings calibrated on calib: MSDNet's budgeted rule (q_k ∝ p^k) over a range of p,
    sequential per-exit target accuracies, BranchyNet's grid screening; ``(rule name, value, ExitRule)``."""
    zc = np.asarray(cache.logits("calib"))
    yc = cache.labels("calib")
    k = cache.num_exits

    def r(t, how):
        return ExitRule.given(t, k, measure, tuned_by=how, tuned_on="calib")

    settings = [("budget p", p, r(budgeted_thresholds(zc, p, measure=measure), f"budget p={p:.3g}"))
                for p in np.geomspace(0.05, 4.0, n_settings)]
    settings += [("target acc", a, r(thresholds_for_accuracy(zc, yc, a, measure=measure), f"target-acc {a:.3g}"))
                 for a in np.linspace(0.9, 1.0, n_settings)]
    settings += [("grid quantile", q, r(t, f"grid q={q:.3g}"))
                 for q, t in zip(np.linspace(0, 1, n_settings), threshold_grid(zc, n_settings, measure=measure))]
    return settings


_POINT_COLS = ("accuracy_%", "mean_ms", "p95_ms", "mean_MACs")


def pareto_points(cache: FeatureCache, *, predictors: dict | None = None, profile: str | DeviceProfile = "measured",
                  cfg: PolicyConfig = PolicyConfig(), split: str = "test", n_settings: int = 15,
                  chosen: dict | None = None, rule: ExitRule | None = None,
                  evidence: tuple = ()) -> pd.DataFrame:
    """Accuracy vs latency for threshold settings calibrated on calib (:func:`rule_settings`): per policy
    and setting the calib figures (``calib_*``), the gates' cuts re-tuned on calib for that setting, and the
    ``split`` (test) figures. ``on_front``: non-dominated *on calib* within its policy; a front is drawn at
    its test values. ``full`` and ``oracle`` rows are references. ``evidence``: the ``(calib, split)``
    evidence already built for this profile (:attr:`PolicyStudy.evidence`), instead of building it again."""
    if evidence:
        ev_cal, ev = evidence
        costs = ev.costs
    else:
        costs = CostModel.from_cache(cache, profile)
        ev_cal = Evidence.build(cache, "calib", measure=cfg.measure, predictors=predictors, costs=costs)
        ev = Evidence.build(cache, split, measure=cfg.measure, predictors=predictors, costs=costs)
    if chosen is None:
        chosen = choose_policies(ev_cal, rule or calibrate(cache, cfg, ev_calib=ev_cal), cfg)
    rows = []
    for how, value, r in rule_settings(cache, cfg.measure, n_settings):
        pols: list = [("cascade", "cascade", {})]
        for name, c in chosen.items():
            cuts = tune_cuts(ev_cal, c.placement, r, max_drop=cfg.gate_max_drop, overlap=cfg.overlap)
            pols.append((name, c.placement, cuts))
        for name, pol, cuts in pols:
            oc = outcome(ev_cal, pol, r, cuts=cuts, overlap=cfg.overlap, name=name)
            ot = outcome(ev, pol, r, cuts=cuts, overlap=cfg.overlap, name=name)
            sc, st = summarize(oc, n_boot=0), summarize(ot, n_boot=0)
            rows.append({"rule": how, "setting": value, "thresholds": np.round(r.thresholds, 5).tolist(),
                         **st, "profile": costs.profile, **{f"calib_{c}": sc[c] for c in _POINT_COLS}})
    for name in ("full", "oracle"):
        st = summarize(outcome(ev, name, rule or ExitRule("entropy", (np.inf,) * ev.num_exits)), n_boot=0)
        rows.append({"rule": "-", "setting": np.nan, "thresholds": None, **st, "profile": costs.profile})
    df = pd.DataFrame(rows)
    df["on_front"] = False
    for pol, d in df[~df.policy.isin(["full", "oracle"])].groupby("policy"):
        front = pareto_front(d, "calib_mean_ms", "calib_accuracy_%")
        df.loc[front.index, "on_front"] = True
    return df
