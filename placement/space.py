"""The search space: which gates and jump predictors exist (from fitted predictors) and what each
exit costs, for the strategies to choose from."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .placement import Gate


@dataclass(frozen=True)
class SearchSpace:
    """``gate_options[k]``: gates available for side exit k; ``jump_options``: exit predictors;
    ``exit_cost[k]``: cumulative cost (e.g. MACs) of leaving at exit k, for cost-fraction rules."""

    num_exits: int
    gate_options: tuple[tuple[Gate, ...], ...]
    jump_options: tuple[Gate, ...]
    exit_cost: tuple[float, ...]

    @classmethod
    def from_predictors(cls, predictors: dict, num_exits: int, exit_cost) -> "SearchSpace":
        """Gates from fitted ``gate`` (and ``entropy``) predictors, jumps from ``exit`` predictors."""
        gates: list[list[Gate]] = [[] for _ in range(num_exits)]
        jumps = []
        for name in sorted(predictors):
            s = predictors[name].spec
            if s.target in ("gate", "entropy") and s.for_exit is not None and s.for_exit < num_exits - 1:
                gates[s.for_exit].append(Gate(name, s.at))
            elif s.target == "exit":
                jumps.append(Gate(name, s.at))
        return cls(num_exits, tuple(tuple(sorted(g, key=lambda x: (x.at, x.predictor))) for g in gates),
                   tuple(sorted(jumps, key=lambda x: (x.at, x.predictor))), tuple(float(c) for c in exit_cost))

    def side_options(self, k: int) -> list:
        """Choices for side exit k: removed (False), open (None), or one of its gates."""
        return [False, None, *self.gate_options[k]]

    def size(self) -> int:
        n = 1
        for k in range(self.num_exits - 1):
            n *= len(self.side_options(k))
        return n * (1 + len(self.jump_options))

    def nearest_to_fractions(self, fractions) -> list[int]:
        """Side exits nearest to the given fractions of the full network's cost."""
        cost = np.asarray(self.exit_cost, dtype=float)
        frac = cost[:-1] / cost[-1]
        return sorted({int(np.abs(frac - f).argmin()) for f in fractions})


__all__ = ["SearchSpace"]
