"""Robust timing: interleaved rounds, outlier rounds dropped, unstable segments flagged (on a fake clock,
so nothing here depends on how busy the machine is); re-measuring a cache keeps the old as history."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from branchy.runtime import interleaved_times, machine_state, robust_summary


class FakeClock:
    """Time advances only when a segment runs, by what its schedule says for the current round."""

    def __init__(self, cost):
        self.t, self.round, self.cost = 0.0, -1, cost

    def __call__(self):
        return self.t

    def set_round(self, r):
        self.round = r

    def fns(self):
        def make(name):
            def fn():
                self.t += self.cost(name, self.round)
            return fn

        return {n: make(n) for n in BASE}


def _run(cost, rounds=11):
    clock = FakeClock(cost)
    return interleaved_times(clock.fns(), rounds=rounds, target_ms=1.0, warmup=0, clock=clock,
                             on_round=clock.set_round)


BASE = {"stage0": 1e-3, "exit0": 2e-4, "stage1": 5e-4}


def test_a_slow_round_for_everyone_is_dropped_and_changes_nothing():
    slow_round = 4
    times = _run(lambda n, r: BASE[n] * (8.0 if r == slow_round else 1.0))
    s = robust_summary(times).set_index("name")
    assert s["rounds_dropped"].iloc[0] == 1
    for n, v in BASE.items():
        assert s.loc[n, "ms"] == pytest.approx(v * 1e3)
    assert not s["unstable"].any()


def test_a_segment_that_keeps_jumping_is_flagged_unstable():
    times = _run(lambda n, r: BASE[n] * (3.0 if (n == "exit0" and r % 2) else 1.0))
    s = robust_summary(times).set_index("name")
    assert s.loc["exit0", "unstable"] and not s.loc["stage0", "unstable"] and not s.loc["stage1", "unstable"]
    assert s.loc["exit0", "spread"] > 0.5


def test_interleaved_rounds_against_a_naive_per_round_loop():
    clock = FakeClock(lambda n, r: BASE[n])
    fns = clock.fns()
    t = interleaved_times(fns, rounds=5, target_ms=3.0, warmup=1, clock=clock)
    assert t.shape == (5, 3)
    np.testing.assert_allclose(t.to_numpy(), np.tile([BASE[n] * 1e3 for n in t.columns], (5, 1)))
    with pytest.raises(ValueError, match="rounds must be >= 3"):
        interleaved_times(fns, rounds=2, clock=clock)


def test_per_call_median_ignores_a_spike_inside_a_timing_the_mean_does_not():
    calls = {"n": 0}

    def cost(name, r):  # every 3rd call of stage0 is 10x slower
        if name != "stage0":
            return BASE[name]
        calls["n"] += 1
        return BASE[name] * (10.0 if calls["n"] % 3 == 0 else 1.0)

    for median, want in ((True, 1.0), (False, 4.0)):
        calls["n"] = 0
        clock = FakeClock(cost)
        t = interleaved_times(clock.fns(), rounds=4, warmup=0, clock=clock, on_round=clock.set_round,
                              fixed_reps={n: 3 for n in BASE}, per_call_median=median)
        np.testing.assert_allclose(t["stage0"], want, rtol=1e-9)  # ms: (1 + 1 + 10) / 3 = 4 for the mean
        np.testing.assert_allclose(t["exit0"], BASE["exit0"] * 1e3, rtol=1e-9)


def test_machine_state_warns_when_threads_exceed_idle_cores():
    import os

    cores = os.cpu_count() or 1
    with pytest.warns(RuntimeWarning, match="idle"):
        st = machine_state(cores + 8)
    assert st["oversubscribed"] and st["cores"] == cores and st["cpu"]


def test_reprofile_writes_a_new_measurement_and_keeps_the_old(toy_splits, tmp_path):
    from branchy.cache import FeatureCache, dump, reprofile
    from branchy.models import build_model

    torch.manual_seed(0)
    m = build_model("b-lenet", exits=(0, 1), num_classes=4).eval()
    c = dump(m, toy_splits, tmp_path / "c", progress=False, profile_time=0.03)
    old = c.costs.copy()
    assert {"ms_b1_spread", "rounds", "unstable"} <= set(old.columns) and (old["rounds"] >= 3).all()
    new = reprofile(tmp_path / "c", m, rounds=5, batch_size=8, min_run_time=0.03)
    assert (new.costs["batch_size"] == 8).all() and (new.costs["rounds"] >= 3).all()
    assert np.isfinite(new.costs["ms_b1"]).all() and (new.costs["ms_b1"] > 0).all()
    hist = sorted((tmp_path / "c" / "costs_history").glob("costs_*.csv"))
    assert len(hist) == 1
    np.testing.assert_allclose(pd.read_csv(hist[0])["ms_b1"], old["ms_b1"])
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["timing"]["threads"] >= 1
    assert FeatureCache.open(tmp_path / "c").fingerprint == c.fingerprint  # the data did not change
    other = build_model("b-lenet", exits=(0, 1), num_classes=4)
    with pytest.raises(ValueError, match="stale cache"):
        reprofile(tmp_path / "c", other, rounds=3, min_run_time=0.01)


def test_predictor_latency_is_measured_in_rounds_and_remeasured_with_history(toy_splits, tmp_path, capsys):
    from analysis.cli import main
    from branchy.cache import dump
    from branchy.models import build_model
    from branchy.train import save_checkpoint
    from predictors import PredictorSpec, fit_predictor, load_predictors, save_predictors

    torch.manual_seed(0)
    m = build_model("b-lenet", exits=(0, 1), num_classes=4).eval()
    save_checkpoint(m, tmp_path / "m.pt")
    c = dump(m, toy_splits, tmp_path / "c", progress=False, profile_time=0.02, checkpoint=str(tmp_path / "m.pt"))
    rule = (0.9, 0.9, np.inf)
    preds = [fit_predictor(c, PredictorSpec("gate", 0, "nn", 1, rule, params={"max_epochs": 5}), folds=2, timing=0.02),
             fit_predictor(c, PredictorSpec("gate", 1, "linear", 1, rule), folds=2, timing=0.02)]
    for p in preds:
        cost = p.cost
        assert cost["ms_b1"] > cost["pool_ms"] > 0 and cost["rounds"] >= 3 and "unstable" in cost
        assert cost["macs"] >= cost["pool_macs"] > 0 and cost["backends"]["eager"]["ms_b1"] == cost["ms_b1"]
    save_predictors(preds, tmp_path / "p")
    before = {n: p.cost["ms_b1"] for n, p in load_predictors(tmp_path / "p", c).items()}
    assert main(["profile", "--cache", str(tmp_path / "c"), "--predictors", str(tmp_path / "p"), "--rounds", "3",
                 "--profile-time", "0.02"]) == 0
    out = capsys.readouterr().out
    assert "re-measured 2 predictors" in out and "gate_at0_for1_nn" in out
    after = load_predictors(tmp_path / "p", c)
    for n, p in after.items():
        assert [h["ms_b1"] for h in p.cost["history"]] == [before[n]]  # the old figure is kept
        assert p.cost["ms_b1"] == p.cost["backends"]["eager"]["ms_b1"] > 0
    index = json.loads((tmp_path / "p" / "predictors.json").read_text())
    assert index["predictors"]["gate_at1_for1_linear"]["cost"]["history"]
