"""A chosen placement as the decision it is (``plan.json``): the exit rule it runs under, the exits kept, the gates
with their positions and cuts, the jump, the pooling of the predictors' input, in standard JSON. ``branchy place`` and
a study write it beside ``placement.json``; ``branchy export`` packages it with the ONNX files."""
from __future__ import annotations

import numpy as np

from branchy.core import json_safe
from placement import Placement

from ..core.evidence import JUMP_LEAVE_CUT, can_pass, leave_cut
from ..core.policies import PolicyConfig

__all__ = ["decide", "decision_plan"]


def decide(cache, predictors: dict, placement: Placement, rule, cfg: PolicyConfig | None = None) -> tuple:
    """The placement as the evaluator scores it: ``(rule, cuts, kept)`` with the rule it runs under (its own
    thresholds, or the default recalibrated for its kept exits), the gates' cuts tuned on calib out of fold, and
    the exits kept that some confidence can pass (a learned policy's kept exits as they are: its leave predictors
    decide there, not the rule)."""
    from .placement_study import PlacementObjective

    obj = PlacementObjective(cache, predictors or {}, rule=rule, cfg=cfg or PolicyConfig())
    r = obj.rule_for(placement)
    if placement.thresholds is not None:  # its own thresholds replace the rule's (as the evaluator and runtime do)
        r = r.with_thresholds(placement.thresholds, tuned_by="placement")
    kept = list(placement.kept) if placement.learned else [bool(a and b) for a, b in zip(placement.kept, can_pass(r))]
    return r, obj.cuts(placement), kept


def _finite(v: float):
    return float(v) if np.isfinite(v) else None  # standard JSON has no infinity


def decision_plan(cache, predictors: dict, placement: Placement, rule, cfg: PolicyConfig | None = None) -> dict:
    """What runs ``placement`` on a device, decided on calib: the rule (measure, thresholds with ``None`` where
    nothing passes, how and where tuned), kept exits, gates (exit, stage after which it runs, predictor, cut with
    ``None`` = always enter; enter when score >= cut), the jump (stage, predictor; ``jump_leave``: the cut on its
    probability where it is jump-and-leave), a learned policy's leave predictors (exit, predictor, cut: leave when
    score >= cut) and the features' pooling."""
    r, cuts, kept = decide(cache, predictors, placement, rule, cfg)
    gates = [{"exit": e, "at": g.at, "predictor": g.predictor, "cut": _finite(cuts.get(e, -np.inf))}
             for e, g in enumerate(placement.gates) if g is not None and kept[e]]
    j = placement.jump
    leaves = [{"exit": e, "predictor": g.predictor, "cut": _finite(leave_cut(cuts, e))}
              for e, g in enumerate(placement.leaves or ()) if g is not None]
    return {"describe": placement.describe(), "placement": json_safe(placement.to_dict()), "kept": kept,
            "leaves": leaves, "leave_rule": "leave at the exit when score >= cut (None: never)",
            "jump_leave": None if not placement.jump_leave else _finite(cuts.get("jump", JUMP_LEAVE_CUT)),
            "rule": {"measure": r.measure, "thresholds": [_finite(v) for v in r.thresholds],
                     "lower_is_confident": r.lower_is_confident, "tuned_by": r.tuned_by, "tuned_on": r.tuned_on},
            "gates": gates, "jump": None if j is None else {"at": j.at, "predictor": j.predictor},
            "gate_rule": "enter the exit when score >= cut", "pooling": cache.manifest.get("pooling", "avg")}
