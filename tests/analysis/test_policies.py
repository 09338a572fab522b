import json

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest

from analysis.calibrate import budgeted_thresholds, threshold_grid, thresholds_for_accuracy
from analysis.cli import main
from analysis.costs import CostModel, DeviceProfile, get_profile, list_profiles, load_profile_file
from analysis import plots
from analysis.study import PolicyConfig, pareto_points, run_policies
from branchy.measures import confidence
from predictors import PredictorSpec, fit_predictor


def test_profiles_registry_and_files(tmp_path, synth_cache):
    assert {"measured", "raspberry-pi-4", "jetson-nano", "mcu-npu"} <= set(list_profiles())
    for name in list_profiles():
        p = get_profile(name)
        assert p.measured or (p.source and p.macs_per_s > 0)
    with pytest.raises(KeyError, match="unknown device profile 'tpu9'; known: .*jetson-nano"):
        get_profile("tpu9")
    f = tmp_path / "dev.yaml"
    f.write_text("name: mydev\nmacs_per_s: 1.0e9\nbytes_per_s: 1.0e9\noverhead_ms: 0.5\n")
    p = load_profile_file(f)
    c = CostModel.from_cache(synth_cache, str(f))
    np.testing.assert_allclose(c.stage_ms, synth_cache.cost_vector("stage", "macs") / 1e9 * 1e3 + 0.5)
    f.write_text("name: mydev\nmacs_per_s: 1.0e9\n")
    with pytest.raises(ValueError, match="missing bytes_per_s"):
        get_profile(str(f))
    f2 = tmp_path / "dev.json"
    f2.write_text(json.dumps({"name": "x", "macs_per_s": 1, "bytes_per_s": 1, "flops": 3}))
    with pytest.raises(ValueError, match="unknown profile field"):
        get_profile(str(f2))
    assert p.name == "mydev"


def test_mcu_profile_charges_spills():
    p = get_profile("mcu-npu")
    small, big = p.buffer_ms([1000])[0], p.buffer_ms([2 * p.onchip_bytes])[0]
    assert big > 2 * small * p.onchip_bytes / 1000  # beyond on-chip memory the bandwidth drops


def _logits_labels(n=2000, k=3, seed=0):
    g = np.random.default_rng(seed)
    y = g.integers(0, 4, n)
    z = g.normal(size=(n, k, 4))
    conf = g.random((n, k)) * 4
    z[np.arange(n)[:, None], np.arange(k), y[:, None]] += conf  # confident rows are mostly right
    return z, y


def test_threshold_calibration_rules():
    z, y = _logits_labels()
    t = thresholds_for_accuracy(z, y, 0.9)
    ent = confidence(z, "entropy")
    correct = z.argmax(-1) == y[:, None]
    for k in range(2):
        acc = correct[ent[:, k] < t[k], k].mean()
        assert acc >= 0.9
        looser = correct[ent[:, k] < t[k] + 0.05, k].mean()
        assert looser < 0.9 or (ent[:, k] < t[k] + 0.05).sum() == (ent[:, k] < t[k]).sum()
    assert np.isinf(t[-1])
    tm = thresholds_for_accuracy(z, y, 0.9, measure="max_prob")
    assert correct[confidence(z, "max_prob")[:, 0] > tm[0], 0].mean() >= 0.9
    for p in (0.3, 1.0):
        tb = budgeted_thresholds(z, p)
        left = np.ones(len(y), bool)
        shares = []
        for k in range(2):
            go = left & (ent[:, k] < tb[k])
            shares.append(go.mean())
            left &= ~go
        q = p ** np.arange(3)
        q /= q.sum()
        np.testing.assert_allclose(shares, q[:2], atol=0.002)
    g = threshold_grid(z, 5)
    assert g.shape == (5, 3) and np.isneginf(g[0, 0])


