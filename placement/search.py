"""Placement search: strategies propose placements, an injected objective scores them (on calib),
joblib runs the scoring in parallel (local processes, or the workers of a Dask cluster through joblib's dask
backend), and a constraint picks the winner.

The objective is any callable ``Placement -> {"accuracy_%", "mean_ms", "p95_ms", "mean_MACs"}``; the
analysis layer supplies one built on the simulator (placement never imports analysis)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .evaluator import Evaluator, Objective
from .placement import Placement
from .selection import Constraint, non_dominated
from .space import SearchSpace
from .strategies import STRATEGIES, SearchContext

__all__ = ["SearchResult", "search"]


@dataclass
class SearchResult:
    strategy: str
    chosen: Placement
    table: pd.DataFrame  # every candidate scored (calib); ``pareto`` marks the non-dominated candidates
    full_accuracy: float
    constraint: Constraint
    predictors: dict | None = None  # what the chosen placement runs, when not the predictors given (e.g. refits)

    @property
    def chosen_row(self) -> pd.Series:
        return self.table[self.table.chosen].iloc[0]

    @property
    def pareto(self) -> pd.DataFrame:
        """The Pareto set: candidates no other candidate beats on both mean latency and accuracy, fastest first."""
        return self.table[self.table.pareto].sort_values(["mean_ms", "accuracy_%"], ascending=[True, False])


def search(strategy: str, space: SearchSpace, objective: Objective, *, constraint: Constraint = Constraint(),
           n_jobs: int = 1, seed: int = 0, progress: bool = True, scheduler=None, **options) -> SearchResult:
    """Run ``strategy`` over ``space``; every candidate is scored by ``objective`` (on calib) and the
    ``constraint`` picks the winner. Deterministic for a ``seed`` whatever ``n_jobs``, and the same on a Dask
    cluster.

    Args:
        strategy: a name in :data:`~placement.strategies.STRATEGIES` (``greedy``, ``gated``, ``budget``, ``nsga2``, ...).
        space: the placements there are (which exits, gates at which positions, jumps).
        objective: ``Placement -> {"accuracy_%", "mean_ms", "p95_ms", "mean_MACs"}``, scored on calib.
        constraint: fastest within an accuracy drop (points), or most accurate within a latency budget (ms).
        n_jobs: parallel scoring processes (joblib).
        seed: the strategy's random seed.
        progress: show a progress bar.
        scheduler: a Dask scheduler's address (``tcp://host:8786``) or a ``distributed.Client``
            (see :class:`~placement.evaluator.Evaluator`).
        **options: the strategy's own options (``n=`` for ``first-n``, ``trials=`` for ``nsga2``, ...).

    Returns:
        :class:`SearchResult`: the chosen placement, every candidate's row and the Pareto set.
    """
    fn = STRATEGIES.get(strategy)
    ev = Evaluator(objective, n_jobs=n_jobs, progress=progress, scheduler=scheduler)
    try:
        ev.proposing = False  # the plain network, for the accuracy reference only
        full = ev([Placement.plain(space.num_exits, [False] * (space.num_exits - 1) + [True])])[0]
        ev.proposing = True
        full_acc = full["accuracy_%"]
        ctx = SearchContext(space, ev, constraint, full_acc, np.random.default_rng(seed))
        fn(ctx, **options)
    finally:
        ev.close()
    rows = list(ev.rows.values())
    best = min((r for r in rows if r["candidate"]), key=lambda r: constraint.key(r, full_acc))
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "_order"} for r in rows])
    table["feasible"] = [constraint.feasible(r, full_acc) for r in rows]
    table["chosen"] = [r is best for r in rows]
    cand = np.array([r["candidate"] for r in rows], dtype=bool)
    pareto = np.zeros(len(rows), dtype=bool)
    pareto[cand] = non_dominated(table["mean_ms"].to_numpy()[cand], table["accuracy_%"].to_numpy()[cand])
    table["pareto"] = pareto
    return SearchResult(strategy, best["placement"], table, full_acc, constraint)
