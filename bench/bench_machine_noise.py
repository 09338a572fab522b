"""How steady is this machine? (issue 22) The ceiling on how close *stored* costs can come to a later real run: the
same model's `full` path and default cascade, on eager and on ONNX Runtime, run by the real runtime on the same test
samples one at a time (batch 1), interleaved, in R rounds a few seconds apart inside one process. Per path it prints
the mean ms of every round, the rounds' coefficient of variation (CV) and min-max, and the CV of each path's ratio
to eager `full` in the same round. Where one path's round means move by more than 10 % while the ratios stay put,
no stored absolute cost can meet |sim/meas - 1| <= 0.10 run after run, while speed-ups can.

    .venv/bin/python bench/bench_machine_noise.py [--checkpoint runs/demo/model/model.pt] [--rounds 10] [--n 100]
        [--pause 2]

Units: ms per sample at batch 1, torch's threads (and as many ONNX Runtime intra-op threads). The last line reads
`machine noise: round-to-round CV of one path's mean = X (worst path; min-max ratio Y), of its ratio to eager full
= Z (R rounds of N samples, batch 1)`.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from branchy.runtime import prepare  # noqa: E402
from branchy.train import data_config_of, load_checkpoint  # noqa: E402
from branchy.runtime import EarlyExitRuntime  # noqa: E402
from branchy.runtime import machine_state  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="runs/demo/model/model.pt")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--n", type=int, default=100, help="test samples per round, one at a time")
    ap.add_argument("--pause", type=float, default=2.0, help="seconds between rounds")
    ap.add_argument("--backends", default="eager,onnxruntime")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    if not Path(a.checkpoint).is_file():
        sys.exit(f"no checkpoint at {a.checkpoint}: run `make demo` first (or give --checkpoint)")
    model, meta = load_checkpoint(a.checkpoint)
    model = model.eval()
    x = data_config_of(meta).load().test.batch(torch.arange(a.n))[0]
    k = model.num_exits
    state = machine_state(torch.get_num_threads())
    rts = {}
    for b in [b.strip() for b in a.backends.split(",") if b.strip()]:
        segs = prepare(model, b)
        rts[f"full ({b})"] = EarlyExitRuntime(model, [np.inf] * (k - 1), kept=[False] * (k - 1) + [True],
                                              segments=segs)
        if not model.chained:
            rts[f"cascade ({b})"] = EarlyExitRuntime(model, [0.3] * (k - 1), segments=segs)
    names = list(rts)
    ref = names[0]
    g = np.random.default_rng(0)
    means = {n: [] for n in names}
    with torch.no_grad():
        for n in names:  # warm up
            for i in range(min(20, a.n)):
                rts[n](x[i : i + 1])
        for r in range(a.rounds):
            t = {n: [] for n in names}
            for i in range(a.n):
                for j in g.permutation(len(names)):
                    t0 = time.perf_counter()
                    rts[names[j]](x[i : i + 1])
                    t[names[j]].append((time.perf_counter() - t0) * 1e3)
            for n in names:
                means[n].append(float(np.mean(t[n])))
            if r < a.rounds - 1:
                time.sleep(a.pause)
    print(f"{model.config.name}, {a.rounds} rounds of {a.n} test samples at batch 1, {a.pause:g} s apart, "
          f"{torch.get_num_threads()} threads; the speed probe read {state['probe_ms']:.3f} ms at the start")
    worst_cv = worst_span = worst_rcv = 0.0
    for n in names:
        m = np.array(means[n])
        ratio = m / np.array(means[ref])
        cv, rcv = m.std() / m.mean(), ratio.std() / ratio.mean()
        print(f"  {n:24s} mean {m.mean():.4f} ms, rounds {m.min():.4f}-{m.max():.4f} (x{m.max() / m.min():.2f}), "
              f"CV {cv:.3f}; ratio to {ref}: {ratio.mean():.3f}, CV {rcv:.3f}")
        print("    rounds: " + " ".join(f"{v:.4f}" for v in m))
        worst_cv, worst_span = max(worst_cv, cv), max(worst_span, m.max() / m.min())
        if n != ref:
            worst_rcv = max(worst_rcv, rcv)
    print(f"machine noise: round-to-round CV of one path's mean = {worst_cv:.3f} (worst path; min-max ratio "
          f"{worst_span:.2f}), of its ratio to eager full = {worst_rcv:.3f} ({a.rounds} rounds of {a.n} samples, "
          f"batch 1)")


if __name__ == "__main__":
    main()
