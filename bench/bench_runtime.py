"""Simulated versus measured latency: the real early-exit runtime (branchy.runtime) at batch 1 on test
samples, against what the simulator predicts from the cache's own measured segment costs.

Run: .venv/bin/python bench/bench_runtime.py [--run runs/demo] [--n 300]
Needs a study folder with model/model.pt and cache/ (``make demo`` writes runs/demo). Prints mean ms
per sample at batch 1 for full and the calibrated cascade, measured and simulated (from the cache's costs,
and from the costs timed in the same interleaved rounds as the run), and their ratios.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.core.calibrate import thresholds_for_accuracy  # noqa: E402
from analysis.core.costs import CostModel  # noqa: E402
from analysis.core.simulate import simulate_cascade, simulate_full  # noqa: E402
from branchy.cache import FeatureCache  # noqa: E402
from branchy.train import data_config_of  # noqa: E402
from branchy.exits import confidence  # noqa: E402
from branchy.runtime import overhead_fns, overhead_from_times  # noqa: E402
from branchy.runtime import EarlyExitRuntime  # noqa: E402
from branchy.runtime import interleaved_times, robust_summary  # noqa: E402
from branchy.train import load_checkpoint  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--run", default="runs/demo")
ap.add_argument("--n", type=int, default=300, help="test samples, run one at a time")
ap.add_argument("--target-acc", type=float, default=99.0, help="percent (99: 99 %%)")
ap.add_argument("--rounds", type=int, default=9)
a = ap.parse_args()
run = Path(a.run)
if not (run / "model" / "model.pt").exists():
    sys.exit(f"no {run}/model/model.pt: run `make demo` first (or pass --run FOLDER of a study)")
model, meta = load_checkpoint(run / "model" / "model.pt")
cache = FeatureCache.open(run / "cache", model=model)
splits = data_config_of(meta).load()
cache.check(dataset=splits)

n = min(a.n, cache.size("test"))
x = splits.test.batch(torch.arange(n))[0]
z = np.asarray(cache.logits("test"))[:n]
correct = z.argmax(-1) == cache.labels("test")[:n, None]
t = thresholds_for_accuracy(np.asarray(cache.logits("calib")), cache.labels("calib"), a.target_acc / 100)
costs = CostModel.from_cache(cache, "measured")
k = cache.num_exits
sim = {"full": simulate_full(correct, costs).latency_ms.mean(),
       "cascade": simulate_cascade(confidence(z, "entropy") < t, correct, costs).latency_ms.mean()}
runtimes = {"full": EarlyExitRuntime(model, t, kept=[False] * (k - 1) + [True]), "cascade": EarlyExitRuntime(model, t)}
samples = [x[i : i + 1] for i in range(n)]
torch.set_num_threads(int(cache.manifest["threads"]))
print(f"{cache.manifest['model']['name']} on {cache.manifest['dataset']['name']}: {n} test samples one at a time, "
      f"{torch.get_num_threads()} threads (as the cache's timings), cpu; ms per sample at batch 1")

# one run, side by side: each round times every policy's loop over the samples and every segment, the
# runtime's overhead included, in a shuffled order; medians over the rounds
fns = overhead_fns(model, x=x[:1])
for name, rt in runtimes.items():
    fns[f"loop:{name}"] = lambda rt=rt: [rt(s) for s in samples]
with torch.no_grad():
    times = interleaved_times(fns, rounds=a.rounds, fixed_reps={f"loop:{p}": 1 for p in runtimes})
med = robust_summary(times).set_index("name")["ms"]
v = lambda seg: np.array([med[f"{seg}{i}"] for i in range(k)])  # noqa: E731
now = CostModel.from_arrays(v("stage"), v("exit"), v("buffer"), v("buffer"), **overhead_from_times(med, k))
sim_now = {"full": simulate_full(correct, now).latency_ms.mean(),
           "cascade": simulate_cascade(confidence(z, "entropy") < t, correct, now).latency_ms.mean()}
print(f"{'policy':8s} {'measured':>10s} {'sim(cache)':>10s} {'sim/meas':>9s} {'sim(now)':>10s} {'sim/meas':>9s}")
for name in runtimes:
    meas = med[f"loop:{name}"] / n
    print(f"{name:8s} {meas:10.4f} {sim[name]:10.4f} {sim[name] / meas:9.2f} {sim_now[name]:10.4f} "
          f"{sim_now[name] / meas:9.2f}")
print("sim(cache): from the cache's stored costs; sim(now): from the segments and overhead timed in the same "
      f"{a.rounds} interleaved rounds as the loops (the machine's drift since profiling removed)")
