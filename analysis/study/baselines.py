"""The policies a "do predictors pay?" claim is measured against (DESIGN.md §3.4), decided on calib under one cost
model and one accuracy constraint:

- ``full`` and the ``cascade`` under the study's default rule;
- ``best-rule``: the cascade (every exit kept) under the best rule of the confidence-rule family
  (:func:`analysis.core.calibrate.rule_family`: sequential target accuracies and budgeted-batch rules), tuned for
  latency under the constraint;
- ``best-free``: the best predictor-free policy: the best of ``full``, the default cascade and every placement that
  only removes exits, each under every rule of the family recalibrated for its kept exits;
- ``best-gated``: the best placement that uses a predictor (a gate or a jump), found by the ``gated`` search
  (local search among gated placements, see :mod:`placement.search`) under the default rule and under the best free
  policy's rule, then its best structures re-scored under every rule of the family.

Every selection uses calib (out-of-fold predictor scores, gate cuts tuned per candidate); test only reports. Each
decided policy carries its thresholds explicitly, so it is re-run on test (or under another cost table) as it is."""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from branchy.cache import FeatureCache
from branchy.rule import ExitRule
from placement import Constraint, Placement, SearchSpace, search

from ..core.calibrate import calib_rule, rule_family
from ..core.costs import DeviceProfile
from ..core.policies import PolicyConfig
from .placement_study import PlacementObjective, exit_macs

NAMES = ("full", "cascade", "best-rule", "best-free", "best-gated", "best")


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
    space = SearchSpace.from_predictors(predictors, k, exit_macs(cache))
    if not chained and (any(space.gate_options[:-1]) or space.jump_options):
        objs = [obj]
        how = decided["best-free"].how
        if how.startswith("target-acc ") and cfg.target_acc is not None:
            t = float(how.split()[1])
            if abs(t - cfg.target_acc) > 1e-12:  # the gated search also runs under the best free policy's rule
                o2 = copy.copy(obj)
                o2.cfg = type(cfg)(**{**cfg.__dict__, "target_acc": t})
                o2.rule = calib_rule(cache, t, measure=measure)
                o2._rules = {}
                objs.append(o2)
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
        for pl in top:  # the best gated structures under every rule of the family, for their kept exits
            for how_, th in family(tuple(pl.kept)):
                sc(_with_thresholds(pl, th, how_), "gated", how_)
        gated_rows = [r for r in sc.rows.values() if r["kind"] == "gated"]
        if gated_rows:
            decided["best-gated"] = _decided("best-gated", sc.best(gated_rows))
    cand = [sc.rows[d.placement.key()] for n, d in decided.items() if n != "full"]
    decided["best"] = _decided("best", sc.best(cand + [sc.rows[full.key()]]))
    table = pd.DataFrame([{k_: v for k_, v in r.items() if k_ != "_order"} for r in sc.rows.values()])
    table["feasible"] = [constraint.feasible(r, sc.full_acc) for r in sc.rows.values()]
    return Baselines(decided, table, obj, sc.full_acc, constraint)


def _decided(name: str, row: dict) -> Decided:
    return Decided(name, row["placement"], row["how"],
                   {k: row[k] for k in ("accuracy_%", "mean_ms", "p95_ms", "mean_MACs") if k in row})


__all__ = ["Baselines", "Decided", "NAMES", "decide_baselines", "full_placement"]
