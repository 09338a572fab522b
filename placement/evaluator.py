"""Scoring placements: each scored once (memoised) by the injected objective, in parallel through joblib, on
local processes or the workers of a Dask cluster (joblib's dask backend)."""
from __future__ import annotations

from typing import Callable

import numpy as np
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from branchy.core import MissingExtraError, extra_hint, show_progress

from .placement import Placement

__all__ = ["CONNECT_TIMEOUT", "Evaluator", "Objective", "connect_scheduler"]

Objective = Callable[[Placement], dict]


def _call(objective: Objective, p: Placement) -> dict:
    return objective(p)


CONNECT_TIMEOUT = 10.0  # s: connecting to a Dask scheduler, handshake included
_NO_DISTRIBUTED = (f"scoring on a Dask cluster needs dask.distributed: {extra_hint('cluster')} "
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
        raise MissingExtraError(_NO_DISTRIBUTED) from None
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
        self._bar = tqdm(desc="placements", unit="cand", disable=not show_progress(progress))

    def __call__(self, placements: list[Placement]) -> list[dict]:
        new, seen = [], set()
        for p in placements:
            if p.key() not in self.rows and p.key() not in seen:
                new.append(p)
                seen.add(p.key())
        if new:
            self._bar.total = (self._bar.total or 0) + len(new)  # what is asked so far: each batch has its ETA
            self._bar.refresh()
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
                raise MissingExtraError(_NO_DISTRIBUTED) from None
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
