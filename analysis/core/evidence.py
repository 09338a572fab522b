"""One evaluator for every policy. Per split the evidence is built once (confidences, correctness,
predictions, predictor scores and costs); :func:`outcome` scores any policy from it (full, cascade,
patience, oracle, or a :class:`~placement.Placement`: removed exits, gates, a jump predictor), under one
:class:`~branchy.exits.ExitRule`. Gate cuts are policy parameters, tuned on calib out-of-fold scores by
:func:`tune_cuts` for every rule (cost-aware gates).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from branchy.cache import FeatureCache
from branchy.exits import ExitRule
from placement import Placement

from .costs import DEFAULT_PROFILE, CostModel, DeviceProfile
from .simulate import (Outcome, simulate_cascade, simulate_full, simulate_gated, simulate_matched_oracle,
                       simulate_oracle, simulate_patience)


@dataclass
class Evidence:
    """What every policy needs on one split. ``scores[name]``: a gate's enter score (higher = enter) or an
    exit predictor's named exit (``probs[name]``: its probability, for jump-and-leave), a leave predictor's
    probability that leaving is no worse, out of fold on the split the predictor was fitted on. ``conf`` is in
    ``measure``; ``logits`` stays memory-mapped for rules in another measure."""

    split: str
    measure: str
    conf: np.ndarray
    correct: np.ndarray
    preds: np.ndarray
    costs: CostModel
    chain: str = "none"
    scores: dict = field(default_factory=dict)
    pcost: dict = field(default_factory=dict)  # name -> (ms, MACs) per evaluation
    specs: dict = field(default_factory=dict)
    probs: dict = field(default_factory=dict)  # exit predictor -> [N] probability of the exit it names

    @property
    def n(self) -> int:
        return len(self.correct)

    @property
    def num_exits(self) -> int:
        return self.correct.shape[1]

    @property
    def chained(self) -> bool:
        return self.chain != "none"

    @classmethod
    def build(cls, cache: FeatureCache, split: str, *, measure: str = "entropy", predictors: dict | None = None,
              profile: str | DeviceProfile = DEFAULT_PROFILE, costs: CostModel | None = None,
              rows: slice | None = None) -> "Evidence":
        """The evidence of ``split`` (``rows``: only that slice of it, read from the memory maps alone)."""
        z = np.asarray(cache.logits(split, rows=rows))
        preds = z.argmax(-1)
        correct = preds == cache.labels(split, rows=rows)[:, None]
        costs = costs or CostModel.from_cache(cache, profile)
        ev = cls(split, measure, ExitRule(measure, (np.inf,) * z.shape[1]).confidence(z), correct, preds, costs,
                 cache.chain)
        for name, p in (predictors or {}).items():
            if split == getattr(p, "fit_split", None) and getattr(p, "oof", None) is None:
                raise ValueError(f"predictor {name} was fitted on {split} without cross-fitting: its {split} scores "
                                 f"are in-sample, so nothing can be selected on them; refit with folds >= 2")
            s = p.spec
            if s.target in ("gate", "entropy", "leave"):
                ev.scores[name] = np.asarray(p.score(cache, split, rows), dtype=np.float64)
            elif s.target in ("exit", "oracle"):
                raw = p._raw(cache, split, rows)
                ev.scores[name] = np.asarray(p._predict(raw), dtype=np.int64)
                ev.probs[name] = np.asarray(raw, dtype=np.float64).max(1)
            else:
                continue
            measured = p.latency_ms(costs.backend) if hasattr(p, "latency_ms") else p.cost["ms_b1"]
            ev.pcost[name] = (costs.predictor_ms(p.cost["macs"], measured), float(p.cost["macs"]))
            ev.specs[name] = s
        return ev

    def subset(self, idx, split: str | None = None) -> "Evidence":
        """The evidence of the samples ``idx`` (e.g. one side of a random re-split)."""
        return replace(self, split=split or self.split, conf=self.conf[idx], correct=self.correct[idx],
                       preds=self.preds[idx], scores={n: v[idx] for n, v in self.scores.items()},
                       probs={n: v[idx] for n, v in self.probs.items()})

    @staticmethod
    def concat(parts: list["Evidence"], split: str) -> "Evidence":
        """Samples of several splits as one (same costs and predictors)."""
        a = parts[0]
        cat = lambda f: np.concatenate([getattr(p, f) for p in parts])  # noqa: E731
        return replace(a, split=split, conf=cat("conf"), correct=cat("correct"), preds=cat("preds"),
                       scores={n: np.concatenate([p.scores[n] for p in parts]) for n in a.scores},
                       probs={n: np.concatenate([p.probs[n] for p in parts]) for n in a.probs})

    def passes(self, rule: ExitRule) -> np.ndarray:
        if rule.measure != self.measure:
            raise ValueError(f"the evidence holds {self.measure} confidences, the rule decides on {rule.measure}: "
                             f"build the evidence with measure={rule.measure!r}")
        if rule.num_exits != self.num_exits:
            raise ValueError(f"exit rule with {rule.num_exits} thresholds for {self.num_exits} exits")
        return rule.passes(self.conf)


def _check_gate_rule(ev: Evidence, name: str, rule: ExitRule) -> None:
    """A gate or exit predictor learnt leaving under some rule: refuse another measure (no exact
    conversion); other thresholds of the same measure are fine (its cut is re-tuned per rule)."""
    s = ev.specs[name]
    if s.target in ("gate", "exit") and s.rule is not None:
        rule.compatible(s.rule, what=f"predictor {name}")


def _check_overlap(ev: Evidence, overlap: bool) -> None:
    if overlap and ev.chained:
        raise ValueError(f"--overlap on chained exits ({ev.chain}) is refused: every head runs in line with the "
                         f"trunk there, and full and the oracle would not be comparable")


def full_outcome(ev: Evidence) -> Outcome:
    """Every sample to the final exit (side exits run too where exits are chained)."""
    return simulate_full(ev.correct, ev.costs, chained=ev.chained)


def cascade_outcome(ev: Evidence, rule: ExitRule, *, overlap: bool = False, name: str = "cascade") -> Outcome:
    """BranchyNet's cascade: leave at the first exit whose confidence passes ``rule`` (exits nothing can pass are
    not entered)."""
    _check_overlap(ev, overlap)
    return simulate_cascade(ev.passes(rule), ev.correct, ev.costs, overlap=overlap, name=name,
                            kept=None if ev.chained else can_pass(rule))


def patience_outcome(ev: Evidence, patience: int = 1, *, overlap: bool = False, name: str = "patience") -> Outcome:
    """PABEE: leave once ``patience`` consecutive exits agree."""
    _check_overlap(ev, overlap)
    return simulate_patience(ev.preds, ev.correct, ev.costs, patience, overlap=overlap, name=name)


def oracle_outcome(ev: Evidence) -> Outcome:
    """Every sample at its cheapest correct exit (the cheapest exit when none is right): a bound."""
    return simulate_oracle(ev.correct, ev.costs, chained=ev.chained)


def matched_oracle_outcome(ev: Evidence) -> Outcome:
    """Every sample at its cheapest exit that agrees with the final one: full's accuracy, knowing its answer."""
    return simulate_matched_oracle(ev.preds, ev.correct, ev.costs, chained=ev.chained)


