"""Scale-out (issue 15): a 2-rank ``torchrun`` dump against a single-process one, and the memory of a chunked
simulation as the split grows 100x.

1. **Dump.** An untrained B-ResNet-20 (3 side exits) on N synthetic 3x32x32 images, dumped by one process and by
   ``torchrun --nproc-per-node 2`` (gloo), each process with 1 thread, interleaved repetitions. Prints whether
   every array file is byte-identical (SHA-256 of the manifests), and images/s of the rows phase (manifest
   ``dump_seconds``: first row to last row written, all ranks) and of the whole command (process start,
   rendezvous and hashing included). On this 2-core box two ranks can at most double the rows phase.
2. **Memory.** Caches of 1e5, 1e6 and 1e7 test rows and as many calib rows up to 1e6 (3 exits, 10 classes, 8
   features per exit) written by ``cache_from_arrays`` from memory maps; in a fresh process each, the thesis's
   NN gate is cross-fitted on calib with its features read on demand (2 folds, 1 epoch, batch 4096: the memory
   of the fit, not its quality) and a gated placement plus the cascade simulated on test with
   ``simulate_chunked``; prints the peak RSS (MiB, ``VmHWM``) of that process. Calib stops at 1e6 rows because
   the fit keeps per-sample arrays (targets, out-of-fold outputs, fold indices: about 120 B per calib row;
   measured, 2129 MiB at 1e7 calib rows against 944 at 1e5), while the features stay on disk. The caches take about 2.6 GB on disk
   at 1e7 and are deleted afterwards.

Last line:

    scale: 2-rank dump identical yes|no, throughput 2-rank/1-rank R, RSS growth 1e5->1e7 M MiB

    python bench/bench_scale.py [--images 6000] [--repeats 2] [--rows 1e5,1e6,1e7] [--out runs/scale]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


# ----------------------------------------------------------------------------- jobs run in fresh processes
def dump_job(mode: str, out: str, images: int) -> None:
    import torch

    from branchy.data import ArrayDataset, DatasetInfo, Splits
    from branchy.cache import dump, dump_distributed
    from branchy.models import build_model

    torch.set_num_threads(1)
    g = np.random.default_rng(0)
    parts = {}
    for sp, m in (("train", images * 3 // 5), ("calib", images // 5), ("test", images // 5)):
        parts[sp] = ArrayDataset(torch.from_numpy(g.integers(0, 255, (m, 3, 32, 32), dtype=np.uint8)),
                                 torch.from_numpy(g.integers(0, 10, m)), (0.5,) * 3, (0.25,) * 3)
    splits = Splits(DatasetInfo("synthetic", 3, 32, 32, 10, (0.5,) * 3, (0.25,) * 3), **parts)
    torch.manual_seed(0)
    model = build_model("b-resnet", in_channels=3, image_size=32, exits=(0, 1, 2)).eval()
    fn = dump if mode == "single" else dump_distributed
    fn(model, splits, out, batch_size=128, profile=False, progress=False, overwrite=True, feature_dtype="float32")


def memory_job(cache_dir: str) -> None:
    import warnings

    from analysis.core.chunked import simulate_chunked
    from branchy.cache import FeatureCache
    from branchy.exits import ExitRule
    from placement import Gate, Placement
    from predictors import PredictorSpec, fit_predictor

    warnings.simplefilter("ignore")
    cache = FeatureCache.open(cache_dir)
    rule = ExitRule("entropy", (0.6, 0.6, np.inf))
    t = time.perf_counter()
    gate = fit_predictor(cache, PredictorSpec("gate", 0, "nn", 1, rule, params={"max_epochs": 1, "batch_size": 4096}),
                         folds=2, timing=0.01, stream=True)
    fit_s, t = time.perf_counter() - t, time.perf_counter()
    gated = Placement((True, True, True), (None, Gate(gate.spec.name, 0), None))
    rows = [simulate_chunked(cache, "test", pol, rule, predictors={gate.spec.name: gate}, cuts={1: 0.5})
            for pol in ("cascade", gated)]
    # VmHWM: this process's own peak; ru_maxrss would also hold the parent's size at fork (Linux keeps it on exec)
    rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024
    print(json.dumps({"rss_mib": rss, "fit_seconds": fit_s, "seconds": time.perf_counter() - t, "n": rows[0]["n"],
                      "cascade_ms": rows[0]["mean_ms"], "gated_ms": rows[1]["mean_ms"]}))


# ----------------------------------------------------------------------------- the bench
def _run(cmd, env=None) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                       cwd=ROOT)
    if r.returncode:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t, r


def bench_dump(out: Path, images: int, repeats: int) -> tuple[bool, float]:
    me = [sys.executable, str(Path(__file__).resolve()), "--images", str(images), "--job"]
    cmds = {"1 process": me + ["single", str(out / "one")],
            "2 ranks": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        str(Path(__file__).resolve()), "--images", str(images), "--job", "dist", str(out / "two")]}
    rows, wall = {k: [] for k in cmds}, {k: [] for k in cmds}
    for _ in range(repeats):  # interleaved: a noisy moment hits both
        for name, cmd in cmds.items():
            secs, _ = _run(cmd)
            m = json.loads((out / ("one" if name == "1 process" else "two") / "manifest.json").read_text())
            n = sum(m["splits"].values())
            rows[name].append(n / m["dump_seconds"])
            wall[name].append(n / secs)
    a = json.loads((out / "one" / "manifest.json").read_text())["files"]
    b = json.loads((out / "two" / "manifest.json").read_text())["files"]
    arrays = [f for f in a if f.endswith(".npy")]
    identical = all(a[f] == b.get(f) for f in arrays)
    print(f"\n== dump: untrained B-ResNet-20 (3 side exits), {n} synthetic 3x32x32 images, batch 128, float32 "
          f"features, 1 thread per process, {repeats} interleaved repetitions (median)")
    print(f"{'':10s} {'rows phase img/s':>17s} {'whole command img/s':>20s}")
    for k in cmds:
        print(f"{k:10s} {np.median(rows[k]):17.0f} {np.median(wall[k]):20.0f}")
    ratio = float(np.median(rows["2 ranks"]) / np.median(rows["1 process"]))
    print(f"array files byte-identical ({len(arrays)} files, SHA-256): {'yes' if identical else 'no'}; "
          f"2 ranks / 1 process: rows phase {ratio:.2f}x, whole command "
          f"{np.median(wall['2 ranks']) / np.median(wall['1 process']):.2f}x")
    return identical, ratio


CALIB_CAP = 1_000_000


def write_rows_cache(path: Path, n: int, chunk: int = 1 << 18) -> float:
    """A cache with ``n`` test rows and ``min(n, CALIB_CAP)`` calib rows (train 1000), 3 exits, 10 classes, 8 features per exit, written
    by cache_from_arrays from memory maps filled a chunk at a time. Returns the seconds it took."""
    from branchy.cache import cache_from_arrays, cost_table

    t = time.perf_counter()
    tmp = path.parent / (path.name + ".inputs")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    g = np.random.default_rng(0)
    data = {}
    for sp, m in (("train", 1000), ("calib", min(n, CALIB_CAP)), ("test", n)):
        y = np.lib.format.open_memmap(tmp / f"{sp}_y.npy", "w+", np.int64, (m,))
        z = np.lib.format.open_memmap(tmp / f"{sp}_z.npy", "w+", np.float32, (m, 3, 10))
        f = [np.lib.format.open_memmap(tmp / f"{sp}_f{i}.npy", "w+", np.float32, (m, 8)) for i in range(3)]
        for a in range(0, m, chunk):
            b = min(a + chunk, m)
            h = g.normal(size=b - a)  # a hidden hardness: easy samples are confident early, as in real nets
            yy = g.integers(0, 10, b - a)
            zz = g.normal(scale=0.5, size=(b - a, 3, 10)).astype(np.float32)
            for k, bar in enumerate((0.8, 0.0, -np.inf)):
                zz[np.arange(b - a), k, yy] += np.where(h > bar, 6.0, 1.0)
                f[k][a:b] = np.c_[h + g.normal(scale=0.5, size=b - a), g.normal(size=(b - a, 7))]
            y[a:b], z[a:b] = yy, zz
        for arr in (y, z, *f):
            arr.flush()
        data[sp] = (y, z, f)
    # priced like the synthetic caches of the tests: stages 1 ms / 1000 MACs, heads 0.1 ms / 100 MACs, buffers 0.01 ms
    costs = cost_table(3, stage_ms=1.0, exit_ms=0.1, buffer_ms=0.01, stage_macs=1000, exit_macs=100, act_bytes=1024)
    cache_from_arrays(path, data, costs=costs, overwrite=True)
    del data
    shutil.rmtree(tmp)
    return time.perf_counter() - t


def bench_memory(out: Path, sizes: list[int]) -> float:
    print("\n== memory: peak RSS (MiB) of a fresh process that cross-fits an NN gate on calib (features read on demand, "
          "2 folds, 1 epoch) and simulates the cascade and a gated placement on test, chunked (65536 rows per chunk)")
    print(f"{'test rows':>10s} {'cache MB':>9s} {'write s':>8s} {'fit s':>7s} {'simulate s':>11s} "
          f"{'peak RSS MiB':>13s}")
    rss = {}
    for n in sizes:
        path = out / f"rows-{n}"
        secs = write_rows_cache(path, n)
        mb = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
        _, r = _run([sys.executable, str(Path(__file__).resolve()), "--job", "memory", str(path)])
        res = json.loads(r.stdout.strip().splitlines()[-1])
        rss[n] = res["rss_mib"]
        print(f"{n:10.0e} {mb:9.0f} {secs:8.1f} {res['fit_seconds']:7.1f} {res['seconds']:11.1f} "
              f"{res['rss_mib']:13.0f}")
        shutil.rmtree(path)
    growth = rss[sizes[-1]] - rss[sizes[0]]
    print(f"RSS growth {sizes[0]:.0e} -> {sizes[-1]:.0e} rows: {growth:+.0f} MiB (target < 200)")
    return growth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=6000, help="synthetic images dumped (train 60 %%, calib/test 20 %%)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rows", default="1e5,1e6,1e7", help="test rows of the memory caches")
    ap.add_argument("--out", default="runs/scale")
    ap.add_argument("--job", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.job:
        kind, path = a.job
        return memory_job(path) if kind == "memory" else dump_job(kind, path, a.images)
    out = (ROOT / a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    identical, ratio = bench_dump(out, a.images, a.repeats)
    growth = bench_memory(out, [int(float(s)) for s in a.rows.split(",")])
    print(f"scale: 2-rank dump identical {'yes' if identical else 'no'}, throughput 2-rank/1-rank {ratio:.2f}, "
          f"RSS growth 1e5->1e7 {growth:.0f} MiB")


if __name__ == "__main__":
    main()
