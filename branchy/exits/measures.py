"""Confidence measures of exit logits: the one implementation, used by the cache's table, the simulator
and calibration (numpy arrays: :func:`confidence`, :func:`all_confidences`) and by the runtime deciding
and the profiler timing that decision (torch tensors: :func:`confidence_torch`). Everything in float64;
entropy in nats (natural log, as BranchyNet). No torch import here: the cache reader stays numpy-only."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..core import Registry


@dataclass(frozen=True)
class Measure:
    """A confidence measure: ``fn(logits [..., C]) -> [...]`` (float64) and its direction."""

    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    lower_is_confident: bool  # does a *smaller* value mean *more* confident?
    unit: str


MEASURES: Registry[Measure] = Registry("confidence measure")


def _unknown(measure: str) -> ValueError:
    return ValueError(f"unknown confidence measure {measure!r}; known: {', '.join(MEASURES.names())}")


def check_measure(measure: str) -> str:
    """``measure`` itself when it is a known confidence measure; ValueError naming the known ones otherwise."""
    if measure not in MEASURES.names():
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


def norm_entropy(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Entropy / ln C: 0 (one-hot) to 1 (uniform), comparable across class counts."""
    return entropy(logits, axis) / np.log(np.shape(logits)[axis])


for _m, _doc in ((Measure("entropy", entropy, True, "nats"), "Shannon entropy of the softmax (nats; BranchyNet)"),
                 (Measure("norm_entropy", norm_entropy, True, "fraction of ln C"), "entropy / ln C (0 to 1)"),
                 (Measure("max_prob", max_prob, False, "probability"), "top-1 softmax probability"),
                 (Measure("margin", margin, False, "probability"), "top-1 minus top-2 softmax probability")):
    MEASURES.register(_m.name, _m, doc=_doc)

#: for each measure: does a *smaller* value mean *more* confident?
LOWER_IS_CONFIDENT = {n: MEASURES.get(n).lower_is_confident for n in MEASURES.names()}


def confidence(logits: np.ndarray, measure: str) -> np.ndarray:
    """The named measure (:data:`MEASURES`) over the last axis: ``entropy`` (nats), ``norm_entropy`` (/ln C),
    ``max_prob``, ``margin``."""
    return MEASURES.get(check_measure(measure)).fn(logits)


def all_confidences(logits: np.ndarray) -> dict[str, np.ndarray]:
    """Every measure over the last axis at once (one softmax, one sort), each equal to :func:`confidence`'s."""
    ent = entropy(logits)
    ps = np.sort(softmax(logits), axis=-1)
    return {"entropy": ent, "norm_entropy": ent / np.log(np.shape(logits)[-1]),
            "max_prob": ps[..., -1], "margin": ps[..., -1] - ps[..., -2]}


def _torch_entropy(lp):
    return -(lp.exp() * lp).sum(1)


def _torch_top(lp):
    return lp.exp().topk(2, dim=1).values


_TORCH = {"entropy": _torch_entropy,
          "norm_entropy": lambda lp: _torch_entropy(lp) / math.log(lp.shape[1]),
          "max_prob": lambda lp: _torch_top(lp)[:, 0],
          "margin": lambda lp: (lambda t: t[:, 0] - t[:, 1])(_torch_top(lp))}


def confidence_torch(logits, measure: str):
    """:func:`confidence` of a torch tensor ``[B, C]`` as a float64 tensor ``[B]``, as the runtime decides
    (a float32 softmax saturates: max-prob 1.0 against 0.99999999, and exits would differ from the
    simulator's, which computes from the cache in float64). A measure registered without a torch form here
    is refused rather than computed as another."""
    check_measure(measure)
    if measure not in _TORCH:
        raise ValueError(f"confidence measure {measure!r} has no torch form for the runtime; add one to "
                         f"branchy.exits.measures._TORCH")
    return _TORCH[measure](logits.double().log_softmax(dim=1))


__all__ = ["LOWER_IS_CONFIDENT", "MEASURES", "Measure", "all_confidences", "check_measure", "confidence",
           "confidence_torch", "entropy", "margin", "max_prob", "norm_entropy", "softmax"]
