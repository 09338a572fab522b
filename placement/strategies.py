"""The placement strategies (``STRATEGIES``): each proposes placements to a :class:`SearchContext`, whose
evaluator scores them; ``nsga2`` lives in :mod:`placement.optuna_search`."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np

from branchy.core import Registry

from .evaluator import Evaluator
from .placement import Gate, Placement
from .selection import Constraint
from .space import SearchSpace, learned_placements

__all__ = ["EXHAUSTIVE_LIMIT", "STRATEGIES", "SearchContext", "all_structures", "list_strategies", "make_placement"]

EXHAUSTIVE_LIMIT = 4096
STRATEGIES: Registry[Callable] = Registry("placement strategy", plugins="branchy.strategies")


@dataclass
class SearchContext:
    space: SearchSpace
    score: Evaluator
    constraint: Constraint
    full_acc: float
    rng: np.random.Generator

    def best(self, rows: list[dict]) -> dict:
        return min(rows, key=lambda r: self.constraint.key(r, self.full_acc))


def make_placement(space: SearchSpace, choice: list, jump=None, thresholds=None) -> Placement:
    """``choice[k]``: False (removed), None (open) or a gate, per side exit; ``jump``: None, a jump predictor's
    gate, or ``(gate, "leave")`` for jump-and-leave (:meth:`SearchSpace.jump_choices`)."""
    kept = tuple(c is not False for c in choice) + (True,)
    gates = tuple(c if isinstance(c, Gate) else None for c in choice) + (None,)
    leave = isinstance(jump, tuple) and not isinstance(jump, Gate)
    return Placement(kept, gates, jump[0] if leave else jump, None if thresholds is None else tuple(thresholds),
                     jump_leave=leave)


def _front_gate(space: SearchSpace, k: int) -> Gate | None:
    """The gate right in front of branch k (the latest position), if any."""
    opts = space.gate_options[k]
    return max(opts, key=lambda g: (g.at, g.predictor)) if opts else None


# ----------------------------------------------------------------------------- strategies
@STRATEGIES.register("none", doc="every exit, no gate (BranchyNet)")
def _none(ctx: SearchContext) -> None:
    ctx.score([Placement.plain(ctx.space.num_exits)])


@STRATEGIES.register("all", doc="a gate in front of every side exit (the one placed latest)")
def _all(ctx: SearchContext) -> None:
    k = ctx.space.num_exits
    missing = [i for i in range(k - 1) if not ctx.space.gate_options[i]]
    if missing:
        raise ValueError(f"strategy 'all' needs a gate predictor for every side exit; none for {missing}: fit "
                         f"them with `branchy fit-predictors --target gate`")
    ctx.score([make_placement(ctx.space, [_front_gate(ctx.space, i) for i in range(k - 1)])])


@STRATEGIES.register("first-n", doc="keep the first n side exits, no gates (every n unless n= is given)")
def _first_n(ctx: SearchContext, n: int | None = None) -> None:
    k = ctx.space.num_exits
    ns = range(k) if n is None else [int(n)]
    for m in ns:
        if not 0 <= m <= k - 1:
            raise ValueError(f"first-n: n must be in 0..{k - 1}, got {m}")
    ctx.score([make_placement(ctx.space, [None if i < m else False for i in range(k - 1)]) for m in ns])


@STRATEGIES.register("flops-fraction", doc="keep exits nearest to fixed fractions of the cost (Shallow-Deep Networks)")
def _flops_fraction(ctx: SearchContext, fractions=(0.15, 0.3, 0.45, 0.6, 0.75, 0.9)) -> None:
    keep = set(ctx.space.nearest_to_fractions(fractions))
    ctx.score([make_placement(ctx.space, [None if i in keep else False for i in range(ctx.space.num_exits - 1)])])


def _neighbours(space: SearchSpace, cur: tuple[list, Gate | None]) -> list[tuple[list, Gate | None]]:
    """Every structure one move from ``cur``: one side exit's choice changed (removed, open, one of its gates), or
    the jump predictor changed."""
    choice, jump = cur
    out = []
    for i in range(space.num_exits - 1):
        for opt in space.side_options(i):
            if opt != choice[i]:
                c = list(choice)
                c[i] = opt
                out.append((c, jump))
    out += [(list(choice), j) for j in space.jump_choices() if j != jump]
    return out


def _greedy(ctx: SearchContext, start: list, jump: Gate | None) -> None:
    cur = (list(start), jump)
    cur_row = ctx.score([make_placement(ctx.space, cur[0], cur[1])])[0]
    while True:
        neigh = _neighbours(ctx.space, cur)
        order = ctx.rng.permutation(len(neigh))  # seeded tie-breaking
        neigh = [neigh[i] for i in order]
        rows = ctx.score([make_placement(ctx.space, c, j) for c, j in neigh])
        best_i = min(range(len(rows)), key=lambda i: ctx.constraint.key(rows[i], ctx.full_acc)[:3])
        if ctx.constraint.key(rows[best_i], ctx.full_acc)[:3] < ctx.constraint.key(cur_row, ctx.full_acc)[:3]:
            cur, cur_row = neigh[best_i], rows[best_i]
        else:
            return


@STRATEGIES.register("greedy", doc="forward selection: from no side exit, change one exit at a time while it helps")
def _greedy_forward(ctx: SearchContext) -> None:
    _greedy(ctx, [False] * (ctx.space.num_exits - 1), None)


@STRATEGIES.register("greedy-backward", doc="backward selection: from every exit open, change one at a time")
def _greedy_backward(ctx: SearchContext) -> None:
    _greedy(ctx, [None] * (ctx.space.num_exits - 1), None)


def _uses_predictor(choice: list, jump: Gate | None) -> bool:
    return jump is not None or any(isinstance(c, Gate) for c in choice)


def _local_gated(ctx: SearchContext, start: tuple[list, Gate | None], thresholds) -> None:
    """Best-improvement local search from ``start`` among placements that use a predictor: change one side exit's
    choice (removed, open, one of its gates) or the jump predictor, move while the constraint's key improves."""
    cur = (list(start[0]), start[1])
    cur_row = ctx.score([make_placement(ctx.space, cur[0], cur[1], thresholds)])[0]
    while True:
        neigh = [n for n in _neighbours(ctx.space, cur) if _uses_predictor(*n)]
        if not neigh:
            return
        rows = ctx.score([make_placement(ctx.space, c, j, thresholds) for c, j in neigh])
        key = lambda r: ctx.constraint.key(r, ctx.full_acc)[:3]  # noqa: E731
        best_i = min(range(len(rows)), key=lambda i: (key(rows[i]), i))
        if key(rows[best_i]) < key(cur_row):
            cur, cur_row = neigh[best_i], rows[best_i]
        else:
            return


