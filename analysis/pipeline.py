"""The main job, end to end (the composition root)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

DEMO_TRAIN = dict(model="b-lenet", dataset="mnist5k", exits=(0, 1), epochs=30, batch_size=64, lr=3e-3,
                  augment_shift=2, seed=0)


def run_demo(out: str = "runs/demo", redo: bool = False, epochs: int = 30) -> dict:
    from branchy.train import TrainConfig, evaluate, load_checkpoint, train
    from branchy.data import load_dataset

    out_p = Path(out)
    ckpt = out_p / "model" / "model.pt"
    cfg = TrainConfig(**{**DEMO_TRAIN, "epochs": epochs})
    splits = load_dataset(cfg.dataset, **cfg.dataset_kwargs())
    if redo or not ckpt.exists():
        model = train(cfg, splits=splits, out_dir=ckpt.parent).model
    else:
        model, _ = load_checkpoint(ckpt)
        print(f"[demo] reusing {ckpt} (--redo to retrain)")
    ev = evaluate(model, splits.test)
    print("[demo] B-LeNet on mnist5k, test accuracy per exit (%):")
    print(ev.assign(accuracy=100 * ev.accuracy).to_string(index=False, float_format="%.2f"))

    from branchy.cache import CacheError, FeatureCache
    from branchy.dump import dump
    from .cli import print_cache_info

    cache_dir = out_p / "cache"
    try:
        if redo:
            raise CacheError("redo")
        cache = FeatureCache.open(cache_dir, model=model, dataset=splits)
        print(f"[demo] reusing cache {cache_dir}")
    except CacheError:
        cache = dump(model, splits, cache_dir, batch_size=256, pooling="grid:3", overwrite=True)
    print_cache_info(cache)
    return {"checkpoint": ckpt, "test_eval": ev, "cache": cache}
