"""A guaranteed accuracy drop: the exit rule chosen by Learn-then-Test (:mod:`analysis.core.risk`) so that the
share of new samples that ``full`` gets right and the cascade gets wrong exceeds ``eps`` points with
probability at most ``delta`` (over the draw of calib).

The candidates must be fixed before calib is looked at, so they are a data-free family: one shared
normalised threshold λ for every side exit (entropy below λ·ln C; normalised entropy below λ; max-prob above
1 − λ(1 − 1/C); margin above 1 − λ), λ on a fixed grid from 0 (nothing leaves early: ``full``) upwards,
tested in that order (fixed-sequence testing); among the certified settings the one with the lowest calib
mean latency is chosen. When none is certified, the rule is ``full`` (nothing leaves early).

What it covers: the cascade under that rule, on data drawn like calib, the population risk (a finite test set
fluctuates around it). What it does not cover: gates' cuts and placement structures tuned afterwards on the
same calib, a shift between calib and deployment, the latency figures.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from branchy.exits import ExitRule

from .evidence import Evidence, cascade_outcome
from .risk import LTTResult, ltt_select, min_calib_size, paired_loss


def lambda_family(measure: str, num_classes: int, num_exits: int, n: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """``(λ [M], thresholds [M, K])``: the data-free candidate rules, safest first."""
    lam = np.linspace(0.0, 1.0, n + 1)
    if measure == "entropy":
        t = lam * np.log(num_classes)
    elif measure == "norm_entropy":
        t = lam.copy()
    elif measure == "max_prob":
        t = 1.0 - lam * (1.0 - 1.0 / num_classes)
    elif measure == "margin":
        t = 1.0 - lam
    else:
        raise ValueError(f"no risk-control family for measure {measure!r}")
    grid = np.repeat(t[:, None], num_exits, 1)
    grid[:, -1] = np.inf if measure in ("entropy", "norm_entropy") else -np.inf
    return lam, grid


@dataclass(frozen=True)
class RiskChoice:
    """The chosen rule, the LTT result over the family and a table of the candidates (calib)."""

    rule: ExitRule
    ltt: LTTResult
    table: pd.DataFrame


def risk_controlled_rule(ev: Evidence, eps_pts: float, delta: float, *, num_classes: int, n_grid: int = 100,
                         method: str = "binomial") -> RiskChoice:
    """Learn-then-Test over :func:`lambda_family` on the calib evidence ``ev``: ``eps_pts`` in accuracy
    points (0.5 = half a point), ``delta`` the allowed probability of exceeding it."""
    if ev.split == "test":
        raise ValueError("risk control is calibrated on calib; test only reports")
    k = ev.num_exits
    lam, grid = lambda_family(ev.measure, num_classes, k, n_grid)
    full_ok = ev.correct[:, -1]
    losses, lat = [], []
    for t in grid:
        o = cascade_outcome(ev, ExitRule(ev.measure, tuple(t)))
        losses.append(paired_loss(o.correct, full_ok))
        lat.append(o.latency_ms.mean())
    losses = np.asarray(losses)
    res = ltt_select(losses, np.asarray(lat), eps_pts / 100, delta, method)
    how = f"learn-then-test eps={eps_pts:g} pt delta={delta:g} ({method}, fixed sequence over λ)"
    if res.index is None:
        need = min_calib_size(eps_pts / 100, delta)
        warnings.warn("learn-then-test certified no setting: the rule is full (no early exit)"
                      + (f"; calib has {ev.n} samples, at least {need} are needed before anything can be certified "
                         f"at eps={eps_pts:g} pt, delta={delta:g}" if ev.n < need else ""), stacklevel=2)
        t = np.full(k, -np.inf if ev.measure in ("entropy", "norm_entropy") else np.inf)
        how += ": none certified, full"
    else:
        t = grid[res.index]
        how += f": λ={lam[res.index]:.3g}"
    rule = ExitRule(ev.measure, tuple(t), how, ev.split)
    table = pd.DataFrame({"lambda": lam, "threshold": grid[:, 0], "calib_paired_loss_%": 100 * losses.mean(1),
                          "calib_mean_ms": lat, "p_value": res.pvalues, "certified": res.certified})
    return RiskChoice(rule, res, table)


def point_estimate_rule(ev: Evidence, eps_pts: float, *, num_classes: int, n_grid: int = 100) -> ExitRule:
    """The naive choice over the same family: the cheapest λ whose *calib* paired loss is within ``eps``
    (what a point estimate promises; it breaks the promise on new data about half the time)."""
    k = ev.num_exits
    lam, grid = lambda_family(ev.measure, num_classes, k, n_grid)
    best, best_lat = grid[0], np.inf
    for t in grid:
        o = cascade_outcome(ev, ExitRule(ev.measure, tuple(t)))
        if paired_loss(o.correct, ev.correct[:, -1]).mean() <= eps_pts / 100 and o.latency_ms.mean() < best_lat:
            best, best_lat = t, o.latency_ms.mean()
    return ExitRule(ev.measure, tuple(best), f"point estimate eps={eps_pts:g} pt", ev.split)


__all__ = ["RiskChoice", "lambda_family", "point_estimate_rule", "risk_controlled_rule"]
