"""Per-segment costs of a branchy net: MACs (torch.utils.flop_counter; FLOPs = 2 × MACs), parameters,
branch-point activation bytes and measured latency (every segment timed in interleaved rounds, outlier
rounds dropped, median and spread reported, unstable segments flagged: :mod:`branchy.runtime.timing`)."""
from __future__ import annotations

from typing import Callable

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from ..core import show_progress
from ..exits import confidence_torch
from ..models import BranchyNet

COST_COLUMNS = ["segment", "k", "macs", "params", "act_bytes", "ms_b1", "ms_b1_iqr", "ms_batch", "ms_batch_iqr",
                "batch_size", "threads", "device", "ms_b1_spread", "ms_batch_spread", "rounds", "unstable"]


def count_macs(fn: Callable[[], object]) -> int:
    """Multiply-accumulates of one call, from ``FlopCounterMode`` (which counts FLOPs = 2 × MACs of
    conv / matmul ops; elementwise ops, pooling and normalisation are not counted)."""
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops()) // 2


def exit_with_confidence(model: BranchyNet, k: int, head=None):
    """Exit head k plus softmax and entropy: what deciding at exit k costs (``head``: the backend's), the
    confidence computed as the runtime computes it (:func:`branchy.exits.confidence_torch`, float64)."""
    head = head or (lambda h: model.run_exit(k, h))

    def run(h):
        return confidence_torch(head(h), "entropy")

    return run


@torch.no_grad()
def profile_segments(model: BranchyNet, *, batch_size: int = 64, device: str | torch.device = "cpu",
                     min_run_time: float = 0.2, measure_latency: bool = True, rounds: int = 15,
                     seed: int = 0, backend: str = "eager", progress: bool = True) -> pd.DataFrame:
    """One row per segment: ``stage`` k, ``exit`` k (head + softmax + entropy) and ``buffer`` k (a
    copy of the branch-point activation: the write or read of buffering). MACs and bytes are per
    sample (batch 1); ``ms_b1`` is ms at batch 1, ``ms_batch`` ms per whole batch of ``batch_size``:
    medians over ``rounds`` interleaved rounds (about ``min_run_time`` s per segment and batch size in
    all), ``*_spread`` = IQR / median, ``unstable`` when a spread exceeds 10 %. ``backend``: what runs the
    segments (:mod:`branchy.runtime.backends`; not eager: CPU). ``progress``: a bar over the rounds."""
    from .backends import prepare

    device = torch.device(device if backend == "eager" else "cpu")
    model = model.to(device).eval()
    run_stages, run_heads = prepare(model, backend) if measure_latency else (None, None)
    c = model.config
    threads = torch.get_num_threads()
    rows, fns = [], {}

    def inputs(b):
        xs, h = [], torch.randn(b, c.in_channels, *c.image_size, device=device)
        for k in range(model.num_exits):
            xs.append(h)
            h = model.run_stage(k, h)
        xs.append(h)
        return xs  # xs[k] is stage k's input, xs[k+1] its output

    x1, xb = inputs(1), inputs(batch_size)
    for k in range(model.num_exits):
        stage = model.stages[k]
        segs = [
            ("stage", lambda x, k=k: model.run_stage(k, x), 0, sum(p.numel() for p in stage.parameters())),
            ("exit", exit_with_confidence(model, k), 1, sum(p.numel() for p in model.exits[k].parameters())),
            ("buffer", lambda x: x.clone(), 1, 0),
        ]
        timed = {"stage": run_stages[k] if run_stages else None,  # chained heads: with their link (run_exit)
                 "exit": exit_with_confidence(model, k, run_heads[k]) if run_heads and not model.chained else None}
        for name, fn, which, params in segs:
            a1, ab = x1[k + which], xb[k + which]
            macs = count_macs(lambda: fn(a1)) if name != "buffer" else 0
            fn = timed.get(name) or fn
            rows.append({"segment": name, "k": k, "macs": macs, "params": params,
                         "act_bytes": x1[k + 1].numel() * x1[k + 1].element_size(),
                         "batch_size": batch_size, "threads": threads, "device": str(device)})
            fns[f"{name}{k}@1"] = lambda fn=fn, a=a1: fn(a)
            fns[f"{name}{k}@b"] = lambda fn=fn, a=ab: fn(a)
    df = pd.DataFrame(rows)
    if measure_latency:
        _time_segments(df, fns, rounds=rounds, min_run_time=min_run_time, seed=seed, device=device,
                       progress=progress)
    else:
        for col in ("ms_b1", "ms_b1_iqr", "ms_batch", "ms_batch_iqr", "ms_b1_spread", "ms_batch_spread"):
            df[col] = float("nan")
        df["rounds"] = 0
        df["unstable"] = False
    return df[COST_COLUMNS]


def timed_rounds(fns: dict, *, rounds: int, desc: str, progress: bool = True, **kw) -> pd.DataFrame:
    """:func:`branchy.runtime.interleaved_times` of ``fns`` (``kw`` passed on: ms per call, ``rounds`` rows) with a
    progress bar ``desc`` of ``rounds + 1`` passes (unit: round; the warm-up and sizing pass first), so it shows an
    ETA."""
    from .timing import interleaved_times

    with tqdm(total=rounds + 1, desc=desc, unit="round", disable=not show_progress(progress)) as bar:
        times = interleaved_times(fns, rounds=rounds, on_round=lambda r: bar.update(1 if r >= 0 else 0), **kw)
        bar.update(1)  # the last round
    return times


