"""Confidence measures of exit logits: the one implementation, used by the cache's table, the simulator
and calibration (numpy arrays: :func:`confidence`, :func:`all_confidences`) and by the runtime deciding
and the profiler timing that decision (torch tensors: :func:`confidence_torch`). Everything in float64;
entropy in nats (natural log, as BranchyNet). No torch import here: the cache reader stays numpy-only."""
from __future__ import annotations

import math

import numpy as np

#: for each measure: does a *smaller* value mean *more* confident?
LOWER_IS_CONFIDENT = {"entropy": True, "norm_entropy": True, "max_prob": False, "margin": False}


def _unknown(measure: str) -> ValueError:
    return ValueError(f"unknown confidence measure {measure!r}; known: {', '.join(LOWER_IS_CONFIDENT)}")


def check_measure(measure: str) -> str:
    """``measure`` itself when it is a known confidence measure; ValueError naming the known ones otherwise."""
    if measure not in LOWER_IS_CONFIDENT:
        raise _unknown(measure)
    return measure


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Probabilities (float64) of ``logits`` along ``axis``."""
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
    """Top-1 probability."""
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
    raise _unknown(measure)


def all_confidences(logits: np.ndarray) -> dict[str, np.ndarray]:
    """Every measure over the last axis at once (one softmax, one sort), each equal to :func:`confidence`'s."""
    ent = entropy(logits)
    ps = np.sort(softmax(logits), axis=-1)
    return {"entropy": ent, "norm_entropy": ent / np.log(np.shape(logits)[-1]),
            "max_prob": ps[..., -1], "margin": ps[..., -1] - ps[..., -2]}


def confidence_torch(logits, measure: str):
    """:func:`confidence` of a torch tensor ``[B, C]`` as a float64 tensor ``[B]``, as the runtime decides
    (a float32 softmax saturates: max-prob 1.0 against 0.99999999, and exits would differ from the
    simulator's, which computes from the cache in float64)."""
    lp = logits.double().log_softmax(dim=1)
    if measure in ("entropy", "norm_entropy"):
        h = -(lp.exp() * lp).sum(1)
        return h / math.log(lp.shape[1]) if measure == "norm_entropy" else h
    check_measure(measure)
    top = lp.exp().topk(2, dim=1).values
    return top[:, 0] if measure == "max_prob" else top[:, 0] - top[:, 1]
