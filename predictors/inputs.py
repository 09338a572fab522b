"""What a predictor placed after stage j may see: the cached features at branch point j and,
optionally, the confidences of the exits before j (which the runtime has already evaluated there)."""
from __future__ import annotations

import numpy as np

from branchy.cache import FeatureCache
from branchy.measures import confidence

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
