"""Confidence measures of exit logits (numpy only). Entropy in nats (natural log, as BranchyNet)."""
from __future__ import annotations

import numpy as np

MEASURES = ("entropy", "max_prob", "margin")
# for each measure: does a *smaller* value mean *more* confident?
LOWER_IS_CONFIDENT = {"entropy": True, "norm_entropy": True, "max_prob": False, "margin": False}


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def entropy(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy of softmax(logits) in nats; max is ln C."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=axis, keepdims=True))
    logp = z - lse
    return -(np.exp(logp) * logp).sum(axis=axis)


def max_prob(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    return softmax(logits, axis).max(axis=axis)


def margin(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Top-1 minus top-2 probability."""
    p = np.sort(softmax(logits, axis), axis=axis)
    return np.take(p, -1, axis=axis) - np.take(p, -2, axis=axis)


def confidence(logits: np.ndarray, measure: str) -> np.ndarray:
    """The named measure over the last axis: ``entropy`` (nats), ``norm_entropy`` (/ln C), ``max_prob``, ``margin``."""
    if measure == "entropy":
        return entropy(logits)
    if measure == "norm_entropy":
        return entropy(logits) / np.log(np.shape(logits)[-1])
    if measure == "max_prob":
        return max_prob(logits)
    if measure == "margin":
        return margin(logits)
    raise ValueError(f"unknown confidence measure {measure!r}; known: entropy, norm_entropy, max_prob, margin")


def is_confident(values: np.ndarray, thresholds, measure: str) -> np.ndarray:
    """BranchyNet's exit test: entropy < T (or max_prob / margin > T for the other measures)."""
    t = np.asarray(thresholds, dtype=np.float64)
    return values < t if LOWER_IS_CONFIDENT[measure] else values > t