def outcome(ev: Evidence, policy: Placement, rule: ExitRule, *, cuts: dict | None = None,
            overlap: bool = False, name: str | None = None) -> Outcome:
    """Per-sample outcome of a :class:`Placement` on the evidence (its own thresholds, when set, replace the
    rule's). ``cuts[k]``: gate k enters when its score >= cut (default: its fit-time operating point). The named
    policies run through the registry (:data:`analysis.core.policies.POLICIES`) or :func:`full_outcome`,
    :func:`cascade_outcome`, :func:`patience_outcome`, :func:`oracle_outcome`, :func:`matched_oracle_outcome`."""
    k = ev.num_exits
    _check_overlap(ev, overlap)
    if not isinstance(policy, Placement):
        raise TypeError(f"outcome evaluates a Placement, got {policy!r}: run a named policy with "
                        f"analysis.core.policies.POLICIES.get(name).run(ev, rule, cfg) e.g. full, cascade, oracle)")
    pl = policy
    if pl.num_exits != k:
        raise ValueError(f"placement has {pl.num_exits} exits, the cache {k}")
    if pl.thresholds is not None:
        rule = rule.with_thresholds(pl.thresholds, tuned_by="placement")
    kept = np.asarray(pl.kept, bool)
    skips = [i for i in range(k - 1) if not kept[i] or pl.gates[i] is not None] + (["jump"] if pl.jump else []) \
        + (["learned"] if pl.learned else [])
    if ev.chained and skips:
        raise ValueError(f"the cache's exits are chained ({ev.chain}): exit k's logits were dumped with every "
                         f"earlier head run, so a policy that removes, gates or jumps over an exit "
                         f"({pl.describe()}) would need logits for that skip pattern; refused. Use cascade or "
                         f"patience on this cache, or dump a model trained without chained exits")
    cuts = cuts or {}
    n = ev.n
    if pl.learned:
        return _learned_outcome(ev, pl, cuts or {}, overlap, name or pl.label or "learned")
    if not ev.chained:  # an exit whose threshold nothing can pass is never entered: a runtime would skip it
        kept = kept & can_pass(rule)
        pl = replace(pl, kept=tuple(bool(v) for v in kept),
                     gates=tuple(g if kept[i] else None for i, g in enumerate(pl.gates)))
    enter, gate_at, gms, gmacs = np.ones((n, k), bool), np.full(k, -1), np.zeros(k), np.zeros(k)
    reads = np.zeros(k, np.int64)
    for i, g in enumerate(pl.gates):
        if g is None:
            continue
        if g.predictor not in ev.scores or ev.specs[g.predictor].target not in ("gate", "entropy"):
            raise ValueError(f"placement gates exit {i} with predictor {g.predictor!r}, which is not among the "
                             f"fitted gate/entropy predictors ({', '.join(sorted(gate_names(ev))) or 'none'})")
        _check_gate_rule(ev, g.predictor, rule)
        enter[:, i] = ev.scores[g.predictor] >= cuts.get(i, default_cut(ev, g.predictor))
        gate_at[i] = g.at
        gms[i], gmacs[i] = ev.pcost[g.predictor]
        reads[i] = g.at if ev.specs[g.predictor].with_confidences else 0
    jump, jump_reads = None, 0
    if pl.jump is not None:
        j = pl.jump.predictor
        if j not in ev.scores or ev.specs[j].target not in ("exit", "oracle"):
            raise ValueError(f"unknown jump predictor {j!r}; fitted exit predictors: "
                             f"{', '.join(n_ for n_, s in ev.specs.items() if s.target in ('exit', 'oracle')) or 'none'}")
        _check_gate_rule(ev, j, rule)
        jump = (pl.jump.at, ev.scores[j], *ev.pcost[j])
        jump_reads = pl.jump.at if ev.specs[j].with_confidences else 0
    sure = None
    if pl.jump_leave:  # the jump's sample leaves at its target without the check where the predictor is sure
        sure = ev.probs[pl.jump.predictor] >= cuts.get("jump", JUMP_LEAVE_CUT)
    return simulate_gated(ev.passes(rule), ev.correct, ev.costs, enter=enter, gate_at=gate_at, gate_ms=gms,
                          gate_macs=gmacs, kept=kept, jump=jump, overlap=overlap, reads=reads,
                          jump_reads=jump_reads, jump_sure=sure, name=name or pl.label or "placement")


