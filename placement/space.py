"""The search space: which gates and jump predictors exist (from fitted predictors) and what each
exit costs, for the strategies to choose from."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .placement import Gate, Placement


@dataclass(frozen=True)
class SearchSpace:
    """``gate_options[k]``: gates available for side exit k; ``jump_options``: exit predictors;
    ``exit_cost[k]``: cumulative cost (e.g. MACs) of leaving at exit k, for cost-fraction rules;
    ``leave_options[k]``: leave predictors of side exit k (learned exit decisions, searched as
    :func:`learned_placements`); ``jump_leave``: every jump is also offered as jump-and-leave."""

    num_exits: int
    gate_options: tuple[tuple[Gate, ...], ...]
    jump_options: tuple[Gate, ...]
    exit_cost: tuple[float, ...]
    leave_options: tuple[tuple[Gate, ...], ...] = ()
    jump_leave: bool = False

    @classmethod
    def from_predictors(cls, predictors: dict, num_exits: int, exit_cost, *,
                        jump_leave: bool = False) -> "SearchSpace":
        """Gates from fitted ``gate`` (and ``entropy``) predictors, jumps from ``exit`` predictors (and, with
        ``jump_leave``, from ``oracle`` ones, each jump then also offered as jump-and-leave), learned exit decisions
        from ``leave`` predictors."""
        gates: list[list[Gate]] = [[] for _ in range(num_exits)]
        leaves: list[list[Gate]] = [[] for _ in range(num_exits)]
        jumps = []
        for name in sorted(predictors):
            s = predictors[name].spec
            if s.target in ("gate", "entropy") and s.for_exit is not None and s.for_exit < num_exits - 1:
                gates[s.for_exit].append(Gate(name, s.at))
            elif s.target == "leave" and s.for_exit is not None and s.for_exit < num_exits - 1:
                leaves[s.for_exit].append(Gate(name, s.at))
            elif s.target == "exit" or (jump_leave and s.target == "oracle"):
                jumps.append(Gate(name, s.at))
        return cls(num_exits, tuple(tuple(sorted(g, key=lambda x: (x.at, x.predictor))) for g in gates),
                   tuple(sorted(jumps, key=lambda x: (x.at, x.predictor))), tuple(float(c) for c in exit_cost),
                   tuple(tuple(sorted(g, key=lambda x: x.predictor)) for g in leaves), bool(jump_leave))

    def jump_choices(self) -> list:
        """No jump (None), each jump predictor, and with ``jump_leave`` each as jump-and-leave (``(gate, "leave")``)."""
        return [None, *self.jump_options, *[(j, "leave") for j in self.jump_options if self.jump_leave]]

    def learned_sets(self) -> list[dict]:
        """Every learned exit decision the space holds, ``{exit: predictor name}``: per leave-predictor slot (the j-th
        leave predictor of each exit, by name: one model) the side exits 0..m kept, for every m whose exits 0..m all
        have one. Prefixes only: a leave predictor reads the confidences of every exit before it, whose heads the
        runtime runs only where they are kept."""
        opts = list(self.leave_options[: self.num_exits - 1]) if self.leave_options else []
        out = []
        for j in range(max((len(o) for o in opts), default=0)):
            for m in range(len(opts)):
                if j >= len(opts[m]):
                    break
                out.append({i: opts[i][j].predictor for i in range(m + 1)})
        return out

    def side_options(self, k: int) -> list:
        """Choices for side exit k: removed (False), open (None), or one of its gates."""
        return [False, None, *self.gate_options[k]]

    def size(self) -> int:
        n = 1
        for k in range(self.num_exits - 1):
            n *= len(self.side_options(k))
        return n * len(self.jump_choices()) + len(self.learned_sets())

    def nearest_to_fractions(self, fractions) -> list[int]:
        """Side exits nearest to the given fractions of the full network's cost."""
        cost = np.asarray(self.exit_cost, dtype=float)
        frac = cost[:-1] / cost[-1]
        return sorted({int(np.abs(frac - f).argmin()) for f in fractions})


def learned_placements(space: SearchSpace) -> list[Placement]:
    """The learned exit decisions of the space as placements (:meth:`SearchSpace.learned_sets`)."""
    k = space.num_exits
    return [Placement.learned_on(names, k, [i in names for i in range(k - 1)] + [True]) for names in space.learned_sets()]


__all__ = ["SearchSpace", "learned_placements"]
