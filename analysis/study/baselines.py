"""The policies a "do predictors pay?" claim is measured against (docs/semantics.md §3.4), decided on calib under one
cost model and one accuracy constraint:

- ``full`` and the ``cascade`` under the study's default rule;
- ``best-rule``: the cascade (every exit kept) under the best rule of the confidence-rule family
  (:func:`analysis.core.calibrate.rule_family`: sequential target accuracies and budgeted-batch rules), tuned for
  latency under the constraint;
- ``best-free``: the best predictor-free policy: the best of ``full``, the default cascade and every placement that
  only removes exits, each under every rule of the family recalibrated for its kept exits;
- ``best-gated``: the best placement that uses a predictor (a gate or a jump that runs on some calib samples;
  predictors that answer a constant are left out, they decide nothing), found by the ``gated`` search
  (local search among gated placements, see :mod:`placement.strategies`) under the default rule and under the best free
  policy's rule, then its best structures re-scored under every rule of the family;
- ``best-learned``: the best learned exit policy (leave predictors decide at every kept side exit, for every set of
  kept exits; :func:`placement.space.learned_placements`), its cuts tuned on calib for calib accuracy >= full's less
  ``PolicyConfig.learned_max_drop`` points (0.5 by default, the placement constraint's default; every candidate is
  then held to the constraint as the others are). It is judged against ``best-rule`` (the best confidence rule) and
  ``best-free``.

Every selection uses calib (out-of-fold predictor scores, gate cuts tuned per candidate); test only reports. Each
decided policy carries its thresholds explicitly, so it is re-run on test (or under another cost table) as it is."""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from branchy.cache import FeatureCache
from branchy.exits import ExitRule
from placement import Constraint, Placement, SearchSpace, learned_placements, search

from ..core.breakeven import perfect_gates_outcome
from ..core.calibrate import calib_rule, how_target, rule_family
from ..core.costs import DeviceProfile, get_profile, measured_cost_models
from ..core.evidence import Evidence, matched_oracle_outcome, oracle_outcome
from ..core.paired import acc_diff_ci, ratio_ci
from ..core.policies import PolicyConfig
from .placement_study import PlacementObjective, exit_macs
from .verdict import pays, verdict

NAMES = ("full", "cascade", "best-rule", "best-free", "best-gated", "best-learned", "best")


@dataclass
class Decided:
    """A policy decided on calib: its placement (thresholds explicit), how its rule was tuned, its calib metrics."""

    name: str
    placement: Placement
    how: str
    calib: dict


@dataclass
class Baselines:
    """The decided policies (:data:`NAMES`; ``best-gated`` absent when no predictor placement exists), every
    candidate scored on calib (``table``: ``kind`` free/gated, ``how``, metrics, ``feasible``), the objective
    (its evidence, cost model and gate cuts) and full's calib accuracy (%)."""

    decided: dict[str, Decided]
    table: pd.DataFrame
    objective: PlacementObjective
    full_acc: float
    constraint: Constraint

    def __getitem__(self, name: str) -> Decided:
        return self.decided[name]


def full_placement(k: int, chained: bool, measure_lower_is_confident: bool) -> Placement:
    """``full`` as a placement: side exits removed (on chained exits: run but never passed)."""
    if chained:
        never = -np.inf if measure_lower_is_confident else np.inf
        always = -never
        return Placement((True,) * k, (None,) * k, None, (never,) * (k - 1) + (always,), "full")
    return Placement((False,) * (k - 1) + (True,), (None,) * k, None, None, "full")


def _with_thresholds(pl: Placement, thresholds, label: str = "") -> Placement:
    return Placement(pl.kept, pl.gates, pl.jump, tuple(float(t) for t in thresholds), label or pl.label)