JUMP_LEAVE_CUT = 0.5  # the default cut on a jump-and-leave predictor's probability of the exit it names


LEAVE_CUT = 0.5  # a leave predictor's default cut: leave where leaving is at least as likely right as not


def leave_cut_key(k: int) -> str:
    """The key of side exit ``k``'s leave cut in a placement's ``cuts`` (gates are keyed by their exit index)."""
    return f"leave{k}"


def leave_cut(cuts: dict, k: int) -> float:
    """Side exit ``k``'s leave cut in ``cuts`` (:data:`LEAVE_CUT` where none was tuned)."""
    return cuts.get(leave_cut_key(k), LEAVE_CUT)


def learned_passes(ev: Evidence, pl: Placement, cuts: dict) -> np.ndarray:
    """``[N, K]`` bool: the learned decision lets the sample go at exit k (``score >= cut``, :func:`leave_cut`); the
    final exit always answers."""
    out = np.zeros((ev.n, ev.num_exits), bool)
    out[:, -1] = True
    for i, g in enumerate(pl.leaves or ()):
        if g is None:
            continue
        if g.predictor not in ev.scores or ev.specs[g.predictor].target != "leave":
            raise ValueError(f"placement lets leave predictor {g.predictor!r} decide exit {i}; fitted leave "
                             f"predictors: {', '.join(sorted(leave_names(ev))) or 'none'} (fit target leave)")
        if ev.specs[g.predictor].for_exit != i:
            raise ValueError(f"leave predictor {g.predictor} decides exit {ev.specs[g.predictor].for_exit}, not {i}")
        reads = ev.specs[g.predictor].n_conf
        if not all(pl.kept[:reads]):
            raise ValueError(f"leave predictor {g.predictor} reads the confidences of exits 0..{reads - 1}, but the "
                             f"placement removes exit {pl.kept.index(False)}, whose head then never runs: keep the "
                             f"exits before a leave predictor that reads them (or fit it without confidences)")
        out[:, i] = ev.scores[g.predictor] >= leave_cut(cuts, i)
    return out


