"""Does calibrating a gate make its probability read as one? For every side exit of a cache, a gate right after
the exit's stage (model ``nn``, balanced class weights, cross-fitted on calib) fitted raw, with ``sigmoid`` and
with ``isotonic`` calibration; prints per gate Brier score, ECE (15 bins) and ROC AUC on test, the samples that
reach the exit, and last the line

    calibration: test ECE raw max E0 -> sigmoid max E1, isotonic max E2 (G gates)

The cache's own exit rule (its study's thresholds) comes from ``--predictors`` (any gate or entropy predictor's
rule there) or is calibrated by target accuracy on calib (``--target-acc``).

    python bench/bench_calibration.py [--cache runs/backbones/b-resnet-corrupted-joint/cache]
"""
import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from branchy.cache import FeatureCache  # noqa: E402
from predictors import PredictorSpec, fit_predictor  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--cache", default="runs/backbones/b-resnet-corrupted-joint/cache")
ap.add_argument("--predictors", default=None, help="a predictors folder whose exit rule to use (default: beside "
                                                   "the cache)")
ap.add_argument("--model", default="nn")
a = ap.parse_args()
cache_dir = Path(a.cache)
if not (cache_dir / "manifest.json").is_file():
    sys.exit(f"no cache at {cache_dir}: run `python bench/bench_backbones.py` (or `make demo` and pass "
             f"--cache runs/demo/cache)")
cache = FeatureCache.open(cache_dir)
pdir = Path(a.predictors) if a.predictors else cache_dir.parent / "predictors"
from predictors.store import load_predictors  # noqa: E402

rules = [p.spec.rule for p in load_predictors(pdir, cache).values() if p.spec.rule is not None]
if not rules:
    sys.exit(f"no exit rule in {pdir}: pass --predictors DIR of a study on this cache")
rule = rules[0]
print(f"cache {cache_dir} ({cache.num_exits} exits), {rule.describe()}; model {a.model}, balanced class weights, "
      f"5-fold cross-fit on calib, scored on test")
rows = []
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for k in range(cache.num_exits - 1):
        for cal in (None, "sigmoid", "isotonic"):
            p = fit_predictor(cache, PredictorSpec("gate", k, a.model, k, rule, class_weight="balanced",
                                                   calibration=cal), timing=0.01)
            e = p.evaluate(cache, "test")
            rows.append({"exit": k, "calibration": cal or "raw", "reached": e["reached"],
                         "leave_%": 100 * e.get("positive_rate", np.nan), "brier": e["brier"], "ece": e["ece"],
                         "roc_auc": e["roc_auc"], "balanced_acc@0.5": e["balanced_accuracy"]})
df = pd.DataFrame(rows)
print(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
mx = df.groupby("calibration")["ece"].max()
print(f"calibration: test ECE raw max {mx['raw']:.3f} -> sigmoid max {mx['sigmoid']:.3f}, isotonic max "
      f"{mx['isotonic']:.3f} ({cache.num_exits - 1} gates)")
