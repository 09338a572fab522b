"""Probability calibration of a gate's score: a monotone map fitted on the gate's out-of-fold probabilities on
calib against whether the sample leaves at the exit (scikit-learn's ``CalibratedClassifierCV(ensemble=False)``
recipe: cross-validated outputs fit the map, the refitted model's outputs go through it).

* ``sigmoid`` (Platt scaling on the logit): ``p' = 1 / (1 + exp(-(a * logit(p) + b)))``, strictly increasing
  (a > 0), so a cut tuned on the calibrated score separates exactly the samples the same tuned cut on the raw
  score does: calibration changes what the probability *means*, never which samples a tuned gate lets in;
* ``isotonic``: a non-decreasing piecewise-linear map (may merge close scores into ties).

A calibrated gate's probability 0.5 is the point where leaving and not leaving are equally likely, which a
gate trained with balanced class weights does not have. The map is stored as arrays (``cal_a``/``cal_b`` or
``cal_x``/``cal_y``) and runs in the runtime's torch gate as :class:`CalibrationMap`."""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch

from branchy.core import Registry

CALIBRATORS: Registry[Callable[[np.ndarray, np.ndarray], dict]] = Registry("calibration method")
_LO, _HI = np.finfo(np.float64).tiny, np.nextafter(1.0, 0.0)  # float64 resolution: distinct p stay distinct


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _LO, _HI)
    return np.log(p) - np.log1p(-p)


@CALIBRATORS.register("sigmoid", doc="Platt scaling on the logit of the gate probability (strictly monotone)")
def _fit_sigmoid(p: np.ndarray, y: np.ndarray) -> dict:
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e4, max_iter=1000).fit(_logit(p)[:, None], y)
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if not a > 0:  # the scores do not rank leaving samples higher: all the map can say is the base rate
        warnings.warn(f"Platt scaling found slope {a:.3g} <= 0: the out-of-fold scores carry no ranking of the "
                      f"samples that leave; the calibrated probability is their rate {np.mean(y):.3f}", stacklevel=3)
        a, b = 0.0, float(_logit(np.mean(y)))
    return {"cal_a": np.array(a), "cal_b": np.array(b)}


@CALIBRATORS.register("isotonic", doc="isotonic regression (non-decreasing, piecewise linear; may create ties)")
def _fit_isotonic(p: np.ndarray, y: np.ndarray) -> dict:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(p, y)
    return {"cal_x": np.asarray(iso.X_thresholds_, np.float64), "cal_y": np.asarray(iso.y_thresholds_, np.float64)}


def fit_calibration(method: str, p: np.ndarray, y: np.ndarray) -> dict:
    """The map's arrays, fitted on probabilities ``p`` ``[N]`` (out of fold) against 0/1 outcomes ``y`` ``[N]``."""
    p, y = np.asarray(p, dtype=np.float64).ravel(), np.asarray(y).astype(int).ravel()
    if p.shape != y.shape or not np.isfinite(p).all():
        raise ValueError(f"calibration needs finite probabilities and outcomes of one length, got {p.shape} and "
                         f"{y.shape}")
    if len(np.unique(y)) < 2:
        raise ValueError("calibration needs samples that leave and samples that do not; only one outcome here")
    return CALIBRATORS.get(method)(p, y)


def apply_calibration(cal: dict, p: np.ndarray) -> np.ndarray:
    """Calibrated probabilities of raw gate probabilities ``p`` under the map ``cal`` (from :func:`fit_calibration`)."""
    p = np.asarray(p, dtype=np.float64)
    if "cal_a" in cal:
        return 1.0 / (1.0 + np.exp(-(float(cal["cal_a"]) * _logit(p) + float(cal["cal_b"]))))
    if "cal_x" in cal:
        return np.interp(p, cal["cal_x"], cal["cal_y"])
    raise ValueError(f"not a calibration map: arrays {sorted(cal)}")


