"""Threshold sweeps and Pareto fronts. The cascade's latency depends only on the exit a sample
takes, so a sweep needs one pass over the confidences per setting, not a per-sample cost sum."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .costs import CostModel


def cascade_exit_latency(costs: CostModel, kept=None) -> np.ndarray:
    """``[K]`` ms of leaving at each exit under the cascade (every kept side exit before it entered)."""
    k = costs.num_exits
    kept = np.ones(k, bool) if kept is None else np.asarray(kept, bool)
    S, E, W, R = costs.stage_ms, costs.exit_ms, costs.write_ms, costs.read_ms
    d = costs.decision_ms
    through = np.where(kept[: k - 1], W[: k - 1] + E[: k - 1] + R[: k - 1] + d, 0.0)
    before = np.concatenate([[0.0], np.cumsum(through)])  # cost of kept side exits passed before exit e
    leave = np.append(W[: k - 1] + E[: k - 1] + d, E[-1])
    return np.cumsum(S) + before + leave + costs.sample_ms


def cascade_exit_macs(costs: CostModel, kept=None) -> np.ndarray:
    k = costs.num_exits
    kept = np.ones(k, bool) if kept is None else np.asarray(kept, bool)
    em = np.where(kept, costs.exit_macs, 0.0)
    return np.cumsum(costs.stage_macs) + np.concatenate([[0.0], np.cumsum(em[: k - 1])]) + costs.exit_macs


def sweep_counts(conf: np.ndarray, correct: np.ndarray, grid: np.ndarray, *, lower_is_confident: bool = True,
                 kept=None) -> tuple[np.ndarray, np.ndarray]:
    """For every threshold setting in ``grid`` ``[S, K]``: how many samples leave at each exit ``[S, K]`` and how
    many of them are right ``[S]`` under the cascade. Counts add up over chunks of samples."""
    conf = np.asarray(conf)
    n, k = conf.shape
    grid = np.atleast_2d(np.asarray(grid, dtype=conf.dtype if conf.dtype.kind == "f" else float))
    if grid.shape[1] != k or np.shape(correct) != conf.shape:
        raise ValueError(f"grid must be [S, K={k}] and correct [N, K] like conf; got {grid.shape}, "
                         f"{np.shape(correct)}")
    kept = np.ones(k, bool) if kept is None else np.asarray(kept, bool)
    conf_t = np.ascontiguousarray(conf.T)  # [K, N]: one contiguous row per exit
    corr_t = np.ascontiguousarray(np.asarray(correct, bool).T)
    side = np.nonzero(kept[: k - 1])[0]
    undecided, ok, hit = np.empty(n, bool), np.empty(n, bool), np.empty(n, bool)
    counts, right = np.zeros((len(grid), k), np.int64), np.zeros(len(grid), np.int64)
    for s, t in enumerate(grid):
        undecided.fill(True)
        for i in side:  # who leaves at exit i: confident there and undecided so far
            if lower_is_confident:
                np.less(conf_t[i], t[i], out=ok)
            else:
                np.greater(conf_t[i], t[i], out=ok)
            np.logical_and(ok, undecided, out=hit)
            counts[s, i] = np.count_nonzero(hit)
            right[s] += np.count_nonzero(np.logical_and(hit, corr_t[i], out=hit))
            np.logical_and(undecided, np.logical_not(ok, out=ok), out=undecided)
        counts[s, k - 1] = np.count_nonzero(undecided)
        right[s] += np.count_nonzero(np.logical_and(undecided, corr_t[k - 1], out=hit))
    return counts, right


def sweep_table(counts: np.ndarray, right: np.ndarray, costs: CostModel, *, kept=None) -> pd.DataFrame:
    """Accuracy (%), mean and p95 latency (ms), mean MACs and the exit distribution (%) per setting, from
    :func:`sweep_counts` (the cascade's latency depends only on the exit taken, so counts say everything)."""
    k = costs.num_exits
    kept = np.ones(k, bool) if kept is None else np.asarray(kept, bool)
    lat, macs = cascade_exit_latency(costs, kept), cascade_exit_macs(costs, kept)
    order = np.argsort(lat, kind="stable")
    rows = []
    for c, r in zip(counts, right):
        n = int(c.sum())
        cum = np.cumsum(c[order])
        p95 = lat[order][np.searchsorted(cum, 0.95 * n)]  # inverted CDF
        rows.append({"accuracy_%": 100 * r / n, "mean_ms": float(c @ lat) / n, "p95_ms": float(p95),
                     "mean_MACs": float(c @ macs) / n, **{f"exit{i}_%": 100 * c[i] / n for i in range(k)}})
    return pd.DataFrame(rows)


def sweep_cascade(conf: np.ndarray, correct: np.ndarray, costs: CostModel, grid: np.ndarray, *,
                  lower_is_confident: bool = True, kept=None) -> pd.DataFrame:
    """Accuracy (%), mean and p95 latency (ms) and mean MACs of the cascade for every threshold setting
    in ``grid`` ``[S, K]``. ``conf`` ``[N, K]``; ``correct`` ``[N, K]`` bool."""
    counts, right = sweep_counts(conf, correct, grid, lower_is_confident=lower_is_confident, kept=kept)
    return sweep_table(counts, right, costs, kept=kept)


def sweep_cascade_cache(cache, split: str, costs: CostModel, grid: np.ndarray, *, measure: str = "entropy",
                        kept=None, chunk_rows: int = 1 << 16) -> pd.DataFrame:
    """:func:`sweep_cascade` over ``split`` of a cache, ``chunk_rows`` samples at a time (read, never all in
    memory): the same table for a split of any size."""
    from branchy.cache import row_slices
    from branchy.exits import ExitRule

    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    rule = ExitRule(measure, (np.inf,) * cache.num_exits)
    n, total = cache.size(split), None
    if not n:
        raise ValueError(f"split {split} of {cache.path} has no samples to sweep")
    for rows in row_slices(n, chunk_rows):
        z = cache.logits(split, rows=rows)
        correct = z.argmax(-1) == cache.labels(split, rows=rows)[:, None]
        part = sweep_counts(rule.confidence(z), correct, grid, lower_is_confident=rule.lower_is_confident, kept=kept)
        total = part if total is None else (total[0] + part[0], total[1] + part[1])
    return sweep_table(*total, costs, kept=kept)


def pareto_front(df: pd.DataFrame, x: str = "mean_ms", y: str = "accuracy_%") -> pd.DataFrame:
    """Rows not dominated (lower ``x`` and higher ``y`` are better), sorted by ``x``."""
    d = df.sort_values([x, y], ascending=[True, False])
    best, keep = -np.inf, []
    for i, v in zip(d.index, d[y].to_numpy()):
        if v > best:
            keep.append(i)
            best = v
    return d.loc[keep]


__all__ = ["cascade_exit_latency", "cascade_exit_macs", "pareto_front", "sweep_cascade", "sweep_cascade_cache",
           "sweep_counts", "sweep_table"]
