"""Per-segment costs of a branchy net: MACs (torch.utils.flop_counter; FLOPs = 2 × MACs), parameters,
branch-point activation bytes and measured latency (torch.utils.benchmark: warm-up, median, IQR)."""
from __future__ import annotations

from typing import Callable

import pandas as pd
import torch
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

from .models import BranchyNet

COST_COLUMNS = ["segment", "k", "macs", "params", "act_bytes", "ms_b1", "ms_b1_iqr", "ms_batch", "ms_batch_iqr",
                "batch_size", "threads", "device"]


def count_macs(fn: Callable[[], object]) -> int:
    """Multiply-accumulates of one call, from ``FlopCounterMode`` (which counts FLOPs = 2 × MACs of
    conv / matmul ops; elementwise ops, pooling and normalisation are not counted)."""
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops()) // 2


def time_ms(fn: Callable[[], object], *, min_run_time: float = 0.2, warmup: int = 3) -> tuple[float, float]:
    """Median and IQR of one call in milliseconds (``torch.utils.benchmark``, which syncs CUDA)."""
    for _ in range(warmup):
        fn()
    m = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time)
    return 1e3 * m.median, 1e3 * m.iqr


def _exit_with_confidence(model: BranchyNet, k: int):
    """Exit head k plus softmax and entropy: what deciding at exit k costs."""

    def run(h):
        p = torch.softmax(model.run_exit(k, h), dim=1)
        return -(p * torch.log(p.clamp_min(1e-12))).sum(1)

    return run


@torch.no_grad()
def profile_segments(model: BranchyNet, *, batch_size: int = 64, device: str | torch.device = "cpu",
                     min_run_time: float = 0.2, measure_latency: bool = True) -> pd.DataFrame:
    """One row per segment: ``stage`` k, ``exit`` k (head + softmax + entropy) and ``buffer`` k (a
    copy of the branch-point activation: the write or read of buffering). MACs and bytes are per
    sample (batch 1); ``ms_b1`` is ms at batch 1, ``ms_batch`` ms per whole batch of ``batch_size``."""
    device = torch.device(device)
    model = model.to(device).eval()
    c = model.config
    threads = torch.get_num_threads()
    rows = []

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
            ("exit", _exit_with_confidence(model, k), 1, sum(p.numel() for p in model.exits[k].parameters())),
            ("buffer", lambda x: x.clone(), 1, 0),
        ]
        for name, fn, which, params in segs:
            a1, ab = x1[k + which], xb[k + which]
            macs = count_macs(lambda: fn(a1)) if name != "buffer" else 0
            row = {"segment": name, "k": k, "macs": macs, "params": params,
                   "act_bytes": x1[k + 1].numel() * x1[k + 1].element_size(),
                   "batch_size": batch_size, "threads": threads, "device": str(device)}
            if measure_latency:
                row["ms_b1"], row["ms_b1_iqr"] = time_ms(lambda: fn(a1), min_run_time=min_run_time)
                row["ms_batch"], row["ms_batch_iqr"] = time_ms(lambda: fn(ab), min_run_time=min_run_time)
            else:
                row.update(ms_b1=float("nan"), ms_b1_iqr=float("nan"), ms_batch=float("nan"), ms_batch_iqr=float("nan"))
            rows.append(row)
    return pd.DataFrame(rows, columns=COST_COLUMNS)
