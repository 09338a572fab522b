"""Pooling an activation ``[B, C, H, W]`` to a feature vector (global average or a spatial pyramid): what the
dump stores and what a gate reads."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["parse_pooling", "pool_features", "Pool"]


def parse_pooling(pooling: str) -> tuple[int, ...]:
    """The grid sizes of a pooling spec: ``'avg'`` → (1,) (global average), ``'grid:S'`` → (S,) (adaptive S×S
    average), ``'grid:1,2'`` → (1, 2) (a spatial pyramid: every scale's pooled features, concatenated).

    >>> parse_pooling("avg"), parse_pooling("grid:3"), parse_pooling("grid:1,2")
    ((1,), (3,), (1, 2))
    """
    if pooling == "avg":
        return (1,)
    parts = pooling[5:].split(",") if pooling.startswith("grid:") else []
    if parts and all(p.isdigit() and int(p) >= 1 for p in parts) and len(set(parts)) == len(parts):
        return tuple(int(p) for p in parts)
    raise ValueError(f"unknown pooling {pooling!r}; use 'avg', 'grid:S' (e.g. grid:2) or several distinct scales "
                     f"'grid:S1,S2' (e.g. grid:1,2)")


def pool_features(h: torch.Tensor, s: int | tuple[int, ...]) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, C·Σ s·s]`` by adaptive average pooling at each scale in ``s``, concatenated
    (``[B, D]`` passes through)."""
    if h.ndim == 2:
        return h
    scales = (s,) if isinstance(s, int) else tuple(s)
    if len(scales) == 1:
        return F.adaptive_avg_pool2d(h, scales[0]).flatten(1)
    return torch.cat([F.adaptive_avg_pool2d(h, k).flatten(1) for k in scales], 1)


class Pool(torch.nn.Module):
    """:func:`pool_features` as a module (one or several scales), for the runtime's predictor modules."""

    def __init__(self, s: int | tuple[int, ...]) -> None:
        super().__init__()
        self.scales = (s,) if isinstance(s, int) else tuple(s)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return pool_features(h, self.scales)