class _Scorer:
    """Scores placements on calib once each, in order, with the constraint's key."""

    def __init__(self, obj: PlacementObjective, constraint: Constraint) -> None:
        self.obj, self.constraint, self.rows = obj, constraint, {}
        self.full_acc = None

    def __call__(self, pl: Placement, kind: str, how: str) -> dict:
        key = pl.key()
        if key not in self.rows:
            m = self.obj(pl)
            self.rows[key] = {"kind": kind, "how": how, "describe": pl.describe(), "placement": pl,
                              "_order": len(self.rows), **m}
        return self.rows[key]

    def best(self, rows: list[dict]) -> dict:
        return min(rows, key=lambda r: self.constraint.key(r, self.full_acc))


def _kept_sets(k: int, chained: bool):
    """Side-exit subsets (``kept`` tuples, the last exit always kept); on chained exits only every exit."""
    if chained:
        yield (True,) * k
        return
    for bits in itertools.product((False, True), repeat=k - 1):
        yield tuple(bits) + (True,)


def decide_baselines(cache: FeatureCache, predictors: dict, *, profile: str | DeviceProfile, rule: ExitRule,
                     cfg: PolicyConfig, constraint: Constraint = Constraint(), n_jobs: int = 1, seed: int = 0,
                     refine: int = 5, objective: PlacementObjective | None = None) -> Baselines:
    """Decide :data:`NAMES` on calib under ``profile`` (see the module's docstring). ``refine``: how many of the best
    gated structures are re-scored under every rule of the family."""
    obj = objective or PlacementObjective(cache, predictors, profile=profile, rule=rule, cfg=cfg)
    k, chained, measure = cache.num_exits, cache.chained, cfg.measure
    z, y = np.asarray(cache.logits("calib")), cache.labels("calib")
    sc = _Scorer(obj, constraint)
    full = full_placement(k, chained, rule.lower_is_confident)
    sc.full_acc = sc(full, "free", "full")["accuracy_%"]
    default = _with_thresholds(Placement.plain(k), obj.rule_for(Placement.plain(k)).thresholds, "cascade")
    sc(default, "free", f"default: {rule.tuned_by}")
    families: dict[tuple, list] = {}

    def family(kept: tuple) -> list:
        if kept not in families:
            families[kept] = rule_family(z, y, measure=measure, kept=kept)
        return families[kept]

    for kept in _kept_sets(k, chained):
        if not any(kept[:-1]):
            continue  # full
        for how, th in family(kept):
            sc(Placement(kept, (None,) * k, None, tuple(float(t) for t in th), how), "free", how)
    free_rows = [r for r in sc.rows.values() if r["kind"] == "free"]
    all_kept = [r for r in free_rows if all(r["placement"].kept) and r["how"] != "full"]
    decided = {"full": _decided("full", sc.rows[full.key()]),
               "cascade": _decided("cascade", sc.rows[default.key()]),
               "best-rule": _decided("best-rule", sc.best(all_kept)),
               "best-free": _decided("best-free", sc.best(free_rows))}
    # a predictor that answers a constant is a predictor-free decision in disguise: not searched as a gate or jump
    skilled = {n: p for n, p in predictors.items() if not getattr(p, "constant", False)}
    space = SearchSpace.from_predictors(skilled, k, exit_macs(cache), jump_leave=cfg.jump_leave)
    learned_rows = [] if chained else [sc(pl, "learned", "learned cuts") for pl in learned_placements(space)]
    if learned_rows:  # a learned exit policy: judged against the best confidence rule and the best free policy
        decided["best-learned"] = _decided("best-learned", sc.best(learned_rows))
    if not chained and (any(space.gate_options[:-1]) or space.jump_options):
        objs = [obj] + _under_free_rule(obj, cache, cfg, decided["best-free"].how)
        _score_gated(sc, space, objs, family, constraint=constraint, n_jobs=n_jobs, seed=seed, refine=refine)
        # a gated placement whose predictors run on no calib sample is a predictor-free policy in disguise
        gated_rows = [r for r in sc.rows.values() if r["kind"] == "gated" and r.get("predictor_runs_%", 100) > 0]
        if gated_rows:
            decided["best-gated"] = _decided("best-gated", sc.best(gated_rows))
    cand = [sc.rows[d.placement.key()] for n, d in decided.items() if n != "full"]
    decided["best"] = _decided("best", sc.best(cand + [sc.rows[full.key()]]))
    table = pd.DataFrame([{k_: v for k_, v in r.items() if k_ != "_order"} for r in sc.rows.values()])
    table["feasible"] = [constraint.feasible(r, sc.full_acc) for r in sc.rows.values()]
    return Baselines(decided, table, obj, sc.full_acc, constraint)


