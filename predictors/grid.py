"""The predictors a study fits (:class:`PredictorsConfig`, the study's ``predictors:`` section and the options of
``branchy fit-predictors``) and the grid of specs they expand to: every valid (position, exit) pair of a target."""
from __future__ import annotations

from dataclasses import dataclass

from branchy.core import check_int, setting

from .calibration import CALIBRATORS
from .spec import PredictorSpec
from .models import PREDICTOR_MODELS
from .targets import TARGETS


@dataclass(frozen=True)
class PredictorsConfig:
    """Which predictors to fit and how: a ``model`` (and each of ``baselines``) for each of ``targets``, after each stage in ``positions``
    (None: every stage with a side exit after it) and, for gates and entropy predictors, for each side exit in
    ``for_exits`` (None: every side exit at or after the position); cross-fitted on calib in ``folds``."""

    model: str = setting("nn", "predictor model", cli=("--predictor-model", "--model"), choices=PREDICTOR_MODELS.names)
    baselines: tuple[str, ...] = setting((), "more predictor models fitted for the same targets and positions, to "
                                             "compare with (e.g. linear,hgb)", choices=PREDICTOR_MODELS.names)
    targets: tuple[str, ...] = setting(("gate", "exit", "entropy", "leave"), "what the predictors learn", cli="--target",
                                       choices=TARGETS.names)
    positions: tuple[int, ...] | None = setting(None, "stage(s) after which a predictor sits (0-based; none: every "
                                                      "valid one)", cli="--at")
    for_exits: tuple[int, ...] | None = setting(None, "exit(s) a gate/entropy predictor is for (none: every side exit "
                                                      "at or after its position)", cli="--for")
    class_weight: str | None = setting("balanced", "reweight imbalanced classes of a classifier (balanced or none)",
                                       choices=lambda: ["balanced"])
    with_confidences: bool = setting(False, "also feed the confidences of the exits before the predictor")
    calibration: str | None = setting(None, "map each gate's probability to the probability of leaving, fitted on "
                                            "its out-of-fold outputs on calib (none: off)",
                                      choices=CALIBRATORS.names)
    folds: int = setting(5, "cross-fitting folds: every calib sample gets an out-of-fold output, used for every "
                            "selection")

    def __post_init__(self) -> None:
        for m in (self.model, *self.baselines):
            if m not in PREDICTOR_MODELS:
                raise ValueError(f"unknown predictor model {m!r}; known: {', '.join(PREDICTOR_MODELS.names())}")
        if not self.targets:
            raise ValueError(f"targets: name at least one of {', '.join(TARGETS.names())}")
        for t in self.targets:
            if t not in TARGETS:
                raise ValueError(f"unknown target {t!r}; known: {', '.join(TARGETS.names())}")
        for name in ("positions", "for_exits"):
            for v in getattr(self, name) or ():
                check_int(name, v, 0)
        if self.class_weight not in (None, "balanced"):
            raise ValueError(f"class_weight must be 'balanced' or None, got {self.class_weight!r}")
        check_int("folds", self.folds, 2)
        if self.calibration is not None and self.calibration not in CALIBRATORS:
            raise ValueError(f"unknown calibration {self.calibration!r}; known: {', '.join(CALIBRATORS.names())}")
        if self.calibration is not None and "gate" not in self.targets:
            raise ValueError(f"calibration maps a gate's probability; target {','.join(self.targets)} has none "
                             f"(calibrate gates only): add gate to the targets or leave calibration out")

    def specs(self, num_exits: int, rule=None) -> list[PredictorSpec]:
        """Every spec of every target (class weights only where a classifier learns)."""
        out = []
        for model in dict.fromkeys((self.model, *self.baselines)):
            for target in self.targets:
                cw = None if target == "entropy" else self.class_weight  # the one regression target
                out += spec_grid(num_exits, target, model, self.positions, self.for_exits, rule,
                                 self.with_confidences, cw, self.calibration if target == "gate" else None)
        return out


def spec_grid(num_exits: int, target: str, model: str, at=None, for_=None, rule=None, with_confidences: bool = False,
              class_weight: str | None = None, calibration: str | None = None) -> list[PredictorSpec]:
    """Specs for ``target`` after each stage in ``at`` (default: every stage with a side exit after it) and, for
    gates and entropy predictors, for each side exit in ``for_`` (default: every side exit at or after the
    position), under the exit ``rule``. A leave predictor (the learned exit decision) sits at each side exit of
    ``at`` (and of ``for_`` when given) and always reads the confidences of the exits run so far."""
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
        if target == "leave":  # decides after exit j's head, from its features and every confidence so far
            if for_ is None or j in for_:
                specs.append(PredictorSpec("leave", j, model, j, None, True, class_weight))
        elif target in ("gate", "entropy"):
            fors = [i for i in for_ if i >= j] if for_ is not None else list(range(j, k - 1))
            specs += [PredictorSpec(target, j, model, i, rule, with_confidences, class_weight,
                                    calibration=calibration) for i in fors]
        else:
            specs.append(PredictorSpec(target, j, model, None, rule, with_confidences, class_weight))
    if not specs:
        raise ValueError(f"no {target} predictor to fit: every --for exit lies before its --at stage (a gate sits at "
                         f"or before the exit it is for)")
    return specs


__all__ = ["PredictorsConfig", "spec_grid"]
