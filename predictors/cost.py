"""A fitted predictor's own inference cost: MACs per sample (an analytic count of its multiply-adds;
for tree ensembles the node comparisons) and measured latency of one sample (ms, batch 1), both
including the pooling of the branch-point activation into the predictor's features."""
from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.pipeline import Pipeline

from .torch_mlp import TorchMLPBase


def estimator_macs(est, n_features: int) -> int:
    """Multiply-accumulates per sample of a fitted estimator on ``n_features`` inputs (scalers count one
    per feature; tree ensembles one comparison per level visited). For a torch callable's MACs see
    :func:`branchy.runtime.count_macs`."""
    if isinstance(est, Pipeline):
        return sum(estimator_macs(step, n_features) for _, step in est.steps)
    name = type(est).__name__
    if name == "StandardScaler":
        return n_features
    if isinstance(est, TorchMLPBase):
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


def _activation(cache, at: int) -> tuple[torch.Tensor, bool]:
    """One sample as the runtime meets it at branch point ``at``: a random activation of the recorded
    branch shape ``[1, C, H, W]`` (pooled by the predictor), or, for a cache that records no shapes (written
    from arrays), a row of its cached features ``[1, D]``. The flag says whether it is an activation."""
    shapes = cache.manifest.get("branch_shapes")
    if shapes and at < len(shapes) and shapes[at] is not None and len(shapes[at]) == 3:
        g = torch.Generator().manual_seed(at)
        return torch.randn(1, *shapes[at], generator=g), True
    from .inputs import make_inputs

    split = "calib" if cache.size("calib") else "test"
    return torch.from_numpy(np.array(make_inputs(cache, split, at, rows=slice(0, 1)), dtype=np.float32)), False


