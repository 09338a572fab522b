"""Paired comparisons of two policies on the same test samples: the ratio of their mean latencies and the
difference of their accuracies, each with a paired bootstrap 95 % CI, and the non-inferiority test a claim uses."""
from __future__ import annotations

import numpy as np

__all__ = ["acc_diff_ci", "non_inferior", "ratio_ci"]


def ratio_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """mean(a) / mean(b) over the same samples, with a paired bootstrap 95 % CI. ``a`` and ``b`` are ``[N]``, or
    ``[R, N]``: the same samples' latencies under R independent cost tables (profilings), the first the one the
    decisions used. Then the point is the first table's ratio and every resample also draws a table (the same for
    ``a`` and ``b``), so the CI carries the costs' own spread as well as the samples'."""
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    if a.shape != b.shape:
        raise ValueError(f"ratio_ci: a {a.shape} and b {b.shape} must hold the same samples and tables")
    r = a[0].mean() / b[0].mean()
    if n_boot <= 0:
        return float(r), np.nan, np.nan
    rng = np.random.default_rng(seed)
    n_tab, n = a.shape
    idx = rng.integers(0, n, (n_boot, n))
    if n_tab == 1:
        rs = a[0][idx].mean(1) / b[0][idx].mean(1)
    else:
        tab = rng.integers(0, n_tab, n_boot)[:, None]
        rs = a[tab, idx].mean(1) / b[tab, idx].mean(1)
    return float(r), float(np.percentile(rs, 2.5)), float(np.percentile(rs, 97.5))


def acc_diff_ci(a: np.ndarray, b: np.ndarray, n_boot: int) -> tuple[float, float, float]:
    """Accuracy of ``a`` minus ``b`` (correctness ``[N]`` on the same samples) in points, paired bootstrap 95 % CI."""
    d = 100 * (np.asarray(a).astype(float) - np.asarray(b).astype(float))
    if n_boot <= 0:
        return float(d.mean()), np.nan, np.nan
    idx = np.random.default_rng(1).integers(0, len(d), (n_boot, len(d)))
    m = d[idx].mean(1)
    return float(d.mean()), float(np.percentile(m, 2.5)), float(np.percentile(m, 97.5))


def non_inferior(lo, point, eps: float) -> bool:
    """Non-inferior accuracy: the lower end of the paired 95 % CI of the accuracy difference (points) is at least
    ``-eps`` (the point estimate when no CI was drawn).

    Args:
        lo: the CI's lower end (points), or None / NaN when none was drawn.
        point: the difference's point estimate (points).
        eps: the accuracy a claim may give up (points, >= 0).

    >>> non_inferior(-0.3, 0.1, eps=0.5), non_inferior(-0.8, 0.1, eps=0.5), non_inferior(None, -0.2, eps=0.5)
    (True, False, True)
    """
    v = lo if lo is not None and np.isfinite(lo) else point
    return v is not None and bool(np.isfinite(v)) and v >= -eps - 1e-9
