"""Segment costs in the runtime's own context.

Segments timed one by one in a warm loop (:func:`branchy.runtime.profile_segments`) are not what the real runtime
pays along a path: a head right after its stage finds the activation hot, the runtime's control flow sits between
segments, allocation differs. Here the real runtime (:class:`branchy.runtime.EarlyExitRuntime`) runs with forced
decisions along every kind of path (the plain network; leave at exit ``e`` with nothing else entered; enter exit
``i`` and go on; every side exit entered; ...), interleaved in rounds, each call timed alone as a real run times a
sample. A path's time is linear in what it ran (docs/semantics.md §3.3)::

    a_0 = sample_ms + S_0,   S_k (0 < k < K-1),   tail = S_{K-1} + E_{K-1},   h_k = W_k + E_k + decision_ms,   R_k

and the segment-alone costs are corrected by the least relative change that makes them reproduce the path times
(bounded least squares; the directions path times cannot tell apart, e.g. ``a_0 + d, h_0 - d, S_1 - d, R_0 + d``,
keep the segment-alone split). Every path the runtime can take is a sum of these forced paths, so the corrected
costs reproduce them all. Units: ms per sample at batch 1."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core import show_progress


def param_names(k: int) -> list[str]:
    """Names of the path parameters for ``k`` exits (see the module docstring)."""
    return (["a0"] + [f"S{i}" for i in range(1, k - 1)] + ["tail"] + [f"h{i}" for i in range(k - 1)]
            + [f"R{i}" for i in range(k - 1)])


def path_row(k: int, exit_: int, entered: set[int]) -> np.ndarray:
    """How many times each parameter of :func:`param_names` is paid on the path that leaves at ``exit_`` having
    entered the side exits ``entered`` (``exit_`` itself among them when it is a side exit)."""
    names = param_names(k)
    row = np.zeros(len(names))
    row[0] = 1.0
    for i in range(1, min(exit_, k - 2) + 1):
        row[names.index(f"S{i}")] = 1.0
    if exit_ == k - 1:
        row[names.index("tail")] = 1.0
    for i in entered:
        if i < k - 1:
            row[names.index(f"h{i}")] = 1.0
            if i != exit_:
                row[names.index(f"R{i}")] = 1.0
    return row


@dataclass(frozen=True)
class ForcedPath:
    """A runtime configuration whose every sample takes one known path: ``kept`` exits, per side exit
    ``leave`` (True: always leave when entered; False: never)."""

    name: str
    kept: tuple[bool, ...]
    leave: tuple[bool, ...]
    exit: int
    entered: frozenset[int]


def forced_paths(k: int, chained: bool = False) -> list[ForcedPath]:
    """Forced paths whose rows span every path the runtime can take: the plain network, leave at each side exit
    with nothing else entered, enter each side exit and go on, every side exit entered (none taken), and the
    cascade leaving at each side exit. Chained exits keep every exit (their runtime refuses fewer): the cascade
    leaving at each exit."""
    out = []
    never = (False,) * (k - 1)
    allk = (True,) * k
    if chained:
        for e in range(k):
            leave = tuple(i == e for i in range(k - 1))
            out.append(ForcedPath(f"cascade{e}" if e < k - 1 else "vain", allk, leave, e, frozenset(range(min(e + 1, k - 1)))))
        return out
    only = lambda *ex: tuple(i in ex or i == k - 1 for i in range(k))  # noqa: E731
    out.append(ForcedPath("full", only(), never, k - 1, frozenset()))
    for e in range(k - 1):
        out.append(ForcedPath(f"leave{e}", only(e), tuple(i == e for i in range(k - 1)), e, frozenset({e})))
    for i in range(k - 1):
        out.append(ForcedPath(f"pass{i}", only(i), never, k - 1, frozenset({i})))
    if k > 2:
        out.append(ForcedPath("vain", allk, never, k - 1, frozenset(range(k - 1))))
        for e in range(1, k - 1):
            out.append(ForcedPath(f"cascade{e}", allk, tuple(i == e for i in range(k - 1)), e, frozenset(range(e + 1))))
    return out


def prior_params(table: pd.DataFrame, overhead: dict | None, k: int) -> np.ndarray:
    """The path parameters implied by a segment-alone cost table (``ms_b1``, buffer rows for write and read)."""
    def vec(seg):
        return table[table.segment == seg].sort_values("k")["ms_b1"].to_numpy(dtype=float)

    s, e, b = vec("stage"), vec("exit"), vec("buffer")
    ov = overhead or {}
    sample, dec = float(ov.get("sample_ms") or 0.0), float(ov.get("decision_ms") or 0.0)
    return np.array([sample + s[0]] + [s[i] for i in range(1, k - 1)] + [s[-1] + e[-1]]
                    + [b[i] + e[i] + dec for i in range(k - 1)] + [b[i] for i in range(k - 1)])


def fit_in_context(x: np.ndarray, y: np.ndarray, prior: np.ndarray, *, ridge: float = 1e-4) -> np.ndarray:
    """Parameters ``theta >= 0`` with ``x @ theta`` close to the path times ``y`` (ms; relative errors weighed alike)
    by the least relative change from ``prior``: ``theta = prior * (1 + u)``, least squares of the weighted
    residuals plus ``ridge * |u|^2``, ``-0.9 <= u <= 9`` (in context a segment costs between a tenth and ten times
    its time alone: a noisy path time cannot make it free). Directions the paths do not identify keep the prior."""
    from scipy.optimize import lsq_linear

    x, y, prior = (np.asarray(v, dtype=float) for v in (x, y, prior))
    if not (np.isfinite(y).all() and (y > 0).all()):
        raise ValueError(f"path times must be finite and > 0 ms, got {y}")
    d = np.maximum(prior, 1e-4 * max(float(prior.max()), 1e-6))  # a zero prior still gets a scale
    w = 1.0 / y
    a = np.vstack([(x * d) * w[:, None], np.sqrt(ridge) * np.eye(len(d))])
    b = np.concatenate([(y - x @ d) * w, np.zeros(len(d))])
    u = lsq_linear(a, b, bounds=(-0.9, 9.0)).x
    return d * (1.0 + u)


def apply_params(table: pd.DataFrame, overhead: dict | None, theta: np.ndarray, k: int) -> tuple[pd.DataFrame, dict]:
    """The cost table and overhead record with ``ms_b1`` replaced by the in-context costs ``theta`` (each parameter's
    parts scaled by its ratio to the segment-alone value; the runtime's ``decision_ms`` folded into each side exit's
    head, so it is 0 in the record and kept as ``decision_ms_alone``): the segment-alone times move to
    ``ms_b1_alone``, a buffer's read cost goes to ``ms_b1_read`` (its write stays in ``ms_b1``)."""
    t = table.copy()
    t["ms_b1_alone"] = t["ms_b1"]
    t["ms_b1_read"] = np.where(t.segment == "buffer", t["ms_b1"], np.nan)
    ov = dict(overhead or {})
    p = dict(zip(param_names(k), theta))
    q = dict(zip(param_names(k), prior_params(table, overhead, k)))

    def idx(seg, i):
        return t.index[(t.segment == seg) & (t.k == i)][0]

    def scale(name, parts):  # parts: (setter, value); each part scaled by the parameter's ratio (all stay > 0)
        r = p[name] / q[name] if q[name] > 0 else 1.0
        extra = (p[name] - q[name]) / len(parts) if q[name] <= 0 else 0.0
        for set_, v in parts:
            set_(max(0.0, v * r + extra))

    def cell(seg, i, col="ms_b1"):
        j = idx(seg, i)

        def set_(v, j=j, col=col):
            t.at[j, col] = v
        return set_, float(t.at[j, col])

    sample, dec = float(ov.get("sample_ms") or 0.0), float(ov.get("decision_ms") or 0.0)
    parts = [cell("stage", 0)]
    if sample > 0:
        parts.append((lambda v: ov.__setitem__("sample_ms", v), sample))
    scale("a0", parts)
    for i in range(1, k - 1):
        scale(f"S{i}", [cell("stage", i)])
    scale("tail", [cell("stage", k - 1), cell("exit", k - 1)])
    for i in range(k - 1):  # the runtime's decision is paid with the head: folded into it, scaled alike
        set_e, e = cell("exit", i)
        scale(f"h{i}", [cell("buffer", i), (set_e, e + dec)])
        scale(f"R{i}", [cell("buffer", i, "ms_b1_read")])
    ov["decision_ms"] = 0.0
    if overhead:
        ov["sample_ms_alone"] = float(overhead.get("sample_ms") or 0.0)
        ov["decision_ms_alone"] = dec
    return t, ov


