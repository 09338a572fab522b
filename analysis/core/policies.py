"""The policies of the comparison, as a registry (:data:`POLICIES`, in display order), with the config that
decides them (:class:`PolicyConfig`), the exit rule tuned on calib (:func:`calibrate`) and the decisions made on
calib out-of-fold scores (:func:`choose_policies`). A policy is either run as it is (``run``: full, cascade,
patience, oracle) or decided on calib as a placement with its gates' cuts (``decide``: gated, gated-entropy,
jump, learned). Its ``role`` says how it is shown: ``reference`` (full: speed-ups are against it), ``bound`` (oracle:
not an operating point, never drawn or named as one, the runtime cannot run it) or ``choice``."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from branchy.cache import FeatureCache
from branchy.core import check_int, check_name, check_number, setting
from branchy.exits import MEASURES
from branchy.core import Registry
from branchy.exits import ExitRule
from placement import Gate, Placement

from .calibrate import calib_rule
from .evidence import (Evidence, cascade_outcome, full_outcome, leave_cut_key, leave_names, matched_oracle_outcome,
                       oracle_outcome, outcome, patience_outcome, tune_cuts)
from .simulate import Outcome
from .units import percent_setting

ROLES = ("reference", "choice", "bound")


@dataclass(frozen=True)
class PolicyConfig:
    """How the standard policies are set up. ``target_acc``: accuracy (percent: 99 means 99 %) the samples each
    side exit accepts, among those that reach it, must reach on calib (None: the final exit's calib accuracy; a
    fraction <= 1 such as 0.99 is still read as one, times 100, with a FutureWarning, until 0.4).
    ``patience``: PABEE's P. ``gate_max_drop``: points of calib accuracy a gate's cut may give up against
    always entering (0: gates may only save latency). ``max_acc_drop`` + ``risk``: choose the exit rule by
    Learn-then-Test so that the accuracy lost against ``full`` on new data exceeds ``max_acc_drop`` points
    with probability at most ``risk`` (see :mod:`analysis.core.guarantee`). ``bootstrap``: resamples of the CIs."""

    measure: str = setting("entropy", "confidence measure of the exit rule", choices=MEASURES.names)
    target_acc: float | None = setting(99.0, "accuracy in percent (99: 99 %) each side exit's accepted calib "
                                             "samples must reach (none: the final exit's calib accuracy)")
    patience: int = setting(1, "PABEE's P: leave once this many consecutive later exits agree")
    overlap: bool = setting(False, "run each branch concurrently with the next stage")
    bootstrap: int = setting(1000, "bootstrap resamples for the CIs")
    gate_max_drop: float = setting(0.0, "calib accuracy points a gate's cut may give up against always entering")
    max_acc_drop: float | None = setting(None, "with risk: accuracy points against full that may be lost "
                                               "(Learn-then-Test)")
    risk: float | None = setting(None, "with max_acc_drop EPS: choose the exit rule so that losing more than EPS "
                                       "points against full on new data has probability at most this")
    learned_max_drop: float = setting(0.5, "calib accuracy points below full's that a learned exit policy's cuts "
                                           "may give up (its accuracy floor)")
    risk_method: str = setting("ltt", "with max_acc_drop and risk, how a learned exit policy's shared cut is "
                                      "certified: ltt (Learn-then-Test: P(loss > EPS) <= DELTA) or crc (conformal "
                                      "risk control: mean loss <= EPS)", choices=lambda: ["ltt", "crc"])
    jump_leave: bool = setting(False, "also offer each exit predictor as jump-and-leave: a sample it is sure of "
                                      "leaves at the predicted exit without the confidence check (a cut on its "
                                      "probability, tuned on calib)")

    def __post_init__(self) -> None:
        check_name("measure", MEASURES, self.measure)
        if self.target_acc is not None:
            object.__setattr__(self, "target_acc", percent_setting("target_acc", self.target_acc, stacklevel=4))
            check_number("target_acc", self.target_acc, "in (0, 100] (an accuracy in percent, e.g. 99 for 99 %)",
                         lambda v: 0 < v <= 100)
        check_int("patience", self.patience, 1)
        check_int("bootstrap", self.bootstrap, 0)
        check_number("gate_max_drop", self.gate_max_drop, "of accuracy points in [0, 100]", lambda v: 0 <= v <= 100)
        check_number("learned_max_drop", self.learned_max_drop, "of accuracy points in [0, 100]",
                     lambda v: 0 <= v <= 100)
        if self.risk_method not in ("ltt", "crc"):
            raise ValueError(f"risk_method must be 'ltt' or 'crc', got {self.risk_method!r}")
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


@dataclass(frozen=True)
class Policy:
    """One policy of the comparison. Exactly one of

    - ``run(ev, rule, cfg) -> Outcome | None``: run as it is (``None`` where it does not apply, e.g. a placement
      that removes exits on a chained cache: it is then left out of the table, the fronts and validate); the
      outcome must be named after the policy (``outcome(..., name=NAME)``);
    - ``decide(ev_calib, rule, cfg, floor) -> Chosen | None``: a placement decided on calib out-of-fold scores at
      calib accuracy >= ``floor`` (the cascade's, less ``cfg.gate_max_drop``); ``None`` when its predictors are
      not fitted.

    ``swept``: re-run at every threshold setting of the accuracy-latency fronts (for policies whose outcome
    depends on the exit thresholds). ``runtime``: whether the real runtime can run it (validate checks it against
    the simulator); a ``run`` policy the runtime runs also gives ``runtime_form(k, chained, rule) -> (Placement,
    ExitRule)``, what the runtime executes (a decided policy's form is its chosen placement)."""

    name: str
    doc: str
    role: str = "choice"
    run: Callable[[Evidence, ExitRule, "PolicyConfig"], Outcome | None] | None = None
    decide: Callable[..., Chosen | None] | None = None
    swept: bool = False
    runtime: bool = True
    runtime_form: Callable[[int, bool, ExitRule], tuple[Placement, ExitRule]] | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"policy role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if (self.run is None) == (self.decide is None):
            raise ValueError(f"policy {self.name!r}: give exactly one of run (run as it is) and decide (decided "
                             f"on calib)")
        if self.run is not None and self.runtime and self.runtime_form is None:
            raise ValueError(f"policy {self.name!r} is run as it is and runtime=True: give runtime_form(k, chained, "
                             f"rule) -> (Placement, ExitRule), what the real runtime executes, or runtime=False")


POLICIES: Registry[Policy] = Registry("policy", ordered=True)  # registration order: every table's and plot's order


def register_policy(name: str, doc: str, **kw) -> Policy:
    """Register a :class:`Policy`; it joins every comparison, table and plot in registration order."""
    return POLICIES.register(name, Policy(name, doc, **kw), doc=doc)


def policy_order(names) -> list[str]:
    """``names`` in display order: registered choices and references first, then unregistered names (placements
    found by a search) sorted, bounds last."""
    names = set(names)
    known = [n for n in POLICIES.names() if n in names]
    bounds = [n for n in known if POLICIES.get(n).role == "bound"]
    return [n for n in known if n not in bounds] + sorted(names - set(known)) + bounds


def is_operating_point(name: str) -> bool:
    """Whether a row of a table is a policy one can deploy (not a bound such as the oracle)."""
    return name not in POLICIES or POLICIES.get(name).role != "bound"


def is_reference(name: str) -> bool:
    """Full and bounds: drawn as stars, not swept."""
    return name in POLICIES and POLICIES.get(name).role != "choice"


def _gate_names(ev: Evidence, rule: ExitRule, target: str) -> list[str]:
    k = ev.num_exits
    return [n for n, s in ev.specs.items() if s.target == target and s.for_exit is not None and s.for_exit < k - 1
            and not (target == "gate" and s.rule is not None and s.rule.measure != rule.measure)]


def _gated(target: str, label: str):
    def decide(ev: Evidence, rule: ExitRule, cfg: PolicyConfig, floor: float) -> Chosen | None:
        """Per side exit the gate (or none) that gives the lowest calib mean latency, its cut tuned; then the
        cuts of the chosen gates re-tuned together. A gate that does not pay on calib is left out."""
        names, k = _gate_names(ev, rule, target), ev.num_exits
        if not names:
            return None
        cascade, gates = Placement.plain(k), [None] * k
        for e in range(k - 1):
            opts = [Placement(cascade.kept, tuple(Gate(n, ev.specs[n].at) if i == e else None for i in range(k)))
                    for n in sorted(names) if ev.specs[n].for_exit == e]
            best = _best(ev, rule, [cascade, *opts], cfg, floor)
            if best is not None and best.placement.gates[e] is not None:
                gates[e] = best.placement.gates[e]
        pl = Placement(cascade.kept, tuple(gates), label=label)
        return Chosen(pl, tune_cuts(ev, pl, rule, max_drop=cfg.gate_max_drop, overlap=cfg.overlap))
    return decide


def _jump(ev: Evidence, rule: ExitRule, cfg: PolicyConfig, floor: float) -> Chosen | None:
    """The exit predictor that is fastest on calib, if any beats the cascade at its accuracy (else the cascade). With
    ``cfg.jump_leave`` predictors of the oracle exit join, and each is also tried as jump-and-leave (its cut on the
    probability of the exit it names tuned on calib)."""
    targets = ("exit", "oracle") if cfg.jump_leave else ("exit",)  # oracle-exit predictors jump-and-leave
    jumps = sorted(n for n, s in ev.specs.items() if s.target in targets
                   and not (s.rule is not None and s.rule.measure != rule.measure))
    if not jumps:
        return None
    cascade = Placement.plain(ev.num_exits)
    opts = [Placement(cascade.kept, cascade.gates, Gate(n, ev.specs[n].at), label="jump") for n in jumps]
    if cfg.jump_leave:
        opts += [replace(o, jump_leave=True) for o in opts]
    return _best(ev, rule, [cascade, *opts], cfg, floor)


def learned_floor(ev: Evidence, cfg: PolicyConfig) -> float:
    """The calib accuracy (fraction) a learned exit policy's cuts must keep: full's less ``cfg.learned_max_drop``
    points. One definition: the policy, the placement objective, the comparison and the export all tune to it."""
    return float(ev.correct[:, -1].mean()) - cfg.learned_max_drop / 100


def learned_cuts(ev: Evidence, pl: Placement, rule: ExitRule, cfg: PolicyConfig) -> dict:
    """The cuts of a learned placement, decided on ``ev`` (calib, out-of-fold scores): per side exit for least mean
    latency at calib accuracy >= :func:`learned_floor`; or, under ``cfg.risk`` (with ``max_acc_drop`` EPS), one
    shared cut λ over every kept side exit (λ = 1, 0.975, ..., 0, safest first) certified on the out-of-fold scores
    against ``full`` (paired loss: full right, learned wrong) by fixed-sequence Learn-then-Test (``risk_method``
    ``ltt``: P(loss > EPS) <= DELTA) or conformal risk control (``crc``: mean loss <= EPS); nothing certified: every
    cut +inf (the final exit's answers). Each calib score comes from a model that did not see its sample; the
    deployed refit is certified through them (``bench/bench_learned.py`` measures the violation rate with the
    scorers refitted per resplit)."""
    if cfg.risk is None:
        return tune_cuts(ev, pl, rule, overlap=cfg.overlap, floor=learned_floor(ev, cfg))
    from .learned import LAMBDAS, select_shared_cut

    keys = [leave_cut_key(i) for i, g in enumerate(pl.leaves) if g is not None]
    full_right = ev.correct[:, -1]
    loss, ms = np.empty((len(LAMBDAS), ev.n), bool), np.empty(len(LAMBDAS))
    for j, lam in enumerate(LAMBDAS):
        o = outcome(ev, pl, rule, cuts={key: float(lam) for key in keys}, overlap=cfg.overlap)
        loss[j], ms[j] = full_right & ~o.correct, o.latency_ms.mean()
    res = select_shared_cut(loss, ms, eps_pts=cfg.max_acc_drop, delta=cfg.risk, method=cfg.risk_method)
    lam = np.inf if res.index is None else float(LAMBDAS[res.index])
    return {key: lam for key in keys}


def _learned(ev: Evidence, rule: ExitRule, cfg: PolicyConfig, floor: float) -> Chosen | None:
    """The learned exit decision: per predictor model, side exits 0..m kept (m the last with a leave predictor of
    that model at every exit up to it: each reads the confidences of the exits before it) and decided by their
    leave predictors, the cuts tuned for least calib latency at calib accuracy >= full's less
    ``cfg.learned_max_drop`` points (:func:`learned_floor`; ``floor``, the cascade's, is not its constraint); then
    while the last kept side exit's cut never lets a sample go it is removed and the cuts re-tuned, kept when
    faster. The fastest that meets the floor, or None (no leave predictor, or none meets it)."""
    k = ev.num_exits
    by_model: dict = {}
    for n in sorted(leave_names(ev)):
        s = ev.specs[n]
        if s.for_exit is not None and s.for_exit < k - 1:
            by_model.setdefault(s.model, {}).setdefault(s.for_exit, n)
    floor = learned_floor(ev, cfg)
    best, best_lat = None, np.inf
    for names in by_model.values():
        m = 0
        while m in names:
            m += 1
        while m > 0:
            pl = Placement.learned_on({i: names[i] for i in range(m)}, k, [i < m for i in range(k - 1)] + [True])
            cuts = learned_cuts(ev, pl, rule, cfg)
            o = outcome(ev, pl, rule, cuts=cuts, overlap=cfg.overlap)
            ok = cfg.risk is not None or o.correct.mean() >= floor - 1e-12  # certified, or within the floor
            if ok and o.latency_ms.mean() < best_lat - 1e-12:
                best, best_lat = Chosen(pl, cuts), o.latency_ms.mean()
            if np.isfinite(cuts.get(leave_cut_key(m - 1), np.inf)) or cfg.risk is not None:
                break
            m -= 1
    return best


def _full_form(k: int, chained: bool, rule: ExitRule) -> tuple[Placement, ExitRule]:
    """Every sample to the final exit: side exits removed (run, but never left, where exits are chained)."""
    never = ExitRule(rule.measure, (-np.inf if rule.lower_is_confident else np.inf,) * k)
    return (Placement.plain(k) if chained else Placement.plain(k, [False] * (k - 1) + [True])), never


register_policy("full", "every sample runs to the final exit", role="reference",
                run=lambda ev, rule, cfg: full_outcome(ev), runtime_form=_full_form)
register_policy("cascade", "BranchyNet: leave at the first exit whose confidence passes the rule", swept=True,
                run=lambda ev, rule, cfg: cascade_outcome(ev, rule, overlap=cfg.overlap),
                runtime_form=lambda k, chained, rule: (Placement.plain(k), rule))
register_policy("patience", "PABEE: leave once `patience` consecutive exits agree", runtime=False,
                run=lambda ev, rule, cfg: patience_outcome(ev, cfg.patience, overlap=cfg.overlap))
register_policy("gated", "a gate predictor in front of each side exit where one pays on calib", swept=True,
                decide=_gated("gate", "gated"))
register_policy("gated-entropy", "an entropy predictor as the gate of each side exit where one pays on calib",
                swept=True, decide=_gated("entropy", "gated-entropy"))
register_policy("jump", "an exit predictor sends each sample straight to its predicted exit", swept=True,
                decide=_jump)
register_policy("learned", "a leave predictor at each kept side exit decides whether the sample leaves (a learned exit "
                "policy, cuts tuned on calib)", swept=False, decide=_learned)
register_policy("matched-oracle", "every sample leaves at its cheapest exit that agrees with the final one (full's "
                "accuracy, knowing full's answer): an achievable-accuracy bound, not a policy", role="bound",
                runtime=False, run=lambda ev, rule, cfg: matched_oracle_outcome(ev))
register_policy("oracle", "every sample leaves at its cheapest correct exit: a bound, not a policy", role="bound",
                runtime=False, run=lambda ev, rule, cfg: oracle_outcome(ev))


def choose_policies(ev: Evidence, rule: ExitRule, cfg: PolicyConfig = PolicyConfig()) -> dict[str, Chosen]:
    """Every policy that is decided on calib, decided on calib out-of-fold scores (``ev``); one whose predictors
    are not fitted is left out."""
    out: dict[str, Chosen] = {}
    if ev.chained:
        if ev.specs:
            warnings.warn(f"the cache's exits are chained ({ev.chain}): gated and jump policies would skip heads a "
                          f"later answer needs, so they are left out", stacklevel=2)
        return out
    floor = outcome(ev, Placement.plain(ev.num_exits), rule, overlap=cfg.overlap).correct.mean() \
        - cfg.gate_max_drop / 100
    for name in POLICIES.names():
        p = POLICIES.get(name)
        if p.decide is not None:
            c = p.decide(ev, rule, cfg, floor)
            if c is not None:
                out[name] = c
    return out


def run_policy(name: str, ev: Evidence, rule: ExitRule, cfg: PolicyConfig, chosen: dict) -> Outcome | None:
    """The outcome of policy ``name`` on ``ev`` (``chosen``: the decisions of :func:`choose_policies`); None for
    a decided policy that was not chosen."""
    p = POLICIES.get(name)
    if p.run is not None:
        return p.run(ev, rule, cfg)
    c = chosen.get(name)
    return None if c is None else outcome(ev, c.placement, rule, cuts=c.cuts, overlap=cfg.overlap, name=name)


__all__ = ["POLICIES", "Chosen", "Policy", "PolicyConfig", "calibrate", "choose_policies", "is_operating_point",
           "is_reference", "learned_cuts", "learned_floor", "policy_order", "register_policy", "run_policy"]
