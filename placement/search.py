"""Placement search: strategies propose placements, an injected objective scores them (on calib),
joblib runs the scoring in parallel (local processes, or the workers of a Dask cluster through joblib's dask
backend), and a constraint picks the winner.

The objective is any callable ``Placement -> {"accuracy_%", "mean_ms", "p95_ms", "mean_MACs"}``; the
analysis layer supplies one built on the simulator (placement never imports analysis)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from branchy.registry import Registry

from .placement import Gate, Placement
from .space import SearchSpace

Objective = Callable[[Placement], dict]
EXHAUSTIVE_LIMIT = 4096
STRATEGIES: Registry[Callable] = Registry("placement strategy")


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


def _call(objective: Objective, p: Placement) -> dict:
    return objective(p)


CONNECT_TIMEOUT = 10.0  # s: connecting to a Dask scheduler, handshake included
_NO_DISTRIBUTED = ("scoring on a Dask cluster needs dask.distributed: pip install 'branchy-study[cluster]' "
                   "(or dask[distributed])")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or "no message"


def _handshake(address: str, timeout: float) -> None:
    """Open a Dask comm to ``address`` and exchange Dask's handshake, in a thread of its own (its own event loop,
    so it runs whatever loop the caller is in), within ``timeout`` s overall. distributed bounds the TCP connect
    but not the handshake read, so a service that accepts and stays silent would hang ``Client`` forever, and
    one that answers with other bytes makes it read a garbage frame length (MemoryError, ValueError)."""
    import asyncio
    import threading

    from distributed.comm.core import connect

    async def go():
        comm = await connect(address, timeout=timeout)
        comm.abort()

    box: list[BaseException] = []

    def target():
        try:
            asyncio.run(asyncio.wait_for(go(), timeout))
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            box.append(e)

    t = threading.Thread(target=target, name="dask-scheduler-handshake", daemon=True)
    t.start()
    t.join(timeout + 5)
    if t.is_alive():
        raise TimeoutError(f"no handshake after {timeout:g} s")
    if box:
        raise box[0]


def connect_scheduler(address, timeout: float | None = None):
    """A ``distributed.Client`` of the Dask scheduler at ``address`` (``tcp://host:8786``), or a one-line
    ValueError, within ``timeout`` s (default: ``CONNECT_TIMEOUT``, or dask's ``distributed.comm.timeouts.connect``
    when that is shorter) whatever listens there: nothing, a scheduler, or another service (which would otherwise
    hang the client or make it read garbage). Needs dask.distributed."""
    try:
        import dask
        from dask.utils import parse_timedelta
        from distributed import Client
    except ImportError:
        raise ImportError(_NO_DISTRIBUTED) from None
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"--scheduler must be a Dask scheduler's address such as tcp://host:8786 (or a "
                         f"distributed.Client), got {address!r}")
    if timeout is None:
        configured = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="seconds")
        timeout = min(CONNECT_TIMEOUT, configured) if configured else CONNECT_TIMEOUT
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not np.isfinite(timeout) \
            or timeout <= 0:
        raise ValueError(f"connect timeout must be a number of seconds > 0, got {timeout!r}")
    timeout = float(timeout)
    try:
        _handshake(address, timeout)  # something that speaks Dask answers, within the timeout
        return Client(address, timeout=timeout, set_as_default=False)
    except Exception as e:  # noqa: BLE001 - OSError, TimeoutError, CommClosedError, MemoryError, ...
        if isinstance(e, TimeoutError) and not str(e):
            why = "it accepted the connection but sent no Dask handshake"
        elif isinstance(e, (OSError, TimeoutError)):
            why = f"{type(e).__name__}: {_one_line(e)}"
        else:  # it answered, with bytes that are not Dask's
            why = f"something else listens there: {type(e).__name__}: {_one_line(e)}"
        raise ValueError(f"--scheduler {address}: no Dask scheduler answered within {timeout:g} s ({why}); start "
                         f"one with `dask scheduler` (then `dask worker ADDRESS`) or leave --scheduler out") from None


class Evaluator:
    """Scores placements once each (memoised), in parallel through joblib, in a stable order. With a
    ``scheduler`` (a Dask scheduler's address, ``tcp://host:8786``, or a ``distributed.Client``) the scoring runs
    on that cluster's workers through joblib's dask backend, the objective sent to them once (scattered); the
    rows are the same as with local processes."""

    def __init__(self, objective: Objective, *, n_jobs: int = 1, progress: bool = True, scheduler=None,
                 connect_timeout: float | None = None) -> None:
        self.objective, self.n_jobs, self.progress, self.scheduler = objective, n_jobs, progress, scheduler
        self.connect_timeout = connect_timeout  # see connect_scheduler
        self._client, self._own_client, self._objective_future = None, False, None
        self.rows: dict[tuple, dict] = {}
        self.proposing = True  # False while scoring references that are not the strategy's candidates
        self._bar = tqdm(desc="placements", unit="cand", disable=not progress)

    def __call__(self, placements: list[Placement]) -> list[dict]:
        new, seen = [], set()
        for p in placements:
            if p.key() not in self.rows and p.key() not in seen:
                new.append(p)
                seen.add(p.key())
        if new:
            results = []
            for r in self._run(new):
                results.append(r)
                self._bar.update(1)
            self._store(new, results)
        return self._mark(placements)

    def _run(self, new: list[Placement]):
        if self.scheduler is None and self.n_jobs == 1:
            return (self.objective(p) for p in new)
        if self.scheduler is None:
            return Parallel(n_jobs=self.n_jobs, return_as="generator")(delayed(self.objective)(p) for p in new)
        from joblib import parallel_config

        client = self.client()
        if self._objective_future is None:  # sent to every worker once; hash=False: dask/distributed#3703
            self._objective_future = client.scatter(self.objective, broadcast=True, hash=False)
        with parallel_config(backend="dask", n_jobs=-1 if self.n_jobs == 1 else self.n_jobs, client=client):
            return list(Parallel()(delayed(_call)(self._objective_future, p) for p in new))

    def client(self):
        """The ``distributed.Client`` of ``scheduler`` (connected once; closed by :meth:`close` if made here)."""
        if self._client is None:
            try:
                from distributed import Client
            except ImportError:
                raise ImportError(_NO_DISTRIBUTED) from None
            if isinstance(self.scheduler, Client):
                self._client = self.scheduler
            else:
                self._client = connect_scheduler(self.scheduler, self.connect_timeout)
                self._own_client = True
        return self._client

    def record(self, placements: list[Placement], results: list[dict]) -> list[dict]:
        """Rows scored elsewhere (a resumed study's stored metrics), kept as if scored here; the objective is
        not called. A placement already scored keeps its row."""
        fresh = {}
        for p, r in zip(placements, results):
            if p.key() not in self.rows:
                fresh.setdefault(p.key(), (p, r))
        self._store([p for p, _ in fresh.values()], [r for _, r in fresh.values()])
        return self._mark(placements)

    def _store(self, placements: list[Placement], results: list[dict]) -> None:
        for p, r in zip(placements, results):
            missing = {"accuracy_%", "mean_ms"} - set(r)
            if missing:
                raise ValueError(f"the objective must return accuracy_% and mean_ms; missing {sorted(missing)}")
            self.rows[p.key()] = {"placement": p, "describe": p.describe(), "_order": len(self.rows),
                                  "candidate": False, **r}

    def _mark(self, placements: list[Placement]) -> list[dict]:
        if self.proposing:
            for p in placements:
                self.rows[p.key()]["candidate"] = True
        return [self.rows[p.key()] for p in placements]

    def close(self) -> None:
        self._bar.close()
        if self._own_client and self._client is not None:
            self._client.close()
        self._client, self._own_client, self._objective_future = None, False, None


def non_dominated(mean_ms, accuracy) -> np.ndarray:
    """Per point, whether no other point is at least as fast and as accurate and strictly better in one
    (lower ``mean_ms``, higher ``accuracy`` are better; equal points are all kept). O(n log n)."""
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
    cluster (``scheduler``: its address or a ``distributed.Client``; see :class:`Evaluator`)."""
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


@dataclass
class SearchContext:
    space: SearchSpace
    score: Evaluator
    constraint: Constraint
    full_acc: float
    rng: np.random.Generator

    def best(self, rows: list[dict]) -> dict:
        return min(rows, key=lambda r: self.constraint.key(r, self.full_acc))


def make_placement(space: SearchSpace, choice: list, jump: Gate | None = None, thresholds=None) -> Placement:
    kept = tuple(c is not False for c in choice) + (True,)
    gates = tuple(c if isinstance(c, Gate) else None for c in choice) + (None,)
    return Placement(kept, gates, jump, None if thresholds is None else tuple(thresholds))


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
    out += [(list(choice), j) for j in [None, *space.jump_options] if j != jump]
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
    singles += [([None] * (k - 1), j) for j in space.jump_options]
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
    return [(list(c), j) for c in itertools.product(*opts) for j in [None, *space.jump_options]]


@STRATEGIES.register("exhaustive", doc=f"every placement (refused above {EXHAUSTIVE_LIMIT} candidates)")
def _exhaustive(ctx: SearchContext, limit: int = EXHAUSTIVE_LIMIT) -> None:
    ctx.score([make_placement(ctx.space, c, j) for c, j in all_structures(ctx.space, limit)])


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
            structures.append(([g if g is not None else (None if kp else False)
                                for kp, g in zip(p.kept[:-1], p.gates[:-1])], p.jump))
    ctx.score([make_placement(ctx.space, c, j, t) for t in threshold_options for c, j in structures])


def list_strategies() -> list[str]:
    return STRATEGIES.names()


__all__ = ["CONNECT_TIMEOUT", "Constraint", "EXHAUSTIVE_LIMIT", "Evaluator", "Objective", "STRATEGIES", "SearchContext",
           "SearchResult", "all_structures", "connect_scheduler", "list_strategies", "make_placement", "non_dominated",
           "search"]