def sample_inputs(splits, n: int = 8) -> torch.Tensor | None:
    """The first ``n`` test images of ``splits`` (distinct inputs for timing the runtime's paths as a real run meets
    them); None without test images (random images then)."""
    ds = splits["test"]
    return ds.batch(torch.arange(min(n, len(ds))))[0] if len(ds) else None


@torch.no_grad()
def time_paths(model, *, backend: str = "eager", segments: tuple | None = None, samples: int = 60, reps: int = 3,
               seed: int = 0, inputs: torch.Tensor | None = None, progress: bool = True) -> pd.DataFrame:
    """ms the real runtime takes along every :func:`forced_paths` configuration at batch 1, timed as a real run
    is (``branchy validate``): per sample, every path once in a shuffled order, each call timed alone; ``reps``
    passes, the median kept per sample. ``samples`` inputs cycle through ``inputs`` ``[N, C, H, W]`` (default
    random images). Returns ``[samples, paths]`` ms (their mean over samples is what a run's mean sees).
    ``progress``: a bar over the ``reps * samples`` timed samples."""
    import time

    from .backends import prepare
    from .engine import EarlyExitRuntime

    model = model.cpu().eval()
    segs = segments if segments is not None else prepare(model, backend)
    k, c = model.num_exits, model.config
    shape = (c.in_channels, *c.image_size)
    ok = inputs is not None and len(inputs) and tuple(inputs.shape[1:]) == shape  # else random images do
    xs = inputs.cpu().float() if ok else torch.randn(8, *shape)
    xs = [xs[i % len(xs)][None].clone() for i in range(samples)]
    rts = {}
    for fp in forced_paths(k, model.chained):
        t = [float("inf") if leave else float("-inf") for leave in fp.leave]  # entropy < +inf: always leave
        rts[fp.name] = EarlyExitRuntime(model, t, kept=list(fp.kept), segments=segs)
    names = list(rts)
    for rt in rts.values():  # warm up
        for x in xs[:5]:
            rt(x)
    g = np.random.default_rng(seed)
    out = np.zeros((reps, samples, len(names)))
    with tqdm(total=reps * samples, desc="paths", unit="sample", disable=not show_progress(progress)) as bar:
        for r in range(reps):
            for i, x in enumerate(xs):
                for j in g.permutation(len(names)):
                    t0 = time.perf_counter()
                    rts[names[j]](x)
                    out[r, i, j] = (time.perf_counter() - t0) * 1e3
                bar.update(1)
    return pd.DataFrame(np.median(out, 0), columns=names)


