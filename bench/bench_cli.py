"""How fast does the ``branchy`` command answer? (issue 25) Wall-clock seconds from starting the process to its
exit, for ``branchy --help``, ``branchy --version`` and one-line argument errors of several commands, each run
R times in interleaved order (every repetition runs every case once, in a shuffled order), median and min-max.

    .venv/bin/python bench/bench_cli.py [--reps 7]

A command's own options are built only when that command runs, and building them imports what it configures:
``simulate``/``place`` need pandas, ``train``/``dump``/``validate``/``profile``/``fit-predictors`` need torch (their
settings live beside the code that uses them), so their errors take the seconds torch's import takes. The target
(``--help`` and an argument error under 1 s on an idle machine) is read on the ``simulate`` error. The idle cores
are sampled before the runs and printed; on a busy machine the figures are slower than an idle one's.

The last line reads ``cli: --help X s, error Y s (idle machine)`` (or ``(busy machine: N of C cores idle)``).
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from branchy.runtime import busy_cores  # noqa: E402

CASES = {
    "--help": ["--help"],
    "--version": ["--version"],
    "unknown command": ["nosuch"],
    "simulate error": ["simulate", "--cache", "c", "--out", "o", "--target-acc", "150"],
    "place error": ["place", "--cache", "c", "--predictors", "p", "--out", "o", "--max-acc-drop", "-1"],
    "train error": ["train", "--out", "o", "--epochs", "0"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    exe = shutil.which("branchy", path=str(Path(sys.executable).parent)) or shutil.which("branchy")
    cmd = [exe] if exe else [sys.executable, "-m", "analysis.cli"]
    busy = busy_cores(1.0)
    cores = os.cpu_count() or 1
    idle = cores - busy if busy is not None else float("nan")
    print(f"machine: {cores} cores, {idle:.1f} idle before the runs; command: {' '.join(cmd)}")
    times: dict[str, list[float]] = {k: [] for k in CASES}
    rng = random.Random(0)
    for _ in range(a.reps):
        order = list(CASES)
        rng.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            out = subprocess.run(cmd + CASES[k], capture_output=True, text=True)
            times[k].append(time.perf_counter() - t0)
            if k.endswith("error") or k == "unknown command":
                lines = out.stderr.strip().splitlines()
                assert out.returncode == 2 and len(lines) == 1, (k, out.returncode, out.stderr)
    print(f"{'case':18s} {'median s':>9s} {'min s':>7s} {'max s':>7s}   ({a.reps} runs each, interleaved)")
    for k, v in times.items():
        print(f"{k:18s} {np.median(v):9.3f} {min(v):7.3f} {max(v):7.3f}")
    state = "idle machine" if busy is not None and busy < 0.5 else f"busy machine: {idle:.1f} of {cores} cores idle"
    print(f"cli: --help {np.median(times['--help']):.2f} s, error {np.median(times['simulate error']):.2f} s ({state})")


if __name__ == "__main__":
    main()
