"""Risk-controlled choice of an early-exit setting by Learn-then-Test (LTT).

Angelopoulos, Bates, Candès, Jordan, Lei (2021), "Learn then Test: Calibrating predictive algorithms to
achieve risk control"; used for early-exit language models by Schuster et al. (2022), "Confident Adaptive
Language Modeling".

Setting. A policy has ``M`` candidate settings (threshold vectors, placements, ...) ordered from the safest
(most like the full network) to the most aggressive (fastest). For candidate ``j`` and calib sample ``i`` the
*paired loss* ``L[j, i]`` is 1 when the full network answers sample ``i`` correctly and the candidate answers
it wrongly, else 0 (see :func:`paired_loss`). Its mean ``R_j = E[L_j]`` (a fraction of samples) bounds the
accuracy that the candidate loses against ``full`` from above: the drop is ``P(full right, cand wrong) -
P(full wrong, cand right) <= R_j``.

Guarantee. For each candidate LTT tests ``H0_j: R_j > eps`` with a valid p-value computed from ``n`` i.i.d.
calib losses, then walks the list in the given order (fixed-sequence testing) and rejects while
``p_j <= delta``, stopping at the first failure. The rejected ("certified") candidates satisfy, with
probability at least ``1 - delta`` over the draw of the calib set, ``R_j <= eps`` *all at once* (FWER control),
so any one chosen among them, here the cheapest, has true risk above ``eps`` with probability at most
``delta``. The guarantee is on the population risk (the expected paired loss on new data from the same
distribution), not on the empirical drop over a finite test set, which fluctuates around it.

Even with zero calib losses a candidate is certified only if ``(1 - eps) ** n <= delta``: see
:func:`min_calib_size`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

METHODS = ("binomial", "hoeffding-bentkus")


def _check_unit(name: str, x: float) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1), got {x!r}") from None
    if not (0.0 < v < 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be in (0, 1) (a fraction, e.g. 0.005 = 0.5 points), got {x!r}")
    return v


def _check_n(n) -> int:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (number of calib samples) must be a positive integer, got {n!r}")
    return int(n)


def binomial_pvalue(losses_sum, n: int, eps: float):
    """Exact p-value for ``H0: R > eps`` from ``losses_sum`` (number of losses equal to 1, an int or an
    array of ints in ``[0, n]``) out of ``n`` i.i.d. {0, 1} losses: ``P(Binom(n, eps) <= losses_sum)``.

    Valid because under ``H0`` the sum is stochastically larger than ``Binom(n, eps)``. Returns a float for
    a scalar input, else an array of the input's shape.
    """
    n = _check_n(n)
    eps = _check_unit("eps", eps)
    s = np.asarray(losses_sum)
    if s.dtype == bool or not np.issubdtype(s.dtype, np.number):
        raise ValueError(f"losses_sum must be integer counts, got dtype {s.dtype}")
    if np.isnan(s.astype(float)).any():
        raise ValueError("losses_sum contains NaN")
    if (s != np.round(s)).any() or (s < 0).any() or (s > n).any():
        raise ValueError(f"losses_sum must hold integers in [0, n={n}]")
    p = np.minimum(binom.cdf(np.round(s).astype(np.int64), n, eps), 1.0)
    return float(p) if p.ndim == 0 else p


def _h1(a: np.ndarray, b: float) -> np.ndarray:
    """Bernoulli KL divergence ``a log(a/b) + (1-a) log((1-a)/(1-b))`` with ``0 log 0 = 0`` (``a <= b < 1``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0) / b), 0.0)
        t2 = (1 - a) * np.log((1 - a) / (1 - b))
    return t1 + t2


def hoeffding_bentkus_pvalue(mean_loss, n: int, eps: float):
    """Hoeffding-Bentkus p-value for ``H0: R > eps`` from the mean ``mean_loss`` (a float or array in
    ``[0, 1]``) of ``n`` i.i.d. losses bounded in ``[0, 1]`` (not only {0, 1}), as in the LTT paper:
    ``min(exp(-n h1(min(r, eps), eps)), e * P(Binom(n, eps) <= ceil(n r)))``, clipped to at most 1.

    Never smaller than :func:`binomial_pvalue` on {0, 1} losses (so less powerful there), but valid for
    any loss in ``[0, 1]``. Returns a float for a scalar input, else an array.
    """
    n = _check_n(n)
    eps = _check_unit("eps", eps)
    r = np.asarray(mean_loss, dtype=float)
    if np.isnan(r).any():
        raise ValueError("mean_loss contains NaN")
    if (r < 0).any() or (r > 1).any():
        raise ValueError("mean_loss must be in [0, 1] (losses bounded in [0, 1])")
    hoeffding = np.exp(-n * _h1(np.minimum(r, eps), eps))
    # round away float noise first: n * (k / n) must give k, not k + 1e-13 (whose ceiling is k + 1)
    k = np.ceil(np.round(n * r, 9)).astype(np.int64)
    bentkus = math.e * binom.cdf(k, n, eps)
    p = np.minimum(np.minimum(hoeffding, bentkus), 1.0)
    return float(p) if p.ndim == 0 else p


