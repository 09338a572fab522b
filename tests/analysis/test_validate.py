"""The real runtime against the simulator: every policy takes the exits the simulator says, on a plain and
a chained model (latency figures are reported, never asserted)."""
import re

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.core.policies import PolicyConfig
from analysis.present.plots import plot_validate
from analysis.study.validate import validate
from analysis.study.validate_lines import fit_line, pairs_line, recheck_line, validate_line
from branchy.cache import dump
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
            fit_predictor(cache, PredictorSpec("entropy", 1, "linear", 1, rule), folds=3, timing=0.01),
            fit_predictor(cache, PredictorSpec("exit", 0, "nn", None, rule, params={"max_epochs": 20}), folds=3,
                          timing=0.01),
            fit_predictor(cache, PredictorSpec("exit", 0, "linear", None, rule), folds=3, timing=0.01)]}
        pls = {"gate0 for 1, exit 0 removed": Placement((False, True, True), (None, Gate("gate_at0_for1_nn", 0), None)),
               "entropy gate": Placement((True, True, True), (None, Gate("entropy_at1_for1_linear", 1), None)),
               "jump (nn)": Placement((True, True, True), (None, None, None), Gate("exit_at0_nn", 0)),
               "jump (linear) + gate": Placement((True, True, True), (None, Gate("gate_at0_for1_nn", 0), None),
                                                 Gate("exit_at0_linear", 0))}
    x = toy_splits.test.batch(torch.arange(24))[0]
    df = validate(cache, m, x, predictors=preds, cfg=PolicyConfig(bootstrap=0), placements=pls, reps=1, n_boot=50)
    from analysis.core.policies import POLICIES

    run_as_is = {n for n in POLICIES.names() if POLICIES.get(n).runtime and POLICIES.get(n).run is not None}
    assert {"full", "cascade"} <= run_as_is
    want = run_as_is | (set(pls) if pls else set())
    assert want <= set(df.policy)
    assert (df["exit_match_%"] == 100).all(), df[["policy", "exit_match_%"]]
    assert (df.meas_mean_ms > 0).all() and (df.sim_mean_ms > 0).all()
    assert re.fullmatch(r"validate: worst \|sim/meas - 1\| = \d+\.\d{3} over \d+ policies \(batch 1, eager\)",
                        validate_line(df))
    # pairs of policies ordered alike, against a naive count
    real, sim = df.meas_mean_ms.to_numpy(), df.sim_mean_ms.to_numpy()
    pairs = [(i, j) for i in range(len(df)) for j in range(i + 1, len(df)) if abs(real[i] / real[j] - 1) > 0.05]
    agree = sum((real[i] < real[j]) == (sim[i] < sim[j]) for i, j in pairs)
    assert pairs_line(df).startswith(f"faster policy agrees in {agree} of {len(pairs)} pairs of policies")
    # the same run simulated with the costs timed during it, round by round
    assert df["sim_now_mean_ms"].gt(0).all() and df["ratio_now"].gt(0).all() and (df["drift"] > 0).all()
    assert re.fullmatch(r"with costs timed during the run: worst \|sim/meas - 1\| = \d+\.\d{3}; the full path took "
                        r"\d+\.\d{2}x its profiled time during the run \(machine drift\)", recheck_line(df))
    assert recheck_line(validate(cache, m, x[:6], cfg=PolicyConfig(bootstrap=0), reps=1, n_boot=10, recheck=False)) is None
    # each policy predicted by costs fitted (NNLS) on the other policies' measured path times
    ok = df["fit_predictable_%"] >= 95
    assert df.loc[ok, "sim_fit_mean_ms"].gt(0).all() and df.loc[~ok, "sim_fit_mean_ms"].isna().all()
    assert re.fullmatch(r"with costs fitted on the other policies' path times \(NNLS, each policy held out\): worst "
                        r"\|sim/meas - 1\| = \d+\.\d{3} over \d+ policies( \(.*: paths the others do not span\))?",
                        fit_line(df))
    fig, ax = plot_validate(df)
    assert len(ax.lines) >= 1


