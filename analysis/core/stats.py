"""Summaries of simulated outcomes with bootstrap confidence intervals. Percentiles use the
inverted-CDF definition (the smallest latency with at least q of the samples at or below it)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .simulate import Outcome


def _pct(x: np.ndarray, q: float, axis=None):
    return np.percentile(x, q, axis=axis, method="inverted_cdf")


def summarize(o: Outcome, *, reference_ms: float | None = None, n_boot: int = 1000, ci: float = 0.95,
              seed: int = 0) -> dict:
    """Accuracy (%), latency mean/p50/p95/p99 (ms), speed-up over ``reference_ms`` (the mean latency of
    ``full``), mean MACs, exit distribution (%), peak buffered bytes; ``*_lo``/``*_hi`` are percentile-
    bootstrap bounds (``ci``) from ``n_boot`` resamples of the samples."""
    n = o.n
    acc = 100 * o.correct.mean()
    mean = o.latency_ms.mean()
    out = {"policy": o.policy, "n": n, "accuracy_%": acc, "mean_ms": mean, "p50_ms": _pct(o.latency_ms, 50),
           "p95_ms": _pct(o.latency_ms, 95), "p99_ms": _pct(o.latency_ms, 99), "mean_MACs": o.macs.mean(),
           "peak_buffer_bytes": float(o.buffered_bytes.max()) if n else 0.0,
           "mean_buffer_bytes": float(o.buffered_bytes.mean()) if n else 0.0}
    if reference_ms is not None:
        out["speedup"] = reference_ms / mean
    dist = np.bincount(o.exit, minlength=o.num_exits) / n * 100
    for k, v in enumerate(dist):
        out[f"exit{k}_%"] = v
    for part, v in o.breakdown.items():
        out[f"{part}_ms"] = float(np.mean(v))
    if n_boot:
        g = np.random.default_rng(seed)
        idx = g.integers(0, n, (n_boot, n))
        a = (1 - ci) / 2 * 100
        lat = o.latency_ms[idx]
        boots = {"accuracy_%": 100 * o.correct[idx].mean(1), "mean_ms": lat.mean(1), "p50_ms": _pct(lat, 50, axis=1),
                 "p95_ms": _pct(lat, 95, axis=1), "p99_ms": _pct(lat, 99, axis=1), "mean_MACs": o.macs[idx].mean(1),
                 "peak_buffer_bytes": o.buffered_bytes[idx].max(1)}
        ex = o.exit[idx]
        for k in range(o.num_exits):
            boots[f"exit{k}_%"] = 100 * (ex == k).mean(1)
        if reference_ms is not None:
            boots["speedup"] = reference_ms / boots["mean_ms"]
        for key, b in boots.items():
            out[f"{key}_lo"], out[f"{key}_hi"] = np.percentile(b, [a, 100 - a])
    return out


def summary_table(outcomes: list[Outcome], *, reference: Outcome | None = None, **kw) -> pd.DataFrame:
    """One row per outcome; the speed-up is over ``reference`` (``full``) when given."""
    ref = reference.latency_ms.mean() if reference is not None else None
    return pd.DataFrame([summarize(o, reference_ms=ref, **kw) for o in outcomes])


def format_headline(df: pd.DataFrame) -> str:
    """Accuracy, mean and p95 latency, speed-up, MACs and exits with 95 % intervals, for a terminal."""
    return headline_frame(df).to_string(index=False)


def headline_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The headline as text cells: accuracy (%), mean and p95 latency (ms per sample, batch 1), speed-up over full,
    mean MACs, peak buffer (bytes) and the share leaving at each exit (%), with 95 % intervals."""
    rows = []
    for d in df.to_dict("records"):

        def ci(key, fmt):
            lo, hi = d.get(f"{key}_lo"), d.get(f"{key}_hi")
            v = fmt.format(d[key])
            return v + (f" [{fmt.format(lo)}, {fmt.format(hi)}]" if lo is not None and not pd.isna(lo) else "")

        exits = "/".join(f"{d[c]:.0f}" for c in df.columns if c.startswith("exit") and c.endswith("_%"))
        rows.append({"policy": d["policy"], "accuracy % [95% CI]": ci("accuracy_%", "{:.2f}"),
                     "mean ms [CI]": ci("mean_ms", "{:.4f}"), "p95 ms [CI]": ci("p95_ms", "{:.4f}"),
                     "speed-up [CI]": ci("speedup", "{:.2f}") if "speedup" in d else "",
                     "MACs": f"{d['mean_MACs']:,.0f}", "peak buf B": f"{d['peak_buffer_bytes']:.0f}",
                     "exits %": exits})
    return pd.DataFrame(rows)


__all__ = ["format_headline", "headline_frame", "summarize", "summary_table"]
