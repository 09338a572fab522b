"""Threshold sweep speed: 100 settings over 1,000,000 samples x 8 exits (target: under 5 s on 2 cores).

Run: .venv/bin/python bench/bench_sweep.py [--n 1000000] [--k 8] [--settings 100]
Prints the wall time of ``analysis.core.sweep.sweep_cascade`` (float32 confidences) and, side by side in
the same run, the general per-sample simulator on 5 of the settings, scaled to the same count.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.core.costs import CostModel  # noqa: E402
from analysis.core.simulate import simulate_cascade  # noqa: E402
from analysis.core.sweep import sweep_cascade  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=1_000_000)
ap.add_argument("--k", type=int, default=8)
ap.add_argument("--settings", type=int, default=100)
a = ap.parse_args()

g = np.random.default_rng(0)
conf = g.random((a.n, a.k), dtype=np.float32)  # entropy-like: lower is more confident
correct = g.random((a.n, a.k)) < np.linspace(0.6, 0.95, a.k)
costs = CostModel.from_arrays(g.uniform(0.1, 1, a.k), g.uniform(0.01, 0.1, a.k), g.uniform(0, 0.02, a.k),
                              g.uniform(0, 0.02, a.k), stage_macs=g.integers(1e5, 1e6, a.k),
                              exit_macs=g.integers(1e3, 1e4, a.k))
grid = np.quantile(conf[:10000], np.linspace(0, 1, a.settings), axis=0).astype(np.float32)
import os  # noqa: E402

threads = os.cpu_count()
t = time.perf_counter()
df = sweep_cascade(conf, correct, costs, grid)
dt = time.perf_counter() - t
print(f"sweep_cascade: {a.settings} settings x {a.n:,} samples x {a.k} exits in {dt:.2f} s "
      f"({1e3 * dt / a.settings:.1f} ms per setting; {threads} cores visible) -> target < 5 s: "
      f"{'PASS' if dt < 5 else 'FAIL'}")
t = time.perf_counter()
for s in grid[:5]:
    simulate_cascade(conf < s, correct, costs)
dg = (time.perf_counter() - t) / 5 * a.settings
print(f"general simulator, same settings: {dg:.2f} s (extrapolated from 5) -> fast path is {dg / dt:.1f}x faster")
print(f"front: accuracy {df['accuracy_%'].min():.1f}..{df['accuracy_%'].max():.1f} %, "
      f"mean latency {df.mean_ms.min():.3f}..{df.mean_ms.max():.3f} ms")
