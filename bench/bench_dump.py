"""Dump throughput vs a bare ``forward_exits`` pass, and dump peak memory for two dataset sizes (4x).

Run: .venv/bin/python bench/bench_dump.py [--model b-lenet] [--n 8000] [--batch-size 256]
Prints images/s of both passes measured side by side in one run (same data, same batch size, same
threads) and their ratio; then peak RSS (MiB) of a dump in a fresh process for N and 4N images.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from branchy.data import ArrayDataset, DatasetInfo, Splits  # noqa: E402
from branchy.cache import dump  # noqa: E402
from branchy.models import build_model  # noqa: E402


def synthetic_splits(n: int, c: int = 1, s: int = 28) -> Splits:
    g = np.random.default_rng(0)
    parts = {}
    for sp, m in (("train", n), ("calib", n // 4), ("test", n // 4)):
        parts[sp] = ArrayDataset(torch.from_numpy(g.integers(0, 255, (m, c, s, s), dtype=np.uint8)),
                                 torch.from_numpy(g.integers(0, 10, m)), (0.5,) * c, (0.25,) * c)
    return Splits(DatasetInfo("synthetic", c, s, s, 10, (0.5,) * c, (0.25,) * c), **parts)


@torch.no_grad()
def bare_pass(model, splits, batch_size):
    for sp in ("train", "calib", "test"):
        for xb, _ in splits[sp].iter_batches(batch_size):
            model.forward_exits(xb)


def throughput(model_name: str, n: int, batch_size: int, repeats: int = 5) -> None:
    size = 28 if model_name == "b-lenet" else 32
    c = 1 if model_name == "b-lenet" else 3
    torch.manual_seed(0)
    model = build_model(model_name, in_channels=c, image_size=size).eval()
    splits = synthetic_splits(n, c, size)
    total = sum(len(splits[s]) for s in ("train", "calib", "test"))
    tmp = Path(tempfile.mkdtemp())
    bare, dumped = [], []
    bare_pass(model, splits, batch_size)  # warm-up
    for r in range(repeats):  # interleaved, so drift hits both alike
        t = time.perf_counter()
        bare_pass(model, splits, batch_size)
        bare.append(total / (time.perf_counter() - t))
        t = time.perf_counter()
        dump(model, splits, tmp / "c", batch_size=batch_size, profile=False, progress=False, overwrite=True)
        dumped.append(total / (time.perf_counter() - t))
    shutil.rmtree(tmp)
    b, d = float(np.median(bare)), float(np.median(dumped))
    print(f"[throughput] {model_name}, {total} images, batch {batch_size}, {torch.get_num_threads()} threads, cpu")
    print(f"  bare forward_exits : {b:10.0f} img/s (median of {repeats})")
    print(f"  dump (to disk)     : {d:10.0f} img/s (median of {repeats})")
    print(f"  ratio dump/bare    : {d / b:10.3f}  (target >= 0.85)")


def _rss_child(n: int, batch_size: int, out: str) -> None:
    import threading

    import psutil

    splits = synthetic_splits(n)
    torch.manual_seed(0)
    model = build_model("b-lenet").eval()
    proc = psutil.Process()
    before = proc.memory_info().rss
    peak, done = [before], threading.Event()

    def sample():  # the current RSS every 2 ms while the dump runs
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    th = threading.Thread(target=sample)
    th.start()
    dump(model, splits, out, batch_size=batch_size, profile=False, progress=False, overwrite=True)
    done.set()
    th.join()
    total = sum(len(splits[s]) for s in ("train", "calib", "test"))
    out_mib = sum(f.stat().st_size for f in Path(out).rglob("*.npy")) / 2**20
    print(json.dumps({"images": total, "before_mib": before / 2**20, "peak_mib": peak[0] / 2**20,
                      "cache_mib": out_mib}))


def memory(n: int, batch_size: int) -> None:
    print(f"[memory] peak RSS of a b-lenet dump in a fresh process, batch {batch_size}")
    for m in (n, 4 * n):
        with tempfile.TemporaryDirectory() as d:
            res = subprocess.run([sys.executable, __file__, "--rss-child", str(m), "--batch-size", str(batch_size),
                                  "--out", str(Path(d) / "c")], capture_output=True, text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"  {r['images']:7d} images: RSS before the dump {r['before_mib']:7.1f} MiB, peak during it "
              f"{r['peak_mib']:7.1f} MiB, growth {r['peak_mib'] - r['before_mib']:6.1f} MiB "
              f"(cache written: {r['cache_mib']:.1f} MiB)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="b-lenet")
    ap.add_argument("--n", type=int, default=8000, help="train images (calib and test get n/4 each)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rss_child is not None:
        _rss_child(a.rss_child, a.batch_size, a.out)
    else:
        throughput(a.model, a.n, a.batch_size)
        memory(a.n, a.batch_size)
