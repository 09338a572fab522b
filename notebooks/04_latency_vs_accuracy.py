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
# # 04 · Latency versus accuracy, with buffering costs
# Every policy (full, cascade, patience, gated, jump, oracle) on `test`, thresholds from `calib`,
# under the cache's own measurements and under edge-device profiles.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt

from analysis.core.costs import list_profiles
from analysis.present.plots import plot_exit_distribution, plot_latency_breakdown, plot_pareto
from analysis.core.stats import format_headline
from analysis.core.policies import PolicyConfig
from analysis.study.compare import pareto_points, run_policies
from branchy.cache import FeatureCache
from predictors import load_predictors

SMALL = os.environ.get("BRANCHY_NB_SMALL") == "1"
OUT = Path(os.environ.get("BRANCHY_NB_OUT", "runs/notebooks"))
cache = FeatureCache.open(OUT / "cache")
preds = load_predictors(OUT / "predictors", cache)
cfg = PolicyConfig(target_acc=99, bootstrap=100 if SMALL else 1000)
list_profiles()

# %%
tables = {}
for profile in ["measured", "raspberry-pi-4", "mcu-npu"]:
    _, tables[profile] = run_policies(cache, predictors=preds, profile=profile, cfg=cfg)
    print(f"== {profile} (ms per sample at batch 1; 95% bootstrap CIs)")
    print(format_headline(tables[profile]))

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
for ax, profile in zip(axes, ["measured", "raspberry-pi-4"]):
    pts = pareto_points(cache, predictors=preds, profile=profile, cfg=cfg, n_settings=6 if SMALL else 15)
    plot_pareto(pts, tables[profile], ax=ax, title=profile)
plt.show()

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
plot_exit_distribution(tables["measured"], ax=axes[0])
plot_latency_breakdown(tables["mcu-npu"], ax=axes[1], title="mcu-npu: where the time goes")
plt.show()
