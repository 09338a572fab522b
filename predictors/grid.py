"""The grid of predictor specs a study fits: every valid (position, exit) pair of a target."""
from __future__ import annotations

from .fit import PredictorSpec


def spec_grid(num_exits: int, target: str, model: str, at=None, for_=None, rule=None, with_confidences: bool = False,
              class_weight: str | None = None) -> list[PredictorSpec]:
    """Specs for ``target`` after each stage in ``at`` (default: every stage with a side exit after it) and, for
    gates and entropy predictors, for each side exit in ``for_`` (default: every side exit at or after the
    position), under the exit ``rule``."""
    k = num_exits
    ats = at if at is not None else list(range(k - 1))
    bad = [j for j in ats if not 0 <= j < k - 1]
    if bad:
        raise ValueError(f"--at {','.join(map(str, bad))}: a predictor sits after a stage that has a side exit after "
                         f"it, 0..{k - 2} for this cache's {k} exits")
    bad = [i for i in (for_ or []) if not 0 <= i < k - 1]
    if bad:
        raise ValueError(f"--for {','.join(map(str, bad))}: gates and entropy predictors are for side exits, "
                         f"0..{k - 2} for this cache's {k} exits")
    specs = []
    for j in ats:
        if target in ("gate", "entropy"):
            fors = for_ if for_ is not None else list(range(j, k - 1))
            specs += [PredictorSpec(target, j, model, i, rule, with_confidences, class_weight) for i in fors]
        else:
            specs.append(PredictorSpec(target, j, model, None, rule, with_confidences, class_weight))
    if not specs:
        raise ValueError(f"no {target} predictor to fit: every --for exit lies before its --at stage (a gate sits at "
                         f"or before the exit it is for)")
    return specs