def _learned_outcome(ev: Evidence, pl: Placement, cuts: dict, overlap: bool, name: str) -> Outcome:
    """The learned exit policy: every kept side exit entered, its leave predictor (cost charged where the exit is
    entered) decides instead of the confidence rule."""
    k = ev.num_exits
    lms, lmacs = np.zeros(k), np.zeros(k)
    for i, g in enumerate(pl.leaves):
        if g is not None and g.predictor in ev.pcost:
            lms[i], lmacs[i] = ev.pcost[g.predictor]
    return simulate_gated(learned_passes(ev, pl, cuts), ev.correct, ev.costs, kept=np.asarray(pl.kept, bool),
                          leave_ms=lms, leave_macs=lmacs, overlap=overlap, name=name)


def leave_names(ev: Evidence) -> list[str]:
    return [n for n, s in ev.specs.items() if s.target == "leave"]


def can_pass(rule: ExitRule) -> np.ndarray:
    """``[K]`` bool: exits whose threshold some confidence can pass (entropy below -inf, max-prob above +inf
    cannot); the final exit always answers."""
    t = np.asarray(rule.thresholds)
    ok = t > -np.inf if rule.lower_is_confident else t < np.inf
    ok[-1] = True
    return ok


def gate_names(ev: Evidence) -> list[str]:
    return [n for n, s in ev.specs.items() if s.target in ("gate", "entropy")]


def default_cut(ev: Evidence, name: str) -> float:
    """The fit-time operating point: gate probability 0.5; entropy forecast below the spec's T_k."""
    s = ev.specs[name]
    if s.target == "gate":
        return 0.5
    t = s.rule.thresholds[s.for_exit] if s.rule is not None and s.rule.measure == "entropy" else np.inf
    return -t


# ----------------------------------------------------------------------------- cost-aware gate cuts
def cut_candidates(scores: np.ndarray, n: int = 16) -> np.ndarray:
    """-inf (always enter) and score quantiles. Never entering is not a gate's cut: that is removing the exit
    (at no predictor cost), which placements search."""
    q = np.unique(np.quantile(scores, np.linspace(0, 1, n)))
    return np.concatenate([[-np.inf], q[q > q.min()] if len(q) > 1 else q])


def _mean(o: Outcome) -> tuple[float, float]:
    return float(o.correct.mean()), float(o.latency_ms.mean())


def leave_candidates(scores: np.ndarray, n: int = 16) -> np.ndarray:
    """+inf (never leave on this score) and score quantiles: the cuts tried for a leave predictor or a jump-and-leave
    predictor's probability."""
    return np.concatenate([[np.inf], np.unique(np.quantile(scores, np.linspace(0, 1, n)))])


def _tuned(ev: Evidence, pl: Placement) -> list[tuple[object, float, np.ndarray]]:
    """``(cuts key, start, candidates)`` of every cut of ``pl``: gates start always entering, leave predictors and a
    jump-and-leave start never leaving on their score (the same placement without them deciding)."""
    none = np.zeros(0)  # an unknown predictor: outcome names it and the fitted ones
    out = [(i, -np.inf, ev.scores.get(g.predictor, none)) for i, g in enumerate(pl.gates) if g is not None]
    out += [(leave_cut_key(i), np.inf, ev.scores.get(g.predictor, none)) for i, g in enumerate(pl.leaves or ())
            if g is not None]
    if pl.jump_leave:
        out.append(("jump", np.inf, ev.probs.get(pl.jump.predictor, none)))
    return out


