"""What a predictor is: :class:`PredictorSpec` (target, exit, model, features, the rule its target is read under)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from branchy.exits import ExitRule

from .calibration import CALIBRATORS
from .models import PREDICTOR_MODELS
from .targets import TARGETS


@dataclass(frozen=True)
class PredictorSpec:
    """One predictor: what it forecasts (``target``), where it sits (after stage ``at``), for which exit
    (``for_exit``; gates and entropy), with which model, and under which exit ``rule`` (measure and
    thresholds: gate and exit targets are defined by it; a sequence of thresholds is read as entropy). A gate
    may be ``calibration``-mapped (``sigmoid`` or ``isotonic``, :mod:`predictors.calibration`) so that its score
    is the probability that the sample leaves."""

    target: str
    at: int
    model: str = "nn"
    for_exit: int | None = None
    rule: ExitRule | None = None
    with_confidences: bool = False
    class_weight: str | None = None
    params: dict = field(default_factory=dict)
    random_state: int = 0
    calibration: str | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGETS.names():
            raise ValueError(f"unknown target {self.target!r}; known: {', '.join(TARGETS.names())}")
        PREDICTOR_MODELS.get(self.model)
        if self.rule is not None and not isinstance(self.rule, ExitRule):
            r = self.rule
            r = ExitRule.from_dict(r) if isinstance(r, dict) else ExitRule("entropy", tuple(np.ravel(r)))
            object.__setattr__(self, "rule", r)
        if self.target in ("gate", "entropy"):
            if self.for_exit is None:
                raise ValueError(f"a {self.target} predictor needs the exit it is for (--for K)")
            if self.at > self.for_exit:
                raise ValueError(f"a predictor after stage {self.at} cannot gate exit {self.for_exit}: it must sit "
                                 f"at or before the exit (at <= for)")
        if self.target == "leave":
            if self.for_exit is None:
                raise ValueError("a leave predictor needs the side exit it decides at (--for K)")
            if self.at != self.for_exit:
                raise ValueError(f"a leave predictor decides after exit {self.for_exit}'s head has run: it sits at "
                                 f"that exit (at = for = {self.for_exit}), got at={self.at}")
        if self.calibration is not None:
            if self.calibration not in CALIBRATORS:
                raise ValueError(f"unknown calibration {self.calibration!r}; known: {', '.join(CALIBRATORS.names())}")
            if self.target != "gate":
                raise ValueError(f"calibration maps a gate's probability; a {self.target} predictor has none to map "
                                 f"(calibrate gates only)")
        if self.target in ("gate", "exit") and self.rule is None:
            raise ValueError(f"a {self.target} predictor needs the exit rule (thresholds T, one per exit) that "
                             f"defines its target")

    @property
    def n_conf(self) -> int:
        """How many exits' confidences the inputs hold (with ``with_confidences``): those run before stage ``at``
        (``at``), or up to and including exit ``at`` for a leave predictor (``at + 1``, its own head has run)."""
        if not self.with_confidences:
            return 0
        return self.at + 1 if self.target == "leave" else self.at

    @property
    def task(self) -> str:
        return "regression" if self.target == "entropy" else "classification"

    @property
    def measure(self) -> str:
        return self.rule.measure if self.rule is not None else "entropy"

    @property
    def name(self) -> str:
        f = f"_for{self.for_exit}" if self.for_exit is not None else ""
        c = f"_cal-{self.calibration}" if self.calibration else ""
        return f"{self.target}_at{self.at}{f}_{self.model}{c}"


__all__ = ["PredictorSpec"]
