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
# # 02 · Train predictors from the cache
# The exit rule is tuned on `calib` (each side exit's accepted samples 99 % right); gate, target-exit
# and entropy predictors are fitted on `calib` and evaluated on `calib` and `test`. No model, no GPU.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

from analysis.core.calibrate import calib_rule
from branchy.cache import FeatureCache
from predictors import PredictorSpec, evaluation_table, fit_predictor, save_predictors

SMALL = os.environ.get("BRANCHY_NB_SMALL") == "1"
OUT = Path(os.environ.get("BRANCHY_NB_OUT", "runs/notebooks"))
MODEL = "linear" if SMALL else "nn"
cache = FeatureCache.open(OUT / "cache")

# %%
rule = calib_rule(cache, 99)  # ExitRule: entropy thresholds tuned on calib (sequential), as in the README
print(rule)

# %%
K = cache.num_exits
specs = [PredictorSpec("gate", at=j, model=MODEL, for_exit=k, rule=rule, class_weight="balanced")
         for k in range(K - 1) for j in range(k + 1)]
specs += [PredictorSpec("exit", at=j, model=MODEL, rule=rule, class_weight="balanced", with_confidences=True)
          for j in range(K - 1)]
specs += [PredictorSpec("entropy", at=j, model=MODEL, for_exit=k, rule=rule) for k in range(K - 1) for j in range(k + 1)]
fitted = [fit_predictor(cache, s, timing=0.02 if SMALL else 0.1) for s in specs]
save_predictors(fitted, OUT / "predictors")
table = evaluation_table(fitted, cache)
table.drop(columns="confusion")

# %% [markdown]
# The two errors that cost: entering a branch in vain (compute and buffering wasted) and skipping an
# exit the sample would have left at.

# %%
d = table[table.split == "test"].melt(id_vars="predictor", value_vars=["false_enter", "false_skip"])
fig, ax = plt.subplots(figsize=(7, 3.5))
sns.barplot(d, y="predictor", x="value", hue="variable", ax=ax)
ax.set_xlabel("share of test samples")
plt.show()