def tune_cuts(ev: Evidence, pl: Placement, rule: ExitRule, *, max_drop: float = 0.0, overlap: bool = False,
              n_cuts: int = 16, passes: int = 2, floor: float | None = None) -> dict:
    """Per gated exit (leave predictor, jump-and-leave) the cut that minimises mean latency on ``ev`` (calib,
    out-of-fold scores) while its accuracy stays within ``max_drop`` points of the same placement with every gate
    always entering and no predictor letting a sample go (the cascade on those exits; for a learned policy, the
    final exit's answers), or at ``floor`` (a fraction) and above when given. Coordinate descent in exit order,
    ``passes`` rounds, from the start where every gate enters and nothing leaves on a score."""
    params = _tuned(ev, pl)
    if not params:
        return {}
    cuts = {key: start for key, start, _ in params}
    acc0, lat0 = _mean(outcome(ev, pl, rule, cuts=cuts, overlap=overlap))
    floor = (acc0 - max_drop / 100 if floor is None else floor) - 1e-12
    best_lat = lat0
    for _ in range(passes):
        changed = False
        for key, start, scores in params:
            cands = cut_candidates(scores, n_cuts) if start == -np.inf else leave_candidates(scores, n_cuts)
            for c in cands:
                if c == cuts[key]:
                    continue
                acc, lat = _mean(outcome(ev, pl, rule, cuts={**cuts, key: c}, overlap=overlap))
                if acc >= floor and lat < best_lat - 1e-12:
                    cuts[key], best_lat, changed = c, lat, True
        if not changed:
            break
    return cuts


def gate_report(ev: Evidence, pl: Placement, rule: ExitRule, cuts: dict, *, overlap: bool = False) -> pd.DataFrame:
    """Per gate at its operating point (on ``ev``): the enter rate among the samples that reach the exit,
    true-skip and false-skip rates, its cost G (ms), the mean latency saved against always entering, the
    break-even G (the largest predictor cost at which it still saves against always entering), and the
    latency saved against removing the exit outright. It *pays* when it beats both."""
    rows = []
    passes = ev.passes(rule)
    base = outcome(ev, pl, rule, cuts=cuts, overlap=overlap)
    for i, g in enumerate(pl.gates):
        if g is None:
            continue
        open_ = _without_gate(pl, i)
        o_open = outcome(ev, open_, rule, cuts=cuts, overlap=overlap)
        ms, _ = ev.pcost[g.predictor]
        ev_free = replace(ev, pcost={**ev.pcost, g.predictor: (0.0, 0.0)})  # the same gate, at no cost
        o_free = outcome(ev_free, pl, rule, cuts=cuts, overlap=overlap)
        charged = float(((base.breakdown["predictors"] - o_free.breakdown["predictors"]) > 0).mean()) if ms > 0 \
            else float((base.exit >= g.at).mean())
        saving_free = o_open.latency_ms.mean() - o_free.latency_ms.mean()
        reach = base.exit >= i
        enter = ev.scores[g.predictor] >= cuts.get(i, default_cut(ev, g.predictor))
        would = passes[:, i]
        r = reach.sum()
        removed = replace(pl, kept=tuple(False if j == i else kp for j, kp in enumerate(pl.kept)),
                          gates=tuple(None if j == i else gg for j, gg in enumerate(pl.gates)), label="")
        vs_removed = outcome(ev, removed, rule, cuts=cuts, overlap=overlap).latency_ms.mean() - base.latency_ms.mean()
        rows.append({"exit": i, "predictor": g.predictor, "at": g.at, "cut": cuts.get(i, np.nan),
                     "reached": int(r), "enter_%": 100 * enter[reach].mean() if r else np.nan,
                     "true_skip_%": 100 * (~enter & ~would)[reach].sum() / max(1, (~would)[reach].sum()),
                     "false_skip_%": 100 * (~enter & would)[reach].sum() / max(1, would[reach].sum()),
                     "G_ms": ms, "saving_ms": saving_free - ms * charged,
                     "break_even_G_ms": saving_free / charged if charged > 0 else np.inf,
                     "saving_vs_removed_ms": vs_removed,
                     "pays": bool(saving_free - ms * charged > 0 and vs_removed > 0)})
    return pd.DataFrame(rows)


def _without_gate(pl: Placement, i: int) -> Placement:
    gates = list(pl.gates)
    gates[i] = None
    return replace(pl, gates=tuple(gates))


__all__ = ["Evidence", "JUMP_LEAVE_CUT", "LEAVE_CUT", "leave_cut", "can_pass", "cascade_outcome", "cut_candidates", "default_cut", "full_outcome",
           "gate_names", "leave_candidates", "leave_cut_key", "leave_names", "learned_passes",
           "gate_report", "matched_oracle_outcome", "oracle_outcome", "outcome", "patience_outcome", "tune_cuts"]
