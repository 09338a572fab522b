"""A fitted predictor's own inference cost: MACs per sample (an analytic count of its multiply-adds;
for tree ensembles the node comparisons) and measured latency of one sample (ms, batch 1), both
including the pooling of the branch-point activation into the predictor's features."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.pipeline import Pipeline
from torch.utils import benchmark

from .torch_mlp import _TorchMLPBase


def count_macs(est, n_features: int) -> int:
    """Multiply-accumulates per sample (scalers count one per feature)."""
    if isinstance(est, Pipeline):
        return sum(count_macs(step, n_features) for _, step in est.steps)
    name = type(est).__name__
    if name == "StandardScaler":
        return n_features
    if isinstance(est, _TorchMLPBase):
        return n_features + sum(m.weight.numel() for m in est.net_.modules() if isinstance(m, torch.nn.Linear))
    if hasattr(est, "coefs_"):  # scikit-learn MLP
        return int(sum(w.size for w in est.coefs_))
    if hasattr(est, "coef_"):
        return int(np.asarray(est.coef_).size)
    if hasattr(est, "_predictors"):  # HistGradientBoosting: one comparison per tree level visited
        depth = 0
        for per_iter in est._predictors:
            for tree in per_iter:
                depth += int(tree.get_max_depth()) if hasattr(tree, "get_max_depth") else 1
        return depth
    if name.startswith("Dummy"):
        return 0
    raise TypeError(f"cannot count MACs of {name}")


def measure_ms(est, x1: np.ndarray, *, min_run_time: float = 0.1) -> tuple[float, float]:
    """Median and IQR (ms) of predicting one sample. Torch MLPs are timed as their bare torch module
    (what a runtime would run); scikit-learn models through ``predict`` (their real Python path) with one
    OpenMP thread (a single row gains nothing from more)."""
    x1 = np.ascontiguousarray(x1.reshape(1, -1))
    if isinstance(est, _TorchMLPBase) and getattr(est, "net_", None) is not None:
        mod, xt = est.torch_module(), torch.from_numpy(x1.astype(np.float32))

        def fn():
            with torch.no_grad():
                mod(xt)
    else:
        def fn():
            est.predict(x1)

    from .models import one_thread

    with one_thread():
        for _ in range(3):
            fn()
        m = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
            min_run_time=min_run_time)
    return 1e3 * m.median, 1e3 * m.iqr


def pooling_cost(cache, at: int, *, min_run_time: float = 0.1) -> dict:
    """Cost of turning the activation at branch point ``at`` into the cached features (the cache's
    pooling, adaptive average): one add per activation element (counted as MACs), and its measured
    ms at batch 1. Zero when the cache does not record branch shapes (a cache written from arrays)."""
    m = cache.manifest
    shapes = m.get("branch_shapes")
    if not shapes or shapes[at] is None or len(shapes[at]) != 3:
        return {"macs": 0, "ms_b1": 0.0}
    from branchy.dump import parse_pooling, pool_features

    s = parse_pooling(m.get("pooling", "avg"))
    h = torch.zeros(1, *shapes[at])

    def fn():
        pool_features(h, s)

    for _ in range(3):
        fn()
    t = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time)
    return {"macs": int(np.prod(shapes[at])), "ms_b1": 1e3 * t.median}


def predictor_cost(est, x: np.ndarray, *, min_run_time: float = 0.1, pooling: dict | None = None) -> dict:
    """MACs and ms (batch 1) of the predictor, pooling of its input included (``pool_*`` say how much)."""
    ms, iqr = measure_ms(est, x[:1], min_run_time=min_run_time)
    pool = pooling or {"macs": 0, "ms_b1": 0.0}
    return {"macs": count_macs(est, x.shape[1]) + pool["macs"], "ms_b1": ms + pool["ms_b1"], "ms_b1_iqr": iqr,
            "pool_macs": pool["macs"], "pool_ms": pool["ms_b1"], "threads": torch.get_num_threads()}
