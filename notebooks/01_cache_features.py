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
# # 01 · Cache features once
# Train a B-LeNet with three exits on the embedded MNIST-5k (or reuse the checkpoint), freeze it, and
# dump every split once: logits of every exit, pooled branch-point features, labels and the
# per-segment cost table. Everything after this notebook reads only the cache.
#
# `BRANCHY_NB_SMALL=1` makes it tiny (1 epoch, short timing) for the test suite.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt

from analysis.study.pipeline import DEMO, step_dump, step_train
from analysis.present.plots import plot_entropy_hist
from dataclasses import replace

SMALL = os.environ.get("BRANCHY_NB_SMALL") == "1"
OUT = Path(os.environ.get("BRANCHY_NB_OUT", "runs/notebooks"))
cfg = replace(DEMO, out=str(OUT))
if SMALL:
    cfg = replace(cfg, train=replace(cfg.train, epochs=1), dump=replace(cfg.dump, profile_time=0.01))

# %%
splits = cfg.data.load()
print(splits.info, splits.sizes())
model, test_eval = step_train(cfg, splits, OUT, redo=False)
test_eval

# %% [markdown]
# Dump (reused when the cache on disk matches this model, data and pooling).

# %%
cache = step_dump(cfg, model, splits, OUT, redo=False)
cache

# %%
cache.summary()  # accuracy %, mean entropy (nats), cumulative MACs and measured ms at batch 1

# %%
cache.costs[["segment", "k", "macs", "act_bytes", "ms_b1", "ms_batch", "batch_size", "threads"]]

# %%
fig, ax = plot_entropy_hist(cache.table("test"), title="entropy at each exit (test)")
plt.show()
