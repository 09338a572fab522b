"""The real runtime against the simulator: every policy takes the exits the simulator says, on a plain and
a chained model (latency figures are reported, never asserted)."""
import re

import numpy as np
import pytest
import torch

from analysis.study import PolicyConfig
from analysis.validate import plot_validate, validate, validate_line
from branchy.dump import dump
from branchy.models import build_model
from placement import Gate, Placement
from predictors import PredictorSpec, fit_predictor

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")


@pytest.mark.parametrize("chain", ["none", "boost"])
def test_runtime_exits_equal_the_simulator_for_every_policy(toy_splits, tmp_path, chain):
    torch.manual_seed(0)
    m = build_model("b-lenet", exits=(0, 1), num_classes=4, chain=chain).eval()
    cache = dump(m, toy_splits, tmp_path / "c", progress=False, profile_time=0.02, pooling="grid:2")
    preds = None
    pls = None
    if chain == "none":
        rule = (0.9, 0.9, np.inf)
        preds = {p.spec.name: p for p in [
            fit_predictor(cache, PredictorSpec("gate", 0, "nn", 1, rule, params={"max_epochs": 20}), folds=3,
                          timing=0.01),
            fit_predictor(cache, PredictorSpec("entropy", 1, "linear", 1, rule), folds=3, timing=0.01)]}
        pls = {"gate0 for 1, exit 0 removed": Placement((False, True, True), (None, Gate("gate_at0_for1_nn", 0), None)),
               "entropy gate": Placement((True, True, True), (None, Gate("entropy_at1_for1_linear", 1), None))}
    x = toy_splits.test.batch(torch.arange(24))[0]
    df = validate(cache, m, x, predictors=preds, cfg=PolicyConfig(n_boot=0), placements=pls, reps=1, n_boot=50)
    want = {"full", "cascade"} | (set(pls) if pls else set())
    assert want <= set(df.policy)
    assert (df["exit_match_%"] == 100).all(), df[["policy", "exit_match_%"]]
    assert (df.meas_mean_ms > 0).all() and (df.sim_mean_ms > 0).all()
    assert re.fullmatch(r"validate: worst \|sim/meas - 1\| = \d+\.\d{3} over \d+ policies \(batch 1, eager\)",
                        validate_line(df))
    fig, ax = plot_validate(df)
    assert len(ax.lines) >= 1
