"""The references comparison run for real (analysis.study.realrun): the decided policies run by the real runtime take
the simulator's exits, measured profiles get real columns and modelled ones none, and a "predictors pay" verdict
needs the real run's CI below 1 too (latency figures are reported, never asserted)."""
import numpy as np
import pandas as pd
import pytest
import torch

from analysis.core.policies import PolicyConfig, calibrate
from analysis.study.verdict import pays, verdict
from analysis.core.costs import get_profile
from analysis.study.realrun import compare_for_real, ordered_pairs
from analysis.study.suite import paying, real_line
from branchy.cache import dump
from branchy.models import build_model
from placement import Constraint
from predictors import PredictorSpec, fit_predictor

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")


def test_compare_for_real_runs_measured_profiles_only_and_takes_the_simulators_exits(toy_splits, tmp_path):
    torch.manual_seed(0)
    m = build_model("b-lenet", exits=(0, 1), num_classes=4).eval()
    cache = dump(m, toy_splits, tmp_path / "c", progress=False, profile_time=0.02, pooling="grid:2")
    cfg = PolicyConfig(bootstrap=0)
    rule = calibrate(cache, cfg)
    preds = {p.spec.name: p for p in [
        fit_predictor(cache, PredictorSpec("gate", 0, "linear", 1, rule.thresholds), folds=2, timing=0.01),
        fit_predictor(cache, PredictorSpec("exit", 0, "linear", None, rule.thresholds), folds=2, timing=0.01)]}
    x = toy_splits.test.batch(torch.arange(16))[0]
    kw = dict(rule=rule, cfg=cfg, constraint=Constraint(max_acc_drop=5.0), model=m, test_x=x, reps=1, n_boot=50)
    row = compare_for_real(cache, preds, profile="measured", **kw)
    assert row["real_backend"] == "eager" and row["real_n"] == 16
    assert row["real_exit_match_%"] == 100.0  # every decided policy leaves where the simulator says
    for n in ("full", "cascade", "best_free"):
        assert row[f"real_{n}_ms"] > 0 and row[f"realsim_{n}_ms"] > 0
    assert row["real_free_vs_full_lo"] <= row["real_free_vs_full"] <= row["real_free_vs_full_hi"]
    assert np.isclose(row["realsim_cascade_vs_full"], row["realsim_cascade_ms"] / row["realsim_full_ms"])
    assert 0 <= row["real_pairs_agree"] <= row["real_pairs"] <= 6
    assert "Run for real (eager, 16 test samples at batch 1)" in row["verdict"]
    modelled = compare_for_real(cache, preds, profile="raspberry-pi-4", **kw)
    assert not any(k.startswith("real") for k in modelled)  # no real run can check a modelled device
    # the row without the real run is the plain comparison, whatever the real run found
    plain = {k: v for k, v in row.items() if not k.startswith("real") and k not in ("pays", "verdict")}
    ref = compare_for_real(cache, preds, profile="measured", **{**kw, "test_x": x[:0]})
    assert set(plain) == {k for k in ref if k not in ("pays", "verdict")}
    assert row["best_free_placement"] == ref["best_free_placement"]


def _row(sim_hi, real_hi=None, acc_lo=0.0):
    r = {"gated_vs_free": sim_hi - 0.01, "gated_vs_free_lo": sim_hi - 0.02, "gated_vs_free_hi": sim_hi,
         "gated_vs_free_acc_pts": 0.0, "gated_vs_free_acc_lo_pts": acc_lo, "gated_vs_free_acc_hi_pts": 0.0,
         "acc_eps_pts": 0.5}
    if real_hi is not None:
        r.update({"real_gated_vs_free": real_hi - 0.02, "real_gated_vs_free_lo": real_hi - 0.04,
                  "real_gated_vs_free_hi": real_hi})
    return r


def test_predictors_pay_only_where_the_simulation_and_the_real_run_agree():
    assert pays(_row(0.95))  # simulated only (a modelled device)
    assert pays(_row(0.95, real_hi=0.97))
    assert not pays(_row(0.95, real_hi=1.02))  # the real run does not confirm it
    assert not pays(_row(1.01, real_hi=0.9))  # nor does a real gain alone make the claim
    assert not pays(_row(0.95, real_hi=0.97, acc_lo=-2.0))
    df = pd.DataFrame([_row(0.95), _row(0.95, real_hi=0.97), _row(0.95, real_hi=1.02)])
    assert paying(df).tolist() == [True, True, False]


def test_the_verdict_says_when_the_real_run_does_not_confirm():
    row = {"profile": "measured", "cascade_vs_full": 0.9, "free_vs_full": 0.8, "best_free_placement": "e0:open e1:final",
           "best_free_rule": "target-acc 99%", "best_gated_placement": "gate@0", "perfect_gates_vs_free": np.nan,
           **_row(0.95, real_hi=1.02), "real_n": 50, "real_backend": "eager", "real_pairs": 3, "real_pairs_agree": 2,
           "real_cascade_vs_full": 0.8, "real_cascade_vs_full_lo": 0.7, "real_cascade_vs_full_hi": 0.9,
           "realsim_cascade_vs_full": 0.85, "realsim_gated_vs_free": 0.94}
    row["pays"] = pays(row)
    v = verdict(row)
    assert "do not pay here (the real run does not confirm it" in v
    assert "the gated placement 1.000 [0.980, 1.020] x the best predictor-free policy (simulated 0.940)" in v
    assert "the simulation orders 2 of 3 pairs" in v


def test_ordered_pairs_against_a_naive_count():
    ms = {"full": (1.0, 1.0), "cascade": (0.8, 0.9), "best_free": (0.7, 0.95), "best_gated": (0.71, 0.6)}
    row = {f"real_{k}_ms": a for k, (a, _) in ms.items()} | {f"realsim_{k}_ms": b for k, (_, b) in ms.items()}
    agree, total, bad = ordered_pairs(row)
    want_total = want_agree = 0
    names = list(ms)
    for i in range(4):
        for j in range(i + 1, 4):
            (ra, sa), (rb, sb) = ms[names[i]], ms[names[j]]
            if abs(ra / rb - 1) > 0.05:
                want_total += 1
                want_agree += (ra < rb) == (sa < sb)
    assert (agree, total) == (want_agree, want_total) and len(bad) == total - agree
    d = pd.DataFrame([{**row, **_row(0.95, real_hi=0.97), "real_n": 10, "real_backend": "eager",
                       "real_pairs": total, "real_pairs_agree": agree}, _row(0.9)])
    assert real_line(d).startswith(f"real runs: 1 rows (eager, batch 1), faster policy agrees in {agree} of {total} "
                                   f"pairs")
    assert real_line(pd.DataFrame([_row(0.9)])) is None


def test_the_backend_of_a_profile():
    assert get_profile("measured").backend == "eager" and get_profile("measured-onnxruntime").backend == "onnxruntime"
    assert not get_profile("raspberry-pi-4").measured
