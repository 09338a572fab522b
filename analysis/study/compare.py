"""The standard comparison on a cache: every registered policy (:data:`analysis.core.policies.POLICIES`: full,
cascade, patience, gated, gated-entropy, jump, oracle). Everything is decided on ``calib`` (the exit rule, which
gate goes in front of which exit, the gates' cuts, with the predictors' out-of-fold scores) and reported on
``test`` by the one evaluator (:mod:`analysis.core.evidence`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from branchy.cache import FeatureCache
from branchy.exits import ExitRule
from placement import Gate, Placement
from predictors.targets import check_thresholds

from ..core.breakeven import break_even_table, explain_gates
from ..core.calibrate import budgeted_thresholds, threshold_grid, thresholds_for_accuracy
from ..core.costs import DEFAULT_PROFILE, CostModel, DeviceProfile
from ..core.evidence import Evidence, gate_report, outcome, tune_cuts
from ..core.policies import POLICIES, PolicyConfig, calibrate, choose_policies, is_reference, run_policy
from ..core.simulate import Outcome
from ..core.stats import summarize, summary_table
from ..core.sweep import pareto_front


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
                   profile: str | DeviceProfile = DEFAULT_PROFILE, cfg: PolicyConfig = PolicyConfig(),
                   split: str = "test", rule: ExitRule | None = None) -> PolicyStudy:
    """Decide every policy on calib (rule, gates, cuts; predictors' out-of-fold scores) and score them
    all with the one evaluator on ``split``.

    Args:
        cache: the feature cache (its calib split decides, ``split`` reports).
        predictors: fitted predictors by name (cross-fitted on calib), or None for the predictor-free policies.
        profile: a device profile name (``measured``, ``raspberry-pi-4``, ...), a path or a DeviceProfile.
        cfg: the policy settings (measure, target accuracy, skip rates, ...).
        split: where the outcomes are reported: ``test`` (calib is refused).
        rule: the exit rule; default: calibrated on calib per ``cfg``.

    Returns:
        :class:`PolicyStudy`: ``.table`` (one row per policy: accuracy %, mean and p95 ms per sample at batch 1,
        MACs, speed-up over full, with bootstrap CIs), ``.gates`` (per gate: cut, skip rates, break-even cost).
    """
    if split == "calib":
        raise ValueError("report on test: calib is where thresholds and predictors are tuned")
    costs = CostModel.from_cache(cache, profile)
    ev_cal = Evidence.build(cache, "calib", measure=cfg.measure, predictors=predictors, costs=costs)
    if rule is None:
        rule = calibrate(cache, cfg, ev_calib=ev_cal)
    elif not isinstance(rule, ExitRule):
        rule = ExitRule.given(check_thresholds(rule, cache.num_exits), cache.num_exits, cfg.measure)
    if rule.measure != cfg.measure:  # exact where it can be (entropy <-> norm_entropy), refused otherwise
        try:
            rule = rule.converted(cfg.measure, cache.num_classes)
        except ValueError as e:
            raise ValueError(f"the exit rule decides on {rule.measure}, the policy config on {cfg.measure}: {e}") \
                from None
    ev = Evidence.build(cache, split, measure=cfg.measure, predictors=predictors, costs=costs)
    chosen = choose_policies(ev_cal, rule, cfg)
    out: dict[str, Outcome] = {}
    for name in POLICIES.names():
        o = run_policy(name, ev, rule, cfg, chosen)
        if o is not None:
            out[name] = o
    reference = next(n for n in out if POLICIES.get(n).role == "reference")
    table = summary_table(list(out.values()), reference=out[reference], n_boot=cfg.bootstrap)
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


def gate_break_even(ev_calib: Evidence, rule: ExitRule, cfg: PolicyConfig = PolicyConfig(), *,
                    false_skip: float = 0.02, gates: pd.DataFrame | None = None
                    ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """When gates pay, on calib (out-of-fold scores): the break-even table of every gate position
    (:func:`analysis.core.breakeven.break_even_table`), the real gates alone in front of their exit
    (:func:`gate_table`, or ``gates`` when the caller has it already) and one sentence per side exit. Empty on
    chained caches (no exit can be skipped)."""
    if ev_calib.chained:
        return pd.DataFrame(), pd.DataFrame(), ["the cache's exits are chained: no exit can be skipped, so no gate "
                                                "can pay"]
    table = break_even_table(ev_calib, rule, false_skip=false_skip, overlap=cfg.overlap)
    gates = gate_table(ev_calib, rule, cfg) if gates is None else gates
    return table, gates, explain_gates(table, gates, false_skip=false_skip)


def run_policies(cache: FeatureCache, *, predictors: dict | None = None, profile: str | DeviceProfile = DEFAULT_PROFILE,
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
    settings += [("target acc %", 100 * a, r(thresholds_for_accuracy(zc, yc, a, measure=measure),
                                             f"target-acc {100 * a:.3g}%")) for a in np.linspace(0.9, 1.0, n_settings)]
    settings += [("grid quantile", q, r(t, f"grid q={q:.3g}"))
                 for q, t in zip(np.linspace(0, 1, n_settings), threshold_grid(zc, n_settings, measure=measure))]
    return settings


_POINT_COLS = ("accuracy_%", "mean_ms", "p95_ms", "mean_MACs")


def pareto_points(cache: FeatureCache, *, predictors: dict | None = None,
                  profile: str | DeviceProfile = DEFAULT_PROFILE, cfg: PolicyConfig = PolicyConfig(),
                  split: str = "test", n_settings: int = 15,
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
    swept = [n for n in POLICIES.names() if POLICIES.get(n).swept]
    for how, value, r in rule_settings(cache, cfg.measure, n_settings):
        for name in swept:
            p = POLICIES.get(name)
            if p.decide is None:  # run as it is, at this setting's rule
                oc, ot = p.run(ev_cal, r, cfg), p.run(ev, r, cfg)
                if oc is None or ot is None:  # does not apply to this cache
                    continue
            elif name in chosen:  # the calib decision kept, its cuts re-tuned on calib for this setting
                c = chosen[name]
                cuts = tune_cuts(ev_cal, c.placement, r, max_drop=cfg.gate_max_drop, overlap=cfg.overlap)
                oc = outcome(ev_cal, c.placement, r, cuts=cuts, overlap=cfg.overlap, name=name)
                ot = outcome(ev, c.placement, r, cuts=cuts, overlap=cfg.overlap, name=name)
            else:
                continue
            sc, st = summarize(oc, n_boot=0), summarize(ot, n_boot=0)
            rows.append({"rule": how, "setting": value, "thresholds": np.round(r.thresholds, 5).tolist(),
                         **st, "profile": costs.profile, **{f"calib_{c}": sc[c] for c in _POINT_COLS}})
    fixed_rule = rule or ExitRule("entropy", (np.inf,) * ev.num_exits)
    for name in [n for n in POLICIES.names() if is_reference(n)]:
        o = POLICIES.get(name).run(ev, fixed_rule, cfg)
        if o is None:
            continue
        st = summarize(o, n_boot=0)
        rows.append({"rule": "-", "setting": np.nan, "thresholds": None, **st, "profile": costs.profile})
    df = pd.DataFrame(rows)
    df["on_front"] = False
    for pol, d in df[~df.policy.map(is_reference)].groupby("policy"):
        front = pareto_front(d, "calib_mean_ms", "calib_accuracy_%")
        df.loc[front.index, "on_front"] = True
    return df


__all__ = ["PolicyStudy", "gate_break_even", "gate_table", "pareto_points", "rule_settings", "run_policies",
           "study_policies"]