def check_calibration(cal: dict, where: str) -> dict:
    """``cal`` if it is a well-formed map (finite arrays of the right shapes), else ValueError naming ``where``."""
    keys = set(cal)
    ok = False
    if keys == {"cal_a", "cal_b"}:
        ok = all(np.ndim(cal[k]) == 0 and np.isfinite(cal[k]) for k in keys) and float(cal["cal_a"]) >= 0
    elif keys == {"cal_x", "cal_y"}:
        x, y = np.asarray(cal["cal_x"], np.float64), np.asarray(cal["cal_y"], np.float64)
        ok = (x.ndim == 1 and x.shape == y.shape and len(x) >= 1 and np.isfinite(x).all() and np.isfinite(y).all()
              and bool(np.all(np.diff(x) >= 0)) and bool(np.all(np.diff(y) >= 0)))
    if not ok:
        raise ValueError(f"{where}: damaged calibration map (arrays {sorted(keys)})")
    return cal


class CalibrationMap(torch.nn.Module):
    """:func:`apply_calibration` as a torch module (probabilities ``[B]`` in, calibrated ``[B]`` out), in
    elementwise ops only (the isotonic map as a sum of clamped linear pieces), so every backend can export it."""

    def __init__(self, cal: dict) -> None:
        super().__init__()
        self.sigmoid = "cal_a" in cal
        if self.sigmoid:
            self.a, self.b = float(cal["cal_a"]), float(cal["cal_b"])
        else:
            x, y = np.asarray(cal["cal_x"], np.float64), np.asarray(cal["cal_y"], np.float64)
            self.y0 = float(y[0])
            for k, v in (("lo", x[:-1]), ("hi", x[1:]), ("dy", np.diff(y))):  # float64: break points can be 1e-7 apart
                self.register_buffer(k, torch.as_tensor(v, dtype=torch.float64))

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        q = p.double()
        if self.sigmoid:
            q = q.clamp(float(_LO), float(_HI))
            return torch.sigmoid(self.a * (torch.log(q) - torch.log1p(-q)) + self.b).to(p.dtype)
        q = q.unsqueeze(-1)  # [B, 1] against the pieces [M]: how much of each piece lies below q
        width = self.hi - self.lo
        part = (torch.minimum(torch.maximum(q, self.lo), self.hi) - self.lo) / torch.where(width > 0, width, 1.0)
        part = torch.where(width > 0, part, (q >= self.hi).to(q.dtype))  # a step (no width): all or nothing
        return (self.y0 + (part * self.dy).sum(-1)).to(p.dtype)


def calibration_metrics(leaves: np.ndarray, prob: np.ndarray, bins: int = 15) -> dict:
    """Brier score and expected calibration error (ECE: ``bins`` equal-width bins of the probability, each bin's
    |mean probability - rate of leaving| weighted by its share of samples) of gate probabilities ``prob``
    against whether each sample leaves; NaN when there are no samples."""
    y, p = np.asarray(leaves).astype(np.float64).ravel(), np.asarray(prob, dtype=np.float64).ravel()
    if len(y) == 0:
        return {"brier": np.nan, "ece": np.nan}
    b = np.minimum((np.clip(p, 0, 1) * bins).astype(int), bins - 1)
    n = np.bincount(b, minlength=bins)
    gap = np.abs(np.bincount(b, p, bins) - np.bincount(b, y, bins))  # per bin: |sum p - sum y|
    return {"brier": float(np.mean((p - y) ** 2)), "ece": float(gap[n > 0].sum() / len(y))}


def cross_calibrate(method: str, p: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each sample's probability calibrated by a map fitted on the other folds (stratified): how a map fitted
    on out-of-fold probabilities scores on data it has not seen, for reporting calibration on calib itself."""
    from sklearn.model_selection import StratifiedKFold

    p, y = np.asarray(p, dtype=np.float64).ravel(), np.asarray(y).astype(int).ravel()
    folds = min(folds, int(np.bincount(y, minlength=2).min()))
    if folds < 2:
        raise ValueError("cross-calibration needs at least 2 samples of each outcome")
    out = np.empty_like(p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a degenerate fold's slope warning says nothing about the final map
        for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(p[:, None], y):
            out[te] = apply_calibration(fit_calibration(method, p[tr], y[tr]), p[te])
    return out


__all__ = ["CALIBRATORS", "CalibrationMap", "apply_calibration", "calibration_metrics", "check_calibration",
           "cross_calibrate", "fit_calibration"]
