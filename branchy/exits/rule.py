"""The exit rule: one object that owns every exit decision's measure and thresholds, and says how and
on which split they were tuned. Saved with every result (``thresholds.json``), held by predictor specs,
passed to the simulator, the runtime, placement and the plots (numpy only)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import json_float, write_json
from .measures import LOWER_IS_CONFIDENT, confidence

RULE_MEASURES = tuple(LOWER_IS_CONFIDENT)  # the measures a rule decides on (one list: branchy.exits.measures)


def per_exit(thresholds, num_exits: int) -> np.ndarray:
    """``[K]`` thresholds from one per exit, or one per side exit (``K - 1``: the final exit's is added).

    Args:
        thresholds: ``K`` or ``K - 1`` numbers (no NaN).
        num_exits: ``K``, the exits of the net.

    >>> per_exit([0.2, 0.5], 3)
    array([0.2, 0.5, inf])
    """
    t = np.asarray(thresholds, dtype=np.float64).ravel()
    if len(t) == num_exits - 1:
        t = np.append(t, np.inf)
    if len(t) != num_exits:
        raise ValueError(f"{len(t)} thresholds for {num_exits} exits: give one per exit (or per side exit, "
                         f"{num_exits - 1})")
    if np.isnan(t).any():
        raise ValueError("thresholds hold NaN")
    return t


@dataclass(frozen=True)
class ExitRule:
    """Leave at side exit k when its confidence passes ``thresholds[k]``: entropy (nats) or normalised
    entropy below T, max-probability or margin above T. The final exit always answers (its entry is
    +inf for entropy-like measures, -inf otherwise). ``tuned_by`` says how the thresholds were found
    (e.g. ``target-acc 99% sequential``), ``tuned_on`` on which split (``calib``; ``given`` when a user
    passed them)."""

    measure: str
    thresholds: tuple[float, ...]
    tuned_by: str = "given"
    tuned_on: str = "given"

    def __post_init__(self) -> None:
        if self.measure not in RULE_MEASURES:
            raise ValueError(f"unknown confidence measure {self.measure!r}; known: {', '.join(RULE_MEASURES)}")
        try:
            t = np.array(self.thresholds, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"exit rule thresholds must be numbers, one per exit; got {self.thresholds!r}") from None
        if t.ndim != 1 or len(t) < 1:
            raise ValueError(f"an exit rule needs a flat list of thresholds, one per exit; got shape {t.shape}")
        if np.isnan(t).any():
            raise ValueError(f"exit rule thresholds hold NaN: {t.tolist()}")
        if str(self.tuned_on).strip().lower() == "test":
            raise ValueError("thresholds tuned on the test split are refused: tune on calib, report on test")
        t[-1] = np.inf if LOWER_IS_CONFIDENT[self.measure] else -np.inf
        object.__setattr__(self, "thresholds", tuple(float(v) for v in t))

    # ------------------------------------------------------------------ building
    @classmethod
    def given(cls, thresholds, num_exits: int, measure: str = "entropy", *, tuned_by: str = "given",
              tuned_on: str = "given") -> "ExitRule":
        """From one threshold per exit, or per side exit (``num_exits - 1``; the final exit is added)."""
        return cls(measure, tuple(per_exit(thresholds, num_exits)), tuned_by, tuned_on)

    @property
    def num_exits(self) -> int:
        return len(self.thresholds)

    @property
    def lower_is_confident(self) -> bool:
        return LOWER_IS_CONFIDENT[self.measure]

    def with_thresholds(self, thresholds, *, tuned_by: str | None = None) -> "ExitRule":
        return ExitRule.given(thresholds, self.num_exits, self.measure, tuned_by=tuned_by or self.tuned_by,
                              tuned_on=self.tuned_on)

    # ------------------------------------------------------------------ deciding
    def confidence(self, logits) -> np.ndarray:
        """``[N, K]`` confidence of every exit in this rule's measure."""
        return confidence(np.asarray(logits), self.measure)

    def passes(self, conf) -> np.ndarray:
        """``[N, K]`` bool from confidences in this rule's measure; the final exit always passes."""
        c = np.asarray(conf)
        if c.ndim != 2 or c.shape[1] != self.num_exits:
            raise ValueError(f"confidences must be [N, K={self.num_exits}] (one column per exit of the rule), "
                             f"got shape {c.shape}")
        t = np.asarray(self.thresholds)
        ok = c < t if self.lower_is_confident else c > t
        ok[:, -1] = True
        return ok

    def passes_logits(self, logits) -> np.ndarray:
        return self.passes(self.confidence(logits))

    # ------------------------------------------------------------------ compatibility
    def compatible(self, other: "ExitRule", *, what: str = "this result") -> None:
        """Refuse (ValueError) when ``other`` decides with another measure or number of exits."""
        if other.num_exits != self.num_exits:
            raise ValueError(f"{what} was made for an exit rule with {other.num_exits} exits, this one has "
                             f"{self.num_exits}")
        if other.measure != self.measure:
            raise ValueError(f"{what} was made for exits deciding on {other.measure}; the policy decides on "
                             f"{self.measure}. Refit it with --measure {self.measure} (a {other.measure} score "
                             f"cannot be converted into {self.measure} exactly)")

    def converted(self, measure: str, num_classes: int) -> "ExitRule":
        """The same decisions in another measure where that is exact (entropy <-> norm_entropy: T / ln C);
        refused otherwise."""
        if measure == self.measure:
            return self
        pair = {self.measure, measure}
        if pair == {"entropy", "norm_entropy"}:
            f = 1 / np.log(num_classes) if measure == "norm_entropy" else np.log(num_classes)
            return ExitRule(measure, tuple(v * f for v in self.thresholds), self.tuned_by, self.tuned_on)
        raise ValueError(f"an exit rule on {self.measure} cannot be converted to {measure} exactly: "
                         f"recalibrate with --measure {measure}")

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict:
        return {"measure": self.measure, "thresholds": [float(v) for v in self.thresholds],
                "tuned_by": self.tuned_by, "tuned_on": self.tuned_on}

    @classmethod
    def from_dict(cls, d: dict) -> "ExitRule":
        if not isinstance(d, dict) or "measure" not in d or "thresholds" not in d:
            raise ValueError("not an exit rule: want a mapping with measure and thresholds (and tuned_by, "
                             "tuned_on)")
        th = d["thresholds"]
        if not isinstance(th, (list, tuple)):
            raise ValueError(f"exit rule thresholds must be a list, one per exit; got {th!r}")
        try:
            th = tuple(json_float(v) for v in th)
        except ValueError as e:
            raise ValueError(f"exit rule thresholds must be numbers (or \"inf\" / \"-inf\"), one per exit: {e}") \
                from None
        return cls(str(d["measure"]), th, str(d.get("tuned_by", "given")), str(d.get("tuned_on", "given")))

    def save(self, path: str | os.PathLike) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ExitRule":
        """Read ``thresholds.json``: infinities as ``"inf"`` / ``"-inf"`` (or the old ``Infinity``)."""
        p = Path(path)
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{p} is not valid JSON ({e})") from e

    def describe(self) -> str:
        side = ", ".join(f"{v:.4g}" for v in self.thresholds[:-1])
        op = "<" if self.lower_is_confident else ">"
        return f"{self.measure} {op} [{side}] ({self.tuned_by}, on {self.tuned_on})"


__all__ = ["ExitRule", "RULE_MEASURES", "per_exit"]