def _under_free_rule(obj: PlacementObjective, cache: FeatureCache, cfg: PolicyConfig, how: str) -> list:
    """The objective once more under the best free policy's rule, when that is another target accuracy than the
    study's (the gated search then runs under both); else none."""
    t = how_target(how)  # percent
    if t is None or cfg.target_acc is None:
        return []
    if abs(t - cfg.target_acc) <= 1e-9:
        return []
    o2 = copy.copy(obj)
    o2.cfg = replace(cfg, target_acc=t)
    o2.rule = calib_rule(cache, t, measure=cfg.measure)
    o2.forget_rules()
    return [o2]


def _score_gated(sc: _Scorer, space: SearchSpace, objs: list, family, *, constraint: Constraint, n_jobs: int,
                 seed: int, refine: int) -> None:
    """Score (as ``gated`` rows of ``sc``) every placement with a predictor the ``gated`` search finds under each
    objective, then the ``refine`` best structures again under every rule of the family for their kept exits."""
    gated = []
    for o in objs:
        res = search("gated", space, o, constraint=constraint, n_jobs=n_jobs, seed=seed, progress=False)
        for r in res.table.to_dict("records"):
            if r.get("candidate") and (any(g is not None for g in r["placement"].gates) or r["placement"].jump):
                pl = r["placement"]
                gated.append(_with_thresholds(pl, o.rule_for(pl).thresholds))
    rows = [sc(pl, "gated", "searched rule") for pl in gated]
    top, seen = [], set()
    for r in sorted(rows, key=lambda r: sc.constraint.key(r, sc.full_acc)):
        if r["placement"].key() not in seen:
            seen.add(r["placement"].key())
            top.append(r["placement"])
        if len(top) >= refine:
            break
    for pl in top:
        for how_, th in family(tuple(pl.kept)):
            sc(_with_thresholds(pl, th, how_), "gated", how_)


def _decided(name: str, row: dict) -> Decided:
    return Decided(name, row["placement"], row["how"],
                   {k: row[k] for k in ("accuracy_%", "mean_ms", "p95_ms", "mean_MACs") if k in row})


# ratio columns of a comparison row: name -> (numerator, denominator)
RATIOS = {"gated_vs_free": ("best-gated", "best-free"), "free_vs_full": ("best-free", "full"),
          "cascade_vs_full": ("cascade", "full"), "best_rule_vs_cascade": ("best-rule", "cascade"),
          "gated_vs_cascade": ("best-gated", "cascade"), "best_vs_full": ("best", "full"),
          "best_vs_matched_oracle": ("best", "matched-oracle"), "best_vs_oracle": ("best", "oracle"),
          "perfect_gates_vs_cascade": ("perfect-gates", "cascade"),
          "perfect_gates_vs_free": ("perfect-gates-on-free", "best-free"),
          "learned_vs_best_rule": ("best-learned", "best-rule"), "learned_vs_free": ("best-learned", "best-free"),
          "learned_vs_matched_oracle": ("best-learned", "matched-oracle")}
ACC_DIFFS = {"gated_vs_free": ("best-gated", "best-free"), "free_vs_full": ("best-free", "full"),
             "best_vs_full": ("best", "full"), "learned_vs_best_rule": ("best-learned", "best-rule"),
             "learned_vs_free": ("best-learned", "best-free")}