def test_policies_on_a_cache_with_predictors_and_plots(synth_cache, tmp_path):
    T = thresholds_for_accuracy(np.asarray(synth_cache.logits("calib")), synth_cache.labels("calib"))
    preds = {}
    for spec in (PredictorSpec("gate", 0, "linear", 0, tuple(T)), PredictorSpec("gate", 1, "linear", 1, tuple(T)),
                 PredictorSpec("exit", 0, "linear", None, tuple(T)), PredictorSpec("entropy", 0, "linear", 1, tuple(T))):
        p = fit_predictor(synth_cache, spec, timing=0.01)
        preds[spec.name] = p
    # no per-segment overhead: a gate of a few MACs costs far less than the exit head it can skip
    dev = DeviceProfile("no-overhead", macs_per_s=1e6, bytes_per_s=1e7)
    outs, table = run_policies(synth_cache, predictors=preds, profile=dev, cfg=PolicyConfig(n_boot=50))
    assert list(table.policy) == ["full", "cascade", "patience", "gated", "gated-entropy", "jump", "oracle"]
    t = table.set_index("policy")
    assert t.loc["full", "speedup"] == pytest.approx(1.0)
    assert t.loc["cascade", "mean_MACs"] < t.loc["full", "mean_MACs"]
    assert t.loc["oracle", "mean_ms"] == t["mean_ms"].min()
    # gated skips branches it predicts in vain: fewer exit heads run than in the cascade, and it pays
    assert t.loc["gated", "exits_ms"] < t.loc["cascade", "exits_ms"]
    assert t.loc["gated", "mean_ms"] < t.loc["cascade", "mean_ms"]
    # under a profile where a gate costs what an exit head costs, no gate pays on calib: gated is the cascade
    _, nano = run_policies(synth_cache, predictors=preds, profile="jetson-nano", cfg=PolicyConfig(n_boot=0))
    nano = nano.set_index("policy")
    assert nano.loc["gated", "mean_ms"] <= nano.loc["cascade", "mean_ms"] * 1.02
    with pytest.raises(ValueError, match="report on test"):
        run_policies(synth_cache, split="calib")
    with pytest.raises(ValueError, match="2 thresholds for 4 exits|4 thresholds for 3 exits"):
        run_policies(synth_cache, thresholds=[0.1, 0.2, 0.3, 0.4])
    for key in ("p50_ms", "p99_ms", "peak_buffer_bytes", "exit0_%"):
        assert (t[f"{key}_lo"] <= t[key] + 1e-9).all() and (t[key] <= t[f"{key}_hi"] + 1e-9).all()
    pts = pareto_points(synth_cache, predictors=preds, profile=dev, n_settings=4)
    assert set(pts.policy) >= {"cascade", "gated", "jump", "full", "oracle"}
    # fronts are chosen on calib: every front point is non-dominated among its policy's calib figures
    for pol, d in pts[pts.on_front].groupby("policy"):
        allp = pts[pts.policy == pol]
        for _, r in d.iterrows():
            assert not ((allp["calib_mean_ms"] < r["calib_mean_ms"])
                        & (allp["calib_accuracy_%"] > r["calib_accuracy_%"])).any()
    # the plots of these results draw what the tables hold (their contract: tests/test_plots.py)
    fronts = sorted(set(pts.policy) - {"full", "oracle"})
    fig, ax = plots.plot_pareto(pts, table)
    assert len(ax.lines) == len(fronts)
    points_only = set(table.policy) - set(pts.policy)  # an operating point without a front: labelled alone
    assert {t.get_text() for t in ax.get_legend().get_texts()} == \
        {f"{p} (front)" for p in fronts} | {"full", "oracle"} | points_only
    plots.save(fig, tmp_path / "pareto.png")
    k = synth_cache.num_exits
    fig, ax = plots.plot_exit_distribution(table)
    np.testing.assert_allclose([p.get_width() for p in ax.patches],
                               np.concatenate([table[f"exit{e}_%"] for e in range(k)]), atol=1e-9)
    fig, ax = plots.plot_latency_breakdown(table)
    assert len(ax.patches) == len(table) * len(ax.get_legend().get_texts())
    fig, ax = plots.plot_entropy_hist(synth_cache.table("test"), thresholds=T)
    tab = synth_cache.table("test")
    assert len(ax.patches) == tab.groupby(["exit", "correct"]).ngroups
    assert sum(int(p.get_data().values.sum()) for p in ax.patches) == len(tab)
    assert len(ax.lines) == int(np.isfinite(T[:-1]).sum())
    matplotlib.pyplot.close("all")


def test_simulate_cli(synth_cache, tmp_path, capsys):
    rc = main(["simulate", "--cache", str(synth_cache.path), "--profile", "raspberry-pi-4", "--bootstrap", "20",
               "--out", str(tmp_path / "sim")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "cascade" in out and "oracle" in out
    df = pd.read_csv(tmp_path / "sim" / "summary.csv")
    assert set(df.policy) == {"full", "cascade", "patience", "oracle"}
    assert (tmp_path / "sim" / "pareto_raspberry-pi-4.png").exists()
    assert main(["simulate", "--cache", str(synth_cache.path), "--profile", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown device profile 'nope'" in capsys.readouterr().err
    assert main(["simulate", "--cache", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "branchy dump" in capsys.readouterr().err


def test_every_subcommand_has_help(capsys):
    from analysis.cli import COMMANDS

    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "usage: branchy " + name in capsys.readouterr().out
    assert main(["models"]) == 0 and "b-resnet" in capsys.readouterr().out
    assert main(["train", "--model", "b-vgg", "--out", "x"]) == 2
    assert "unknown model 'b-vgg'; known: b-alexnet" in capsys.readouterr().err


def test_fit_predictors_and_place_cli(synth_cache, tmp_path, capsys):
    assert main(["fit-predictors", "--cache", str(synth_cache.path), "--target", "gate", "--model", "linear",
                 "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "gate_at0_for0_linear" in out and "false_enter" in out
    assert main(["fit-predictors", "--cache", str(synth_cache.path), "--target", "exit", "--model", "linear",
                 "--out", str(tmp_path / "p")]) == 0
    assert main(["fit-predictors", "--cache", str(synth_cache.path), "--target", "exit", "--fit-split", "test",
                 "--out", str(tmp_path / "q")]) == 2
    assert "test split is refused" in capsys.readouterr().err
    assert main(["place", "--cache", str(synth_cache.path), "--predictors", str(tmp_path / "p"), "--strategy",
                 "exhaustive", "--profile", "jetson-nano", "--out", str(tmp_path / "pl")]) == 0
    assert "chosen:" in capsys.readouterr().out
    from placement import Placement

    assert Placement.load(tmp_path / "pl" / "placement.json").num_exits == 3
    assert (tmp_path / "pl" / "placement_map.png").exists() and (tmp_path / "pl" / "candidates.csv").exists()
