"""What a predictor placed after stage j may see: the cached features at branch point j and,
optionally, the confidences of the exits before j (which the runtime has already evaluated there); in memory
(:func:`make_inputs`), or read on demand (:class:`CacheRows`) for splits larger than memory."""
from __future__ import annotations

import numpy as np

from branchy.cache import FeatureCache
from branchy.exits import confidence

from .torch_mlp import Rows

CONFIDENCES = ("entropy", "max_prob", "margin")


def make_inputs(cache: FeatureCache, split: str, at: int, *, with_confidences: bool = False,
                rows: slice | None = None) -> np.ndarray:
    """``[N, D]`` float32 inputs for a predictor after stage ``at`` (0-based); ``rows``: only those rows of the
    split (read from the memory map alone: a chunk of a split larger than memory)."""
    if not 0 <= at < cache.num_exits:
        raise ValueError(f"predictor position {at} out of range: stages are 0..{cache.num_exits - 1}")
    x = np.asarray(cache.features(split, at, rows=rows), dtype=np.float32)
    if with_confidences and at > 0:
        z = np.asarray(cache.logits(split, rows=rows)[:, :at])
        extra = [confidence(z, m).astype(np.float32) for m in CONFIDENCES]
        x = np.concatenate([x, *extra], axis=1)
    if not np.isfinite(x).all():
        raise ValueError(f"cache {cache.path}: features at branch point {at} ({split}) hold NaN/inf; "
                         f"re-dump with --feature-dtype float32")
    return x


class CacheRows(Rows):
    """The inputs of :func:`make_inputs` read on demand from the cache's memory maps (features, and the earlier
    exits' confidences when asked), for fitting a torch MLP on a split larger than memory."""

    def __init__(self, cache: FeatureCache, split: str, at: int, *, with_confidences: bool = False) -> None:
        if not 0 <= at < cache.num_exits:
            raise ValueError(f"predictor position {at} out of range: stages are 0..{cache.num_exits - 1}")
        self.cache, self.split, self.at = cache, split, at
        self.conf = with_confidences and at > 0
        self.n = cache.size(split)
        self.n_features = int(cache.features(split, at).shape[1]) + (len(CONFIDENCES) * at if self.conf else 0)

    def __len__(self) -> int:
        return self.n

    def take(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        order = np.argsort(idx, kind="stable")  # read in file order, hand back in the order asked
        s = idx[order]
        x = np.asarray(self.cache.features(self.split, self.at)[s], dtype=np.float32)
        if self.conf:
            z = np.asarray(self.cache.logits(self.split)[s, : self.at])
            x = np.concatenate([x, *[confidence(z, m).astype(np.float32) for m in CONFIDENCES]], axis=1)
        if not np.isfinite(x).all():
            raise ValueError(f"cache {self.cache.path}: features at branch point {self.at} ({self.split}) hold "
                             f"NaN/inf; re-dump with --feature-dtype float32")
        out = np.empty_like(x)
        out[order] = x
        return out


__all__ = ["CONFIDENCES", "CacheRows", "make_inputs"]