@pytest.mark.slow
def test_every_backend_takes_the_same_exits_and_its_costs_become_a_profile(toy_splits, tmp_path):
    from analysis.core.costs import CostModel
    from branchy.runtime import list_backends, prepare
    from branchy.cache import reprofile
    from branchy.runtime import EarlyExitRuntime

    torch.manual_seed(0)
    m = build_model("b-lenet", exits=(0, 1), num_classes=4).eval()
    x = toy_splits.test.batch(torch.arange(32))[0]
    gate = lambda h: h.mean((1, 2, 3)) > h.mean()  # noqa: E731  a gate that lets some rows in
    ref = EarlyExitRuntime(m, (0.9, 0.9), gates={1: (0, gate)})(x)
    assert set(list_backends()) == {"eager", "compiled", "onnxruntime"}
    for backend in ("compiled", "onnxruntime"):
        rt = EarlyExitRuntime(m, (0.9, 0.9), gates={1: (0, gate)}, segments=prepare(m, backend))
        pred, taken = rt(x)
        np.testing.assert_array_equal(taken.numpy(), ref[1].numpy())
        np.testing.assert_array_equal(pred.numpy(), ref[0].numpy())
        one = torch.cat([rt(x[i : i + 1])[1] for i in range(8)])  # the lean batch-1 path agrees
        np.testing.assert_array_equal(one.numpy(), ref[1][:8].numpy())
    cache = dump(m, toy_splits, tmp_path / "c", progress=False, profile_time=0.02, pooling="grid:2")
    with pytest.raises(ValueError, match="branchy profile --cache .* --backend onnxruntime"):
        CostModel.from_cache(cache, "measured-onnxruntime")
    rule = (0.9, 0.9, np.inf)
    fit = lambda spec: fit_predictor(cache, spec, folds=3, timing=0.01)  # noqa: E731
    preds = {p.spec.name: p for p in [fit(PredictorSpec("gate", 0, "nn", 1, rule, params={"max_epochs": 20})),
                                      fit(PredictorSpec("gate", 1, "linear", 1, rule)),
                                      fit(PredictorSpec("exit", 0, "nn", None, rule, params={"max_epochs": 20}))]}
    pls = {"gate nn": Placement((True, True, True), (None, Gate("gate_at0_for1_nn", 0), None)),
           "gate linear, exit 0 removed": Placement((False, True, True), (None, Gate("gate_at1_for1_linear", 1), None)),
           "jump + gate": Placement((True, True, True), (None, Gate("gate_at0_for1_nn", 0), None),
                                    Gate("exit_at0_nn", 0))}
    from predictors.cost import remeasure

    for backend in ("compiled", "onnxruntime"):
        cache = reprofile(tmp_path / "c", m, rounds=3, min_run_time=0.02, backend=backend)
        assert backend in cache.backends and backend in cache.manifest["backends"]
        cm = CostModel.from_cache(cache, f"measured-{backend}")
        assert cm.profile == f"measured-{backend}" and (cm.stage_ms > 0).all()
        with pytest.raises(ValueError, match=f"branchy profile .*--predictors .*--backend {backend}"):
            validate(cache, m, x[:12], predictors=preds, cfg=PolicyConfig(bootstrap=0), placements=pls, reps=1,
                     n_boot=20, backend=backend)
        eager_ms = {n: p.cost["ms_b1"] for n, p in preds.items()}
        new = remeasure(list(preds.values()), cache, backend=backend, rounds=3, min_run_time=0.02)
        assert set(new) == set(preds) and all(v["ms_b1"] > 0 and v["backend"] == backend for v in new.values())
        assert {n: p.cost["ms_b1"] for n, p in preds.items()} == eager_ms  # eager figures untouched
        df = validate(cache, m, x[:12], predictors=preds, cfg=PolicyConfig(bootstrap=0), placements=pls, reps=1,
                      n_boot=20, backend=backend)
        assert set(pls) <= set(df.policy)
        assert (df["exit_match_%"] == 100).all(), (backend, df[["policy", "exit_match_%"]])
        assert validate_line(df).endswith(f"(batch 1, {backend})")
    with pytest.raises(ValueError, match="chained exits"):
        prepare(build_model("b-lenet", exits=(0, 1), num_classes=4, chain="boost"), "onnxruntime")


