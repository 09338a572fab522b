"""How a search picks: the constraint that chooses the winner (fastest within an accuracy drop, or most
accurate within a latency budget) and the Pareto set of latency against accuracy."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Constraint", "non_dominated"]


@dataclass(frozen=True)
class Constraint:
    """Either the cheapest placement whose accuracy is within ``max_acc_drop`` percentage points of
    ``full`` (default 0.5), or the most accurate one whose mean latency is within ``latency_budget`` ms."""

    max_acc_drop: float | None = 0.5
    latency_budget: float | None = None

    def __post_init__(self) -> None:
        for name, v, unit, example in (("max_acc_drop", self.max_acc_drop, "percentage points", 0.5),
                                       ("latency_budget", self.latency_budget, "ms", 2.0)):
            if v is not None and (isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number))
                                  or not np.isfinite(v)):
                raise ValueError(f"{name} must be a finite number ({unit}), got {v!r}: give e.g. {name}={example}, "
                                 f"or None to leave it out")
        if self.latency_budget is not None and self.max_acc_drop is not None:
            object.__setattr__(self, "max_acc_drop", None)
        if self.latency_budget is None and self.max_acc_drop is None:
            raise ValueError("give max_acc_drop or latency_budget")
        if self.max_acc_drop is not None and self.max_acc_drop < 0:
            raise ValueError(f"max_acc_drop must be >= 0 (percentage points), got {self.max_acc_drop}")
        if self.latency_budget is not None and not self.latency_budget > 0:
            raise ValueError(f"latency_budget must be > 0 ms, got {self.latency_budget}")

    def feasible(self, row: dict, full_acc: float) -> bool:
        if self.latency_budget is not None:
            return row["mean_ms"] <= self.latency_budget
        return row["accuracy_%"] >= full_acc - self.max_acc_drop - 1e-9

    def key(self, row: dict, full_acc: float) -> tuple:
        """Sort key, smaller is better: feasible first, then the objective, then the other metric."""
        ok = self.feasible(row, full_acc)
        if self.latency_budget is not None:
            return (not ok, -row["accuracy_%"] if ok else row["mean_ms"], row["mean_ms"], row["_order"])
        return (not ok, row["mean_ms"] if ok else -row["accuracy_%"], -row["accuracy_%"], row["_order"])

    def describe(self) -> str:
        if self.latency_budget is not None:
            return f"most accurate with mean latency <= {self.latency_budget} ms"
        return f"fastest within {self.max_acc_drop} points of full's accuracy"


def non_dominated(mean_ms, accuracy) -> np.ndarray:
    """Per point, whether no other point is at least as fast and as accurate and strictly better in one
    (lower ``mean_ms``, higher ``accuracy`` are better; equal points are all kept). O(n log n).

    Args:
        mean_ms: ``[N]`` mean latency of each point (ms per sample).
        accuracy: ``[N]`` accuracy of each point (any unit, higher is better).

    >>> non_dominated([1.0, 2.0, 2.0, 3.0], [90.0, 95.0, 94.0, 95.0]).tolist()
    [True, True, False, False]
    """
    ms, acc = np.asarray(mean_ms, dtype=float), np.asarray(accuracy, dtype=float)
    keep = np.zeros(len(ms), dtype=bool)
    order = np.lexsort((-acc, ms))
    best = -np.inf  # the best accuracy among strictly faster points
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and ms[order[j]] == ms[order[i]]:
            j += 1
        group = order[i:j]  # equally fast, most accurate first
        top = acc[group[0]]
        keep[group] = (acc[group] == top) & (top > best)
        best = max(best, top)
        i = j
    return keep