def measure_predictors(preds: list, cache, *, backend: str = "eager", rounds: int = 15, min_run_time: float = 0.3,
                       seed: int = 0) -> dict[str, dict]:
    """Latency at batch 1 of every predictor as the runtime runs it on ``backend``
    (:func:`predictors.deploy.runtime_callable`: the pooling of the branch-point activation included),
    timed with the pooling alone in interleaved rounds (:mod:`branchy.runtime.timing`; about ``min_run_time`` s in
    all), so that a noisy moment hits every predictor alike. Per predictor name: ``ms_b1`` (median of the
    kept rounds), ``ms_b1_iqr``, ``ms_b1_spread`` (IQR / median), ``unstable``, ``rounds``, ``pool_ms``,
    ``threads``, ``backend``. A leave predictor is timed as the runtime's learned decision (pooling, the confidences
    of the exits so far, the score: :func:`predictors.deploy.leave_callable`); other predictors reading earlier
    exits' confidences are timed on their features."""
    from branchy.models import parse_pooling, pool_features
    from branchy.runtime import interleaved_times, robust_summary

    from .deploy import runtime_callable
    pooling = cache.manifest.get("pooling", "avg")
    fns, pools = {}, {}
    for p in preds:
        at = p.spec.at
        h, is_act = _activation(cache, at)
        if is_act and p.spec.target == "leave":  # as the runtime runs it: pooling, confidences so far, score
            from .deploy import leave_callable

            zs = [torch.randn(1, cache.num_classes, generator=torch.Generator().manual_seed(i))
                  for i in range(p.spec.n_conf)]
            fn = leave_callable(p, 0.5, pooling, feature_dtype=cache.manifest.get("feature_dtype", "float32"))
            fns[p.spec.name] = lambda fn=fn, h=h, zs=zs: fn(h, zs)
            pools[at] = h
            continue
        if is_act and not p.spec.with_confidences:
            ex = torch.cat([h, h]) if backend != "eager" else None
            fn = runtime_callable(p, pooling, backend=backend, example=ex)
            pools[at] = h
        else:
            from .deploy import leave_scorer

            x1 = np.ascontiguousarray(p.inputs(cache, "calib" if cache.size("calib") else "test")[:1])
            fn = (lambda x1=x1, f=leave_scorer(p): f(x1)) if p.spec.target == "leave" else \
                (lambda x1=x1, p=p: p.raw_inputs(x1))
            h = None
        fns[p.spec.name] = (lambda fn=fn, h=h: fn(h)) if h is not None else fn
    for at, h in pools.items():
        fns[f"pool@{at}"] = lambda h=h, s=parse_pooling(pooling): pool_features(h, s)
    if not fns:
        return {}
    m = cache.manifest
    rec = m if backend == "eager" else (m.get("backends") or {}).get(backend) or m
    threads = int(rec.get("threads") or m.get("threads") or torch.get_num_threads())  # as the segments were timed
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():  # scikit-learn models run with one OpenMP thread inside, as in the runtime
            times = interleaved_times(fns, rounds=rounds, target_ms=1e3 * min_run_time / rounds / len(fns),
                                      seed=seed)
    finally:
        torch.set_num_threads(before)
    summ = robust_summary(times).set_index("name")
    out = {}
    for p in preds:
        r = summ.loc[p.spec.name]
        pool_ms = float(summ.loc[f"pool@{p.spec.at}", "ms"]) if f"pool@{p.spec.at}" in summ.index and \
            (not p.spec.with_confidences or p.spec.target == "leave") else 0.0
        out[p.spec.name] = {"ms_b1": float(r["ms"]), "ms_b1_iqr": float(r["iqr_ms"]), "ms_b1_spread": float(r["spread"]),
                            "unstable": bool(r["unstable"]), "rounds": int(r["rounds"]), "pool_ms": pool_ms,
                            "threads": torch.get_num_threads(), "backend": backend,
                            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return out


def pool_macs(cache, at: int) -> int:
    """Adds of pooling the activation at branch point ``at`` into the cached features (one per element and
    pooling scale, counted as MACs); 0 when the cache records no branch shapes (written from arrays)."""
    from branchy.models import parse_pooling

    shapes = cache.manifest.get("branch_shapes")
    if not shapes or at >= len(shapes) or shapes[at] is None or len(shapes[at]) != 3:
        return 0
    return int(np.prod(shapes[at])) * len(parse_pooling(cache.manifest.get("pooling", "avg")))


def predictor_cost(pred, cache, *, min_run_time: float = 0.1, rounds: int = 7) -> dict:
    """MACs (the model's plus its input pooling's, ``pool_macs``) and eager latency at batch 1 (pooling
    included, :func:`measure_predictors`) of one fitted predictor; ``backends`` holds the latencies
    measured on each runtime backend (eager first)."""
    x_dim = pred.inputs(cache, "calib" if cache.size("calib") else "test").shape[1]
    pm = 0 if pred.spec.with_confidences and pred.spec.target != "leave" else pool_macs(cache, pred.spec.at)
    m = measure_predictors([pred], cache, rounds=rounds, min_run_time=min_run_time)[pred.spec.name]
    return {"macs": estimator_macs(pred.estimator, x_dim) + pm, "pool_macs": pm, **m, "backends": {"eager": dict(m)}}


def remeasure(preds: list, cache, *, backend: str = "eager", rounds: int = 15, min_run_time: float = 0.3,
              seed: int = 0) -> dict[str, dict]:
    """Measure every predictor's latency on ``backend`` together (:func:`measure_predictors`) and record it
    in its cost: ``cost["backends"][backend]``, and for eager also the top-level ``ms_b1``. The measurement
    it replaces is kept in ``cost["history"]``. Returns the new measurements by name."""
    new = measure_predictors(preds, cache, backend=backend, rounds=rounds, min_run_time=min_run_time, seed=seed)
    for p in preds:
        m, c = new[p.spec.name], p.cost
        old = (c.get("backends") or {}).get(backend)
        if old is not None:
            c.setdefault("history", []).append(dict(old))
        c.setdefault("backends", {})[backend] = m
        if backend == "eager":
            c.update({k: v for k, v in m.items()})
    return new


def import_latency(preds: dict, costs: dict, backend: str) -> list[str]:
    """Record the predictor timings of an exported package's ``runner.py profile`` file (its ``gate``, ``jump`` and
    ``leave`` rows, which name their predictor) as each predictor's latency on ``backend`` (ms at batch 1, pooling included),
    keeping the one it replaces in ``cost["history"]``. Returns the names recorded; a row naming a predictor not in
    ``preds`` is refused."""
    rows = [r for r in costs.get("segments") or [] if r.get("segment") in ("gate", "jump", "leave")]
    unknown = sorted({r.get("predictor") for r in rows} - set(preds), key=str)
    if unknown:
        raise ValueError(f"the costs file times predictors {unknown}, which the predictors folder does not hold: give "
                         f"the folder the exported placement was searched with")
    for r in rows:
        c = preds[r["predictor"]].cost
        old = (c.get("backends") or {}).get(backend)
        if old is not None:
            c.setdefault("history", []).append(dict(old))
        c.setdefault("backends", {})[backend] = {"ms_b1": float(r["ms_b1"]), "ms_b1_spread": r.get("ms_b1_spread"),
                                                 "imported": costs.get("measured_at")}
    return sorted({r["predictor"] for r in rows})


__all__ = ["estimator_macs", "import_latency", "measure_predictors", "pool_macs", "predictor_cost", "remeasure"]