@pytest.mark.slow
def test_validate_takes_step_by_step_outputs(tmp_path, capsys):
    """train -> dump -> fit-predictors -> place, then validate from those files (no study folder)."""
    from analysis.cli import main

    t = str(tmp_path)
    data = ["--data-option", "sizes=[150,100,100]"]
    assert main(["train", "--model", "b-lenet", "--exits", "0,1", "--epochs", "1", "--out", f"{t}/m", *data]) == 0
    assert main(["dump", "--checkpoint", f"{t}/m/model.pt", "--out", f"{t}/c", "--profile-time", "0.01"]) == 0
    assert main(["fit-predictors", "--cache", f"{t}/c", "--target", "gate", "--model", "linear", "--at", "0",
                 "--for", "1", "--folds", "2", "--out", f"{t}/p"]) == 0
    assert main(["place", "--cache", f"{t}/c", "--predictors", f"{t}/p", "--strategy", "exhaustive",
                 "--profile", "measured", "--out", f"{t}/pl"]) == 0
    capsys.readouterr()
    assert main(["validate", "--checkpoint", f"{t}/m/model.pt", "--cache", f"{t}/c", "--predictors", f"{t}/p",
                 "--placement", f"{t}/pl/placement.json", "--n", "12", "--reps", "1", "--out", f"{t}/v"]) == 0
    df = pd.read_csv(f"{t}/v/validate.csv")
    assert "placement (pl)" in set(df.policy) and (df["exit_match_%"] == 100).all()
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("validate: worst |sim/meas - 1| = ")
    for args, msg in ((["--run", t, "--cache", f"{t}/c"], "not both"),
                      (["--checkpoint", f"{t}/m/model.pt", "--cache", f"{t}/c", "--placement", f"{t}/nope.json",
                        "--out", f"{t}/v2"], "no placement at"),
                      (["--cache", f"{t}/c"], "give --run DIR")):
        assert main(["validate", *args]) != 0
        assert msg in capsys.readouterr().err


def test_drift_from_the_profiled_speed_is_seen_and_acted_on(toy_splits, tmp_path, monkeypatch):
    from analysis.study.config import StudyConfig
    from analysis.study.steps import refresh_drifted
    from analysis.study.validate_lines import drift_line
    from branchy.data import DataConfig
    from branchy.models import BackboneConfig
    from branchy.runtime import drift

    assert drift({"probe_ms": 0.5}, now_ms=1.0) == pytest.approx(2.0) and drift({}, 1.0) is None
    assert drift_line(pd.DataFrame({"machine_drift": [1.1]})) is None
    assert "1.60x slower" in drift_line(pd.DataFrame({"machine_drift": [1.6]}))
    assert "faster" in drift_line(pd.DataFrame({"machine_drift": [0.5]}))
    torch.manual_seed(0)
    m = build_model("b-lenet", exits=(0, 1), num_classes=4).eval()
    cache = dump(m, toy_splits, tmp_path / "c", progress=False, profile_time=0.01)
    assert cache.manifest["timing"]["probe_ms"] > 0  # every profile records the machine's speed
    cfg = StudyConfig(DataConfig("mnist5k"), BackboneConfig("b-lenet", exits=(0, 1)))
    import branchy.runtime.timing

    monkeypatch.setattr(branchy.runtime.timing, "speed_probe_ms", lambda rounds=21: 1.0)  # the machine's speed now
    cache.manifest["timing"]["probe_ms"] = 1.1
    assert refresh_drifted(cfg, cache, m) is cache  # within the limit: kept
    cache.manifest["timing"]["probe_ms"] = 0.3  # as if profiled on a machine 3.3x faster than this one now
    again = refresh_drifted(cfg, cache, m)
    assert again is not cache and len(list((tmp_path / "c" / "costs_history").glob("costs_*.csv"))) == 1
