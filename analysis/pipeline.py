"""The main job, end to end (the composition root)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

DEMO_TRAIN = dict(model="b-lenet", dataset="mnist5k", exits=(0, 1), epochs=30, batch_size=64, lr=3e-3,
                  augment_shift=2, seed=0)


DEMO_POOLING = "grid:3"
DEMO_TARGET_ACC = 0.99
DEMO_PROFILES = ("measured", "raspberry-pi-4")
DEMO_STRATEGY = "budget"  # each side exit's accepted calib samples must be this accurate


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
    from .cli import format_eval, print_cache_info

    cache_dir = out_p / "cache"
    try:
        if redo:
            raise CacheError("redo")
        cache = FeatureCache.open(cache_dir, model=model, dataset=splits)
        if cache.manifest["pooling"] != DEMO_POOLING:
            raise CacheError(f"pooling {cache.manifest['pooling']} is not {DEMO_POOLING}")
        print(f"[demo] reusing cache {cache_dir}")
    except CacheError:
        cache = dump(model, splits, cache_dir, batch_size=256, pooling=DEMO_POOLING, overwrite=True)
    print_cache_info(cache)

    preds, table, thresholds = demo_predictors(cache, out_p / "predictors", redo=redo)
    print(f"[demo] exit thresholds T (entropy, nats; calibrated on calib): {np.round(thresholds, 4).tolist()}")
    print("[demo] predictor quality (fit on calib; false_enter / false_skip are fractions of all samples):")
    print(format_eval(table))

    from .simulate_cli import simulate_to
    from .study import PolicyConfig

    print("[demo] simulating every policy with buffering costs (thresholds from calib, reported on test)")
    sim = simulate_to(cache, out_p / "simulate", predictors=preds, profiles=DEMO_PROFILES,
                      cfg=PolicyConfig(target_acc=DEMO_TARGET_ACC))

    from placement import Constraint

    from .cli import format_compare
    from .placement_study import run_placement, write_placement

    print(f"[demo] placement search ({DEMO_STRATEGY}, {DEMO_PROFILES[1]}): fastest within 0.5 points of full on calib")
    res, compare = run_placement(cache, preds, DEMO_STRATEGY, constraint=Constraint(max_acc_drop=0.5),
                                 profile=DEMO_PROFILES[1])
    write_placement(res, compare, out_p / "placement", profile_name=DEMO_PROFILES[1])
    print(f"[demo] chosen placement: {res.chosen.describe()} ({len(res.table)} candidates scored)")
    print(format_compare(compare))
    return {"checkpoint": ckpt, "test_eval": ev, "cache": cache, "predictors": preds, "thresholds": thresholds,
            "predictor_table": table, "simulation": sim, "placement": res, "placement_compare": compare}


def demo_predictors(cache, out: Path, *, redo: bool = False, model: str = "nn"):
    """Gate, target-exit and entropy predictors at every position, thresholds calibrated on calib
    (the samples each side exit accepts on calib are DEMO_TARGET_ACC accurate). Reused when already fitted on this cache."""
    from predictors.fit import evaluation_table, fit_predictor, load_predictors, save_predictors

    from .calibrate import thresholds_for_accuracy
    from .cli import predictor_specs

    t = thresholds_for_accuracy(np.asarray(cache.logits("calib")), cache.labels("calib"), DEMO_TARGET_ACC)
    specs = []
    for target in ("gate", "exit", "entropy"):
        cw = None if target == "entropy" else "balanced"
        specs += predictor_specs(cache, target, model, None, None, t, "entropy", target == "exit", cw)
    fitted = None
    if not redo and out.exists():
        try:
            have = load_predictors(out, cache)
            if all(s.name in have and have[s.name].spec == s for s in specs):
                fitted = [have[s.name] for s in specs]
                print(f"[demo] reusing predictors in {out}")
        except (ValueError, FileNotFoundError):
            fitted = None
    if fitted is None:
        fitted = [fit_predictor(cache, s) for s in specs]
        save_predictors(fitted, out)
    return {p.spec.name: p for p in fitted}, evaluation_table(fitted, cache), t