@STRATEGIES.register("gated", doc="local search among placements with a predictor, from every gate in front of its "
                                  "exit and from the best single predictors on the cascade (finds the gated optimum)")
def _gated_search(ctx: SearchContext, thresholds=None, starts: int = 3) -> None:
    """The placements that use a gate or a jump, searched for the best one by the constraint (a gated optimum to
    compare with the best predictor-free policy). Every single predictor on the cascade is scored first; then a
    best-improvement local search (:func:`_local_gated`) runs from each of the ``starts`` best of them and from
    every side exit gated by its latest gate. ``thresholds``: one threshold vector for every candidate (None: the
    objective's rule). A space without predictors scores nothing."""
    k, space = ctx.space.num_exits, ctx.space
    singles = []
    for i in range(k - 1):
        for g in space.gate_options[i]:
            c = [None] * (k - 1)
            c[i] = g
            singles.append((c, None))
    singles += [([None] * (k - 1), j) for j in space.jump_choices() if j is not None]
    if not singles:
        return
    rows = ctx.score([make_placement(space, c, j, thresholds) for c, j in singles])
    order = sorted(range(len(rows)), key=lambda i: (ctx.constraint.key(rows[i], ctx.full_acc)[:3], i))
    seeds = [singles[i] for i in order[: max(1, int(starts))]]
    front = [_front_gate(space, i) for i in range(k - 1)]
    if any(g is not None for g in front):
        seeds.append((front, None))
    for st in seeds:
        _local_gated(ctx, st, thresholds)


def all_structures(space: SearchSpace, limit: int) -> list[tuple[list, Gate | None]]:
    size = space.size()
    if size > limit:
        raise ValueError(f"exhaustive search over {size} placements exceeds the limit of {limit} "
                         f"(K={space.num_exits} exits, {[len(space.side_options(i)) for i in range(space.num_exits - 1)]}"
                         f" choices per side exit); use 'greedy', 'budget' or 'nsga2', or raise limit=")
    opts = [space.side_options(i) for i in range(space.num_exits - 1)]
    return [(list(c), j) for c in itertools.product(*opts) for j in space.jump_choices()]


@STRATEGIES.register("exhaustive", doc=f"every placement, learned exit decisions included (refused above "
                                       f"{EXHAUSTIVE_LIMIT} candidates)")
def _exhaustive(ctx: SearchContext, limit: int = EXHAUSTIVE_LIMIT) -> None:
    ctx.score([make_placement(ctx.space, c, j) for c, j in all_structures(ctx.space, limit)]
              + learned_placements(ctx.space))


@STRATEGIES.register("learned", doc="a leave predictor decides at each kept side exit (learned exit policy), every "
                                    "set of kept exits")
def _learned(ctx: SearchContext) -> None:
    """Every learned exit decision of the space (:func:`placement.space.learned_placements`), its cuts tuned by the
    objective; a space without leave predictors is refused."""
    pls = learned_placements(ctx.space)
    if not pls:
        raise ValueError("strategy 'learned' needs leave predictors: fit them with `branchy fit-predictors --target "
                         "leave`")
    ctx.score(pls)


@STRATEGIES.register("budget", doc="structures (exhaustive when small, else greedy) x calibrated threshold settings")
def _budget(ctx: SearchContext, threshold_options=(None,), limit: int = EXHAUSTIVE_LIMIT) -> None:
    """The constrained optimiser: searches exits, gates and thresholds together. ``threshold_options``
    are candidate threshold vectors (tuned on calib by the caller; ``None`` = the objective's default)."""
    if ctx.space.size() <= limit:
        structures = all_structures(ctx.space, limit)
    else:
        _greedy_forward(ctx)
        structures = []
        for r in list(ctx.score.rows.values()):
            p = r["placement"]
            if p.learned:
                continue
            structures.append(([g if g is not None else (None if kp else False)
                                for kp, g in zip(p.kept[:-1], p.gates[:-1])],
                               (p.jump, "leave") if p.jump_leave else p.jump))
    ctx.score([make_placement(ctx.space, c, j, t) for t in threshold_options for c, j in structures])


def list_strategies() -> list[str]:
    return STRATEGIES.names()
