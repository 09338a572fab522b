"""What a predictor placed after stage j may see: the cached features at branch point j and,
optionally, the confidences of the exits before j (which the runtime has already evaluated there); in memory
(:func:`make_inputs`), or read on demand (:class:`CacheRows`) for splits larger than memory."""
from __future__ import annotations

import numpy as np

from branchy.cache import FeatureCache
from branchy.exits import confidence

from .torch_mlp import Rows

CONFIDENCES = ("entropy", "max_prob", "margin")


def _n_conf(cache: FeatureCache, at: int, with_confidences: bool, n_conf: int | None) -> int:
    if not 0 <= at < cache.num_exits:
        raise ValueError(f"predictor position {at} out of range: stages are 0..{cache.num_exits - 1}")
    n = (at if with_confidences else 0) if n_conf is None else int(n_conf)
    if not 0 <= n <= at + 1:
        raise ValueError(f"n_conf={n}: a predictor after stage {at} may read the confidences of exits 0..{at} at most")
    return n


def make_inputs(cache: FeatureCache, split: str, at: int, *, with_confidences: bool = False,
                rows: slice | None = None, n_conf: int | None = None) -> np.ndarray:
    """``[N, D]`` float32 inputs for a predictor after stage ``at`` (0-based): the features at branch point ``at``,
    then (``with_confidences``) entropy, max-probability and margin of exits ``0..n_conf-1`` (default ``n_conf=at``,
    the exits run before it; a leave predictor, after exit ``at``'s head, reads ``at + 1``). ``rows``: only those rows
    of the split (read from the memory map alone: a chunk of a split larger than memory)."""
    n = _n_conf(cache, at, with_confidences, n_conf)
    x = np.asarray(cache.features(split, at, rows=rows), dtype=np.float32)
    if n > 0:
        z = np.asarray(cache.logits(split, rows=rows)[:, :n])
        extra = [confidence(z, m).astype(np.float32) for m in CONFIDENCES]
        x = np.concatenate([x, *extra], axis=1)
    if not np.isfinite(x).all():
        raise ValueError(f"cache {cache.path}: features at branch point {at} ({split}) hold NaN/inf; "
                         f"re-dump with --feature-dtype float32")
    return x


class CacheRows(Rows):
    """The inputs of :func:`make_inputs` read on demand from the cache's memory maps (features, and the earlier
    exits' confidences when asked), for fitting a torch MLP on a split larger than memory."""

    def __init__(self, cache: FeatureCache, split: str, at: int, *, with_confidences: bool = False,
                 n_conf: int | None = None) -> None:
        self.n_conf = _n_conf(cache, at, with_confidences, n_conf)
        self.cache, self.split, self.at = cache, split, at
        self.conf = self.n_conf > 0
        self.n = cache.size(split)
        self.n_features = int(cache.features(split, at).shape[1]) + len(CONFIDENCES) * self.n_conf

    def __len__(self) -> int:
        return self.n

    def take(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        order = np.argsort(idx, kind="stable")  # read in file order, hand back in the order asked
        s = idx[order]
        x = np.asarray(self.cache.features(self.split, self.at)[s], dtype=np.float32)
        if self.conf:
            z = np.asarray(self.cache.logits(self.split)[s, : self.n_conf])
            x = np.concatenate([x, *[confidence(z, m).astype(np.float32) for m in CONFIDENCES]], axis=1)
        if not np.isfinite(x).all():
            raise ValueError(f"cache {self.cache.path}: features at branch point {self.at} ({self.split}) hold "
                             f"NaN/inf; re-dump with --feature-dtype float32")
        out = np.empty_like(x)
        out[order] = x
        return out


__all__ = ["CONFIDENCES", "CacheRows", "make_inputs"]