def _col(name: str) -> str:
    return name.replace("-", "_")


def compare_references(cache: FeatureCache, predictors: dict, *, rule: ExitRule, cfg: PolicyConfig,
                       constraint: Constraint, profile: str | DeviceProfile, n_boot: int = 1000, n_jobs: int = 1,
                       seed: int = 0, base: Baselines | None = None) -> dict:
    """One comparison row: :func:`decide_baselines` on calib under ``profile``, every decided policy and the two
    oracles reported on test (accuracy %, mean and p95 ms per sample at batch 1, the placement and its rule), the
    ratios of :data:`RATIOS` with paired bootstrap 95 % CIs over test samples and, for a measured profile, over
    its independent profilings (:func:`analysis.core.costs.measured_cost_models`; decisions use the first), the
    accuracy differences of :data:`ACC_DIFFS` with CIs, and ``pays``: the best placement with a predictor beats the
    best predictor-free policy (``gated_vs_free_hi < 1``) at non-inferior accuracy (:func:`non_inferior` with the
    constraint's ``max_acc_drop``). ``base``: the policies already decided under ``profile`` (default: decided
    here)."""
    eps = constraint.max_acc_drop if constraint.max_acc_drop is not None else 0.0
    if base is None:
        base = decide_baselines(cache, predictors, profile=profile, rule=rule, cfg=cfg, constraint=constraint,
                                n_jobs=n_jobs, seed=seed)
    obj = base.objective
    tables = measured_cost_models(cache, profile)
    test0 = Evidence.build(cache, "test", measure=cfg.measure, predictors=predictors, costs=tables[0])
    tests = [test0] + [replace(test0, costs=c) for c in tables[1:]]
    outs: dict[str, list] = {}
    for n, d in base.decided.items():
        cuts = obj.cuts(d.placement)
        outs[n] = [obj.outcome(d.placement, ev, cuts) for ev in tests]
    for n, fn in (("matched-oracle", matched_oracle_outcome), ("oracle", oracle_outcome)):
        outs[n] = [fn(ev) for ev in tests]
    if not cache.chained:
        outs["perfect-gates"] = [perfect_gates_outcome(ev, rule, overlap=cfg.overlap) for ev in tests]
        free = base["best-free"].placement
        if free.thresholds is not None:  # free perfect gates on the best predictor-free policy's exits and rule
            r_free = rule.with_thresholds(free.thresholds, tuned_by="best predictor-free policy")
            outs["perfect-gates-on-free"] = [perfect_gates_outcome(ev, r_free, overlap=cfg.overlap) for ev in tests]
        else:  # full: no side exit to gate
            outs["perfect-gates-on-free"] = outs["best-free"]
    c0 = tables[0]
    side = (c0.write_ms + c0.exit_ms + c0.read_ms)[:-1].sum()
    row = {"profile": get_profile(profile).name, "n_test": test0.n, "cost_tables": len(tables), "acc_eps_pts": eps,
           "side_exit_cost_share_%": 100 * float(side / (c0.stage_ms.sum() + c0.exit_ms[-1] + c0.sample_ms))}
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
    for col, (num, den) in ACC_DIFFS.items():
        if num in outs:
            d, lo, hi = acc_diff_ci(outs[num][0].correct, outs[den][0].correct, n_boot)
            row.update({f"{col}_acc_pts": d, f"{col}_acc_lo_pts": lo, f"{col}_acc_hi_pts": hi})
    row["pays"] = pays(row)
    row["note"] = (f"exits chained ({cache.chain}): no placement can remove or gate an exit" if cache.chained else
                   "" if "best-gated" in outs else "no placement with a predictor that decides anything (none fitted, "
                   "constant ones, or none that runs on calib)")
    row["verdict"] = verdict(row)
    return row



__all__ = ["ACC_DIFFS", "Baselines", "Decided", "NAMES", "RATIOS", "compare_references", "decide_baselines",
           "full_placement"]
