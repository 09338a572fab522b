# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Placement search
# Which exits to keep, which to gate, by which predictor after which stage: every strategy scores its
# candidates on `calib` with the simulator under a device profile; the chosen placement is then
# re-evaluated on `test` next to full, cascade and the oracle.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from analysis.study.placement_study import run_placement
from analysis.present.plots import plot_placement_map, plot_search_front
from branchy.cache import FeatureCache
from placement import Constraint, list_strategies
from predictors import load_predictors

OUT = Path(os.environ.get("BRANCHY_NB_OUT", "runs/notebooks"))
PROFILE = "raspberry-pi-4"
cache = FeatureCache.open(OUT / "cache")
preds = load_predictors(OUT / "predictors", cache)
list_strategies()

# %%
rows, results = [], {}
for strategy in ["none", "all", "flops-fraction", "greedy", "exhaustive", "budget"]:
    res, compare = run_placement(cache, preds, strategy, constraint=Constraint(max_acc_drop=0.5), profile=PROFILE,
                                 progress=False)
    results[strategy] = res
    t = compare[(compare.split == "test") & compare.policy.str.startswith("placement")].iloc[0]
    rows.append({"strategy": strategy, "placement": res.chosen.describe(), "candidates": len(res.table),
                 "test_acc_%": t["accuracy_%"], "test_mean_ms": t.mean_ms, "test_p95_ms": t.p95_ms})
pd.DataFrame(rows)

# %%
compare  # the last strategy next to full, cascade and the oracle, on calib and test

# %%
fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
plot_placement_map(results["budget"].chosen, ax=a)
plot_search_front(results["budget"].table, ax=b, title="budget: candidates on calib")
plt.show()
