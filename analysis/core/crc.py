"""Conformal risk control (CRC): a mean-risk bound for choosing an early-exit setting, offered beside
Learn-then-Test (:mod:`analysis.core.risk`).

Angelopoulos, Bates, Fisch, Lei, Schuster (2022), "Conformal Risk Control" (ICLR 2024).

Setting (as in :mod:`analysis.core.risk`). ``M`` candidate settings are ordered from the safest (most like
the full network) to the most aggressive (fastest). ``L[j, i]`` is the loss of candidate ``j`` on calib
sample ``i``, in ``[0, B]``; for early exits it is the paired loss of :func:`analysis.core.risk.paired_loss`
(1 when ``full`` is right and the candidate wrong, else 0; ``B = 1``), so risks are fractions of samples.

Rule. With ``n`` calib samples the *adjusted risk* of candidate ``j`` is
``(n / (n + 1)) * Rhat_j + B / (n + 1) = (sum_i L[j, i] + B) / (n + 1)``. Scanning from the safest, every
candidate up to the first with adjusted risk above ``eps`` is certified; the chosen one is the cheapest
certified (normally the last, the most aggressive). If even the safest violates, nothing is chosen (fall
back to ``full``). Even with zero calib losses a candidate is certified only if ``B / (n + 1) <= eps``: see
:func:`crc_min_calib_size`.

What it controls, unlike LTT. CRC bounds the *expected* loss: ``E[L_test(j_hat)] <= eps``, the expectation
taken over the calib set and a new test sample together (exchangeable with the calib ones). It is a
mean-risk bound, *not* a high-probability one: for a given calib set the chosen candidate's true risk may
well exceed ``eps`` (roughly half the time when the bound is tight). LTT instead bounds the probability,
over the draw of the calib set, that the chosen candidate's true risk exceeds ``eps`` by ``delta``.
CRC is less conservative (certifies more aggressive settings at the same ``eps``), LTT's promise is stronger.

Validity needs the losses of every sample to be non-decreasing along the list (``L[j, i] <= L[j + 1, i]``):
the proof compares the chosen candidate with a safer-or-equal one per sample. Paired losses of cascades
need not be monotone per sample (an earlier exit may be right where a later one is wrong). With
``monotonize=True`` each sample's losses are replaced by their running maximum along the list (the CRC
paper's fix for non-monotone losses), which restores the guarantee for the original loss at some cost in
aggressiveness. :attr:`CRCResult.per_sample_monotone` says whether the calib losses were monotone as given.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _check_bound(bound) -> float:
    try:
        b = float(bound)
    except (TypeError, ValueError):
        raise ValueError(f"bound must be a positive finite number, got {bound!r}") from None
    if not (math.isfinite(b) and b > 0):
        raise ValueError(f"bound must be a positive finite number (largest possible loss), got {bound!r}")
    return b


def _check_eps(eps, bound: float) -> float:
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"eps must be a number in (0, bound={bound:g}), got {eps!r}") from None
    if not (0.0 < e < bound):  # also rejects NaN
        raise ValueError(f"eps must be in (0, bound={bound:g}) (a mean loss, e.g. 0.005 = 0.5 points), got {eps!r}")
    return e


def crc_min_calib_size(eps: float, bound: float = 1.0) -> int:
    """Smallest number of calib samples with which a candidate with zero calib losses can be certified by
    CRC: the least ``n`` with ``bound / (n + 1) <= eps`` (e.g. 199 for eps=0.005, bound=1)."""
    b = _check_bound(bound)
    e = _check_eps(eps, b)
    n = max(1, math.ceil(b / e) - 1)
    while n > 1 and b / n <= e:  # guard against float rounding in the ratio
        n -= 1
    while b / (n + 1) > e:
        n += 1
    return n


@dataclass(frozen=True, eq=False)
class CRCResult:
    """Outcome of :func:`crc_select`.

    ``index``: the chosen candidate (the cheapest certified one, ties to the earlier, i.e. safer, one), or
    ``None`` when even the safest candidate violates (fall back to ``full``; see :attr:`refused`).
    ``certified``: bool [M], the leading candidates up to the first violation. ``adjusted_risk``: [M]
    ``(sum_i L[j, i] + bound) / (n + 1)`` (same unit as the losses, a fraction for paired losses).
    ``empirical_risk``: [M] mean calib loss (after monotonizing, if asked). ``eps``: the mean-risk level;
    ``bound``: the largest possible loss ``B``; ``n``: number of calib samples. ``monotonized``: whether
    losses were replaced by their running maximum; ``per_sample_monotone``: whether the calib losses as given
    were non-decreasing along the list for every sample (the condition of the guarantee).
    """

    index: int | None
    certified: np.ndarray
    adjusted_risk: np.ndarray
    eps: float
    bound: float
    n: int
    empirical_risk: np.ndarray
    monotonized: bool
    per_sample_monotone: bool

    @property
    def n_certified(self) -> int:
        """Number of certified candidates (a prefix of the list)."""
        return int(self.certified.sum())

    @property
    def refused(self) -> bool:
        """True when no candidate is certified (even the safest violates ``eps``)."""
        return self.index is None


def crc_select(losses, costs, eps: float, bound: float = 1.0, *, monotonize: bool = False) -> CRCResult:
    """Conformal-risk-control choice among candidates ordered safest first (mean-risk bound
    ``E[L_test] <= eps``, not a high-probability one; see the module docstring).

    ``losses``: [M, N] losses in ``[0, bound]`` of ``M`` candidates on ``N`` calib samples (bool or numbers;
    e.g. :func:`analysis.core.risk.paired_loss`). ``costs``: [M] finite costs in any unit (e.g. mean ms or
    MACs); the lowest-cost certified candidate is chosen (any certified one keeps the guarantee under
    per-sample monotone losses). ``eps``: tolerated mean loss, in ``(0, bound)``. ``bound``: the largest
    possible loss ``B`` (1 for paired losses). ``monotonize``: replace each sample's losses by their running
    maximum along the list first, which makes the guarantee hold for non-monotone losses.
    """
    b = _check_bound(bound)
    e = _check_eps(eps, b)
    a = np.asarray(losses)
    if a.ndim != 2:
        raise ValueError(f"losses must be 2-D [candidates, calib samples], got shape {a.shape}")
    if a.dtype != bool and not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"losses must be bool or numbers, got dtype {a.dtype}")
    if np.iscomplexobj(a):
        raise ValueError("losses must be real numbers, got complex")
    L = a.astype(float)
    m, n = L.shape
    if m == 0:
        raise ValueError("losses has no candidates (M = 0)")
    if n == 0:
        raise ValueError("losses has no calib samples (N = 0)")
    if np.isnan(L).any():
        raise ValueError("losses contains NaN")
    if (L < 0).any() or (L > b).any():
        raise ValueError(f"losses must be in [0, bound={b:g}] (got min {L.min():g}, max {L.max():g})")
    c = np.asarray(costs, dtype=float)
    if c.shape != (m,):
        raise ValueError(f"costs must have shape ({m},) (one per candidate), got {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("costs must be finite (no NaN or inf)")

    per_sample_monotone = bool((np.diff(L, axis=0) >= 0).all())
    if monotonize:
        L = np.maximum.accumulate(L, axis=0)
    sums = L.sum(axis=1)
    adjusted = (sums + b) / (n + 1)
    risk = sums / n
    fail = ~(adjusted <= e)
    k = int(np.argmax(fail)) if fail.any() else m  # first violation ends the scan
    certified = np.arange(m) < k
    index = int(np.argmin(c[:k])) if k else None  # argmin returns the first of tied minima: the safer one
    for arr in (certified, adjusted, risk):
        arr.setflags(write=False)
    return CRCResult(index=index, certified=certified, adjusted_risk=adjusted, eps=e, bound=b, n=n,
                     empirical_risk=risk, monotonized=bool(monotonize), per_sample_monotone=per_sample_monotone)


__all__ = ["CRCResult", "crc_min_calib_size", "crc_select"]
