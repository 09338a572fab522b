"""Simulated versus measured latency: the real early-exit runtime (branchy.runtime) at batch 1 on test
samples, against what the simulator predicts from the cache's own measured segment costs.

Run: .venv/bin/python bench/bench_runtime.py [--run runs/demo] [--n 300]
Needs a study folder with model/model.pt and cache/ (``make demo`` writes runs/demo). Prints mean ms
per sample at batch 1 for full and the calibrated cascade, measured and simulated, and their ratio.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.calibrate import thresholds_for_accuracy  # noqa: E402
from analysis.costs import CostModel  # noqa: E402
from analysis.simulate import simulate_cascade, simulate_full  # noqa: E402
from branchy.cache import FeatureCache  # noqa: E402
from branchy.data import load_dataset  # noqa: E402
from branchy.measures import confidence  # noqa: E402
from branchy.runtime import EarlyExitRuntime  # noqa: E402
from branchy.train import load_checkpoint  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--run", default="runs/demo")
ap.add_argument("--n", type=int, default=300, help="test samples, run one at a time")
ap.add_argument("--target-acc", type=float, default=0.99)
a = ap.parse_args()
run = Path(a.run)
if not (run / "model" / "model.pt").exists():
    sys.exit(f"no {run}/model/model.pt: run `make demo` first (or pass --run FOLDER of a study)")
model, meta = load_checkpoint(run / "model" / "model.pt")
cache = FeatureCache.open(run / "cache", model=model)
tc = meta["train_config"]
splits = load_dataset(tc["dataset"], root=tc["data_root"], path=tc["data_path"], seed=tc["seed"])
cache.check(dataset=splits)

n = min(a.n, cache.size("test"))
x = splits.test.batch(torch.arange(n))[0]
z = np.asarray(cache.logits("test"))[:n]
correct = z.argmax(-1) == cache.labels("test")[:n, None]
t = thresholds_for_accuracy(np.asarray(cache.logits("calib")), cache.labels("calib"), a.target_acc)
costs = CostModel.from_cache(cache, "measured")
k = cache.num_exits
sim = {"full": simulate_full(correct, costs).latency_ms.mean(),
       "cascade": simulate_cascade(confidence(z, "entropy") < t, correct, costs).latency_ms.mean()}
runtimes = {"full": EarlyExitRuntime(model, t, kept=[False] * (k - 1) + [True]), "cascade": EarlyExitRuntime(model, t)}
samples = [x[i : i + 1] for i in range(n)]
torch.set_num_threads(int(cache.manifest["threads"]))
print(f"{cache.manifest['model']['name']} on {cache.manifest['dataset']['name']}: {n} test samples one at a time, "
      f"{torch.get_num_threads()} threads (as the cache's timings), cpu; ms per sample at batch 1")
print(f"{'policy':8s} {'measured':>10s} {'simulated':>10s} {'sim/meas':>9s}")
for name, rt in runtimes.items():
    def loop(rt=rt):
        for s in samples:
            rt(s)

    loop()
    m = benchmark.Timer(stmt="loop()", globals={"loop": loop}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=2.0)
    meas = 1e3 * m.median / n
    print(f"{name:8s} {meas:10.4f} {sim[name]:10.4f} {sim[name] / meas:9.2f}")
