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
# per-segment cost table. Everything after this notebook reads only the cache. The calls are the README's.
#
# `BRANCHY_NB_SMALL=1` makes it tiny (1 epoch, short timing) for the test suite.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt

from analysis.present.plots import plot_entropy_hist
from branchy.cache import CacheError, FeatureCache, dump
from branchy.data import DataConfig
from branchy.models import BackboneConfig
from branchy.train import TrainConfig, evaluate, load_checkpoint, train

SMALL = os.environ.get("BRANCHY_NB_SMALL") == "1"
OUT = Path(os.environ.get("BRANCHY_NB_OUT", "runs/notebooks"))
EPOCHS = 1 if SMALL else 30
TIMING = {"profile_time": 0.01} if SMALL else {}  # s of timing per segment and batch size (default 0.2)

# %%
splits = DataConfig("mnist5k").load()  # train / calib / test
print(splits.info, splits.sizes())
ckpt = OUT / "model" / "model.pt"
if ckpt.exists():
    model, meta = load_checkpoint(ckpt)  # reuse the trained net (delete the folder to retrain)
else:
    model = train(TrainConfig(epochs=EPOCHS, batch_size=64, lr=3e-3, augment_shift=2),
                  BackboneConfig("b-lenet", exits=(0, 1)), splits, out_dir=ckpt.parent).model.cpu()
evaluate(model, splits.test)  # accuracy and loss of every exit on test

# %% [markdown]
# Dump (reused when the cache on disk was written from this model and data: opening it checks both).

# %%
try:
    cache = FeatureCache.open(OUT / "cache", model=model, dataset=splits)
except CacheError:
    cache = dump(model, splits, OUT / "cache", overwrite=True, checkpoint=str(ckpt), **TIMING)
cache

# %%
cache.summary()  # accuracy %, mean entropy (nats), cumulative MACs and measured ms at batch 1

# %%
cache.costs[["segment", "k", "macs", "act_bytes", "ms_b1", "ms_batch", "batch_size", "threads"]]

# %%
fig, ax = plot_entropy_hist(cache.table("test"), title="entropy at each exit (test)")
plt.show()