def in_context_costs(model, table: pd.DataFrame, overhead: dict | None, *, backend: str = "eager",
                     samples: int = 60, reps: int = 3, seed: int = 0, inputs: torch.Tensor | None = None,
                     progress: bool = True) -> tuple[pd.DataFrame, dict, dict]:
    """The segment-alone cost ``table`` and ``overhead`` corrected to the runtime's path times
    (:func:`time_paths`, :func:`fit_in_context`, :func:`apply_params`), and a record of the fit: per forced path
    its measured ms (mean over samples), fitted ms, segment-alone ms and spread (IQR / median over samples), and
    the worst relative residual. ``progress``: a bar over the timed samples."""
    k = model.num_exits
    times = time_paths(model, backend=backend, samples=samples, reps=reps, seed=seed, inputs=inputs,
                       progress=progress)
    paths = forced_paths(k, model.chained)
    x = np.stack([path_row(k, fp.exit, set(fp.entered)) for fp in paths])
    y = times[[fp.name for fp in paths]].mean().to_numpy()
    q1, q3 = np.percentile(times, [25, 75], axis=0)
    spread = dict(zip(times.columns, (q3 - q1) / np.maximum(np.median(times, 0), 1e-12)))
    prior = prior_params(table, overhead, k)
    theta = fit_in_context(x, y, prior)
    new, ov = apply_params(table, overhead, theta, k)
    fitted = x @ theta
    record = {"paths": {fp.name: {"ms": round(float(m), 6), "fit_ms": round(float(f), 6),
                                  "alone_ms": round(float(a), 6), "spread": round(float(spread[fp.name]), 4)}
                        for fp, m, f, a in zip(paths, y, fitted, x @ prior)},
              "worst_rel_residual": round(float(np.max(np.abs(fitted / y - 1))), 5),
              "alone_vs_paths": round(float(np.max(np.abs((x @ prior) / y - 1))), 5),
              "samples": samples, "reps": reps, "backend": backend}
    return new, ov, record


__all__ = ["ForcedPath", "apply_params", "fit_in_context", "forced_paths", "in_context_costs", "param_names",
           "path_row", "prior_params", "sample_inputs", "time_paths"]
