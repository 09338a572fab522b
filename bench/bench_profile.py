"""How repeatable are the measured segment costs? The demo model's segments (stages, exit heads with their
decision, buffer copies; ms at batch 1) are measured four times, alternating two methods: the single shot
of each segment in turn (torch.utils.benchmark blocked_autorange, 0.2 s per segment: the old profiler)
and the interleaved rounds of :mod:`branchy.runtime.timing` (15 rounds, outlier rounds dropped, same time budget).
Per method: the largest relative difference between its two measurements over all segments.

Run: .venv/bin/python bench/bench_profile.py [--run runs/demo] [--threads 1]   (about 20 s)
Last line: profile: repeat max |a/b - 1| single-shot X, interleaved Y over S segments (T threads)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from branchy.runtime import exit_with_confidence, profile_segments  # noqa: E402
from branchy.runtime import machine_state  # noqa: E402
from branchy.train import load_checkpoint  # noqa: E402


def single_shot(model, seconds: float = 0.2) -> np.ndarray:
    """ms at batch 1 of every segment, each timed once in turn (the old way)."""
    c = model.config
    h, xs = torch.randn(1, c.in_channels, *c.image_size), []
    with torch.no_grad():
        for k in range(model.num_exits):
            xs.append(h)
            h = model.run_stage(k, h)
        xs.append(h)
        out = []
        for k in range(model.num_exits):
            for fn, x in ((lambda x, k=k: model.run_stage(k, x), xs[k]), (exit_with_confidence(model, k), xs[k + 1]),
                          (lambda x: x.clone(), xs[k + 1])):
                for _ in range(3):
                    fn(x)
                t = benchmark.Timer(stmt="fn(x)", globals={"fn": fn, "x": x},
                                    num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=seconds)
                out.append(1e3 * t.median)
    return np.asarray(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/demo")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    ckpt = Path(a.run) / "model" / "model.pt"
    if not ckpt.exists():
        sys.exit(f"no {ckpt}: run `make demo` first")
    torch.set_num_threads(a.threads)
    model, _ = load_checkpoint(ckpt)
    st = machine_state(a.threads)
    print(f"{model.config.name}: {a.threads} threads, load {st['load_1min']} on {st['cores']} cores, {st['cpu']}")
    runs = {"single-shot": [], "interleaved": []}
    with torch.no_grad():
        for rep in range(2):
            runs["single-shot"].append(single_shot(model))
            runs["interleaved"].append(profile_segments(model, batch_size=8, min_run_time=0.2,
                                                        seed=rep)["ms_b1"].to_numpy())
    names = [f"{s}{k}" for k in range(model.num_exits) for s in ("stage", "exit", "buffer")]
    print(f"{'segment':10s} " + " ".join(f"{m + ' ' + str(i + 1):>15s}" for m in runs for i in range(2)))
    for j, n in enumerate(names):
        print(f"{n:10s} " + " ".join(f"{runs[m][i][j]:15.4f}" for m in runs for i in range(2)))
    worst = {m: float(np.max(np.abs(r[0] / r[1] - 1))) for m, r in runs.items()}
    print(f"profile: repeat max |a/b - 1| single-shot {worst['single-shot']:.3f}, interleaved "
          f"{worst['interleaved']:.3f} over {len(names)} segments ({a.threads} threads)")


if __name__ == "__main__":
    main()