def _time_segments(df: pd.DataFrame, fns: dict, *, rounds: int, min_run_time: float, seed: int,
                   device: torch.device, progress: bool = True) -> None:
    """Fill ``df``'s latency columns: every segment at batch 1 and at the batch size, timed in ``rounds``
    interleaved rounds (``fns[f"{segment}{k}@1"]`` and ``@b``), medians, IQRs and spreads in ms; ``progress``: a
    bar of ``rounds + 1`` passes (:func:`timed_rounds`)."""
    from .timing import robust_summary

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    times = timed_rounds(fns, rounds=rounds, desc="profile", progress=progress,
                         target_ms=1e3 * min_run_time / rounds, seed=seed, sync=sync)
    summ = robust_summary(times).set_index("name")
    for col, tag in (("ms_b1", "1"), ("ms_batch", "b")):
        keys = [f"{r.segment}{r.k}@{tag}" for r in df.itertuples()]
        df[col] = summ.loc[keys, "ms"].to_numpy()
        df[f"{col}_iqr"] = summ.loc[keys, "iqr_ms"].to_numpy()
        df[f"{col}_spread"] = summ.loc[keys, "spread"].to_numpy()
    df["rounds"] = int(summ["rounds"].iloc[0])
    df["unstable"] = (df["ms_b1_spread"] > 0.10) | (df["ms_batch_spread"] > 0.10)


def overhead_fns(model: BranchyNet, backend: str = "eager",
                 x: torch.Tensor | None = None) -> dict[str, Callable[[], object]]:
    """Zero-argument callables at batch 1 whose times give the runtime's overhead: ``rt_full`` (the plain
    network through :class:`branchy.runtime.EarlyExitRuntime`), ``rt_vain`` (every side exit entered, none
    taken), and per exit k ``stage{k}``, ``exit{k}`` (head + softmax + entropy) and ``buffer{k}``, on the
    image ``x`` ``[1, C, H, W]`` (default: random; a real one runs a few percent faster here)."""
    from .backends import prepare
    from .engine import EarlyExitRuntime

    model = model.cpu().eval()
    segs = prepare(model, backend)
    c, k = model.config, model.num_exits
    x = torch.randn(1, c.in_channels, *c.image_size) if x is None else x[:1].cpu()
    xs, h = [], x
    with torch.no_grad():
        for i in range(k):
            xs.append(h)
            h = model.run_stage(i, h)
    xs.append(h)
    never = [float("-inf")] * k  # entropy below -inf: no side exit ever accepts
    vain = EarlyExitRuntime(model, never, segments=segs)
    plain = vain if model.chained else EarlyExitRuntime(model, never, kept=[False] * (k - 1) + [True], segments=segs)
    fns = {"rt_full": lambda: plain(x), "rt_vain": lambda: vain(x)}
    for i in range(k):
        fns[f"stage{i}"] = lambda i=i: segs[0][i](xs[i])
        fns[f"exit{i}"] = lambda i=i, f=exit_with_confidence(model, i, segs[1][i]): f(xs[i + 1])
        fns[f"buffer{i}"] = lambda i=i: xs[i + 1].clone()
    return fns


def overhead_from_times(t, k: int, chained: bool = False) -> dict:
    """``sample_ms`` and ``decision_ms`` (clipped at 0) from ms per call of :func:`overhead_fns`' entries."""
    stages = sum(t[f"stage{i}"] for i in range(k))
    side = sum(t[f"exit{i}"] + 2 * t[f"buffer{i}"] for i in range(k - 1))
    if chained:  # every head runs in the plain network too: only the fixed cost is separable
        sample = t["rt_full"] - stages - side - t[f"exit{k - 1}"]
        decision = 0.0
    else:
        sample = t["rt_full"] - stages - t[f"exit{k - 1}"]
        decision = (t["rt_vain"] - t["rt_full"] - side) / max(1, k - 1)
    return {"sample_ms": float(max(0.0, sample)), "decision_ms": float(max(0.0, decision))}


@torch.no_grad()
def runtime_overhead(model: BranchyNet, *, rounds: int = 15, min_run_time: float = 0.5, seed: int = 0,
                     backend: str = "eager", progress: bool = True) -> dict:
    """What the real runtime (:class:`branchy.runtime.EarlyExitRuntime`) spends outside the segments at
    batch 1, measured in the same interleaved rounds as the segments it is compared with: ``sample_ms``,
    the fixed cost per sample (the plain network through the runtime minus its stages and final head), and
    ``decision_ms``, the cost per side exit entered beyond its head, softmax, confidence and buffer copies
    (softmax/compare bookkeeping, selecting the rows that go on). Clipped at 0. ``progress``: a bar over the
    rounds (:func:`timed_rounds`)."""
    from .timing import robust_summary

    fns = overhead_fns(model, backend)
    t = robust_summary(timed_rounds(fns, rounds=rounds, desc="overhead", progress=progress,
                                    target_ms=1e3 * min_run_time / rounds / 2, seed=seed)).set_index("name")["ms"]
    return {**overhead_from_times(t, model.num_exits, model.chained), "runtime_full_ms": float(t["rt_full"]),
            "backend": backend, "rounds": rounds}


__all__ = ["COST_COLUMNS", "count_macs", "exit_with_confidence", "overhead_fns", "overhead_from_times",
           "profile_segments", "runtime_overhead", "timed_rounds"]