def fixed_sequence(pvalues, delta: float) -> int:
    """Fixed-sequence testing: the number ``m`` of leading hypotheses rejected, i.e. the largest ``m``
    with ``p[0..m-1] <= delta`` (stops at the first ``p > delta``; a NaN p-value counts as a failure).
    Controls the family-wise error rate at ``delta`` when the order is fixed before seeing the data."""
    delta = _check_unit("delta", delta)
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-D, got shape {p.shape}")
    fail = ~(p <= delta)
    return int(np.argmax(fail)) if fail.any() else int(p.size)


def min_calib_size(eps: float, delta: float) -> int:
    """Smallest number of calib samples with which a candidate with zero calib losses can be certified by
    the binomial test: the least ``n`` with ``(1 - eps) ** n <= delta`` (e.g. 460 for eps=0.005, delta=0.1)."""
    eps = _check_unit("eps", eps)
    delta = _check_unit("delta", delta)
    n = max(1, math.ceil(math.log(delta) / math.log1p(-eps)))
    while n > 1 and (1 - eps) ** (n - 1) <= delta:  # guard against float rounding in the ratio
        n -= 1
    while (1 - eps) ** n > delta:
        n += 1
    return n


@dataclass(frozen=True, eq=False)
class LTTResult:
    """Outcome of :func:`ltt_select`.

    ``index``: the chosen candidate (the cheapest certified one, ties to the earlier, i.e. safer, one), or
    ``None`` when none is certified (fall back to ``full``). ``certified``: bool [M], the leading candidates
    rejected by fixed-sequence testing. ``pvalues``: [M] p-values for ``H0_j: R_j > eps``.
    ``empirical_risk``: [M] mean calib paired loss (fraction). ``eps``, ``delta``: the risk level (fraction)
    and error probability. ``method``: the p-value used. ``n``: number of calib samples.
    """

    index: int | None
    certified: np.ndarray
    pvalues: np.ndarray
    eps: float
    delta: float
    method: str
    n: int
    empirical_risk: np.ndarray

    @property
    def n_certified(self) -> int:
        """Number of certified candidates (a prefix of the list)."""
        return int(self.certified.sum())


def _as_01(name: str, x, ndims: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name} must be {want}, got shape {a.shape}")
    if a.dtype == bool:
        return a
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name} must be bool or 0/1 numbers, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating) and np.isnan(a).any():
        raise ValueError(f"{name} contains NaN")
    if not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must contain only 0/1 values")
    return a.astype(bool)


def paired_loss(correct_policy, correct_full) -> np.ndarray:
    """Paired loss: 1 where ``full`` is right and the policy is wrong, else 0 (samples that ``full`` gets
    wrong never count). ``correct_policy``: bool/0-1 [N] or [M, N]; ``correct_full``: bool/0-1 [N].
    Returns uint8 of the shape of ``correct_policy``; its mean is an upper bound on the accuracy drop
    (fraction) against ``full``."""
    pol = _as_01("correct_policy", correct_policy, (1, 2))
    full = _as_01("correct_full", correct_full, (1,))
    if pol.shape[-1] != full.shape[0]:
        raise ValueError(f"correct_policy has {pol.shape[-1]} samples but correct_full has {full.shape[0]}")
    return (full & ~pol).astype(np.uint8)


def ltt_select(losses: np.ndarray, costs, eps: float, delta: float, method: str = "binomial") -> LTTResult:
    """Learn-then-Test choice among candidates ordered safest first.

    ``losses``: bool/0-1 [M, N], paired losses of ``M`` candidates on ``N`` calib samples (see
    :func:`paired_loss`). ``costs``: [M] finite costs in any unit (e.g. mean ms or MACs); the lowest-cost
    certified candidate is chosen. ``eps``: tolerated risk (fraction of samples, e.g. 0.005 = 0.5 accuracy
    points); ``delta``: allowed probability that the chosen candidate's true risk exceeds ``eps``.
    ``method``: ``"binomial"`` (exact, for {0, 1} losses) or ``"hoeffding-bentkus"``.
    """
    eps = _check_unit("eps", eps)
    delta = _check_unit("delta", delta)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    L = _as_01("losses", losses, (2,))
    m, n = L.shape
    if m == 0:
        raise ValueError("losses has no candidates (M = 0)")
    if n == 0:
        raise ValueError("losses has no calib samples (N = 0)")
    c = np.asarray(costs, dtype=float)
    if c.shape != (m,):
        raise ValueError(f"costs must have shape ({m},) (one per candidate), got {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("costs must be finite (no NaN or inf)")

    sums = L.sum(axis=1)
    risk = sums / n
    if method == "binomial":
        p = np.asarray(binomial_pvalue(sums, n, eps), dtype=float)
    else:
        p = np.asarray(hoeffding_bentkus_pvalue(risk, n, eps), dtype=float)
    k = fixed_sequence(p, delta)
    certified = np.arange(m) < k
    index = int(np.argmin(c[:k])) if k else None  # argmin returns the first of tied minima: the safer one
    for a in (certified, p, risk):
        a.setflags(write=False)
    return LTTResult(index=index, certified=certified, pvalues=p, eps=eps, delta=delta, method=method, n=n,
                     empirical_risk=risk)


__all__ = ["LTTResult", "METHODS", "binomial_pvalue", "fixed_sequence", "hoeffding_bentkus_pvalue", "ltt_select",
           "min_calib_size", "paired_loss"]
