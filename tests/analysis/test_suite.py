"""A suite of studies: expansion of the grid into study configs, the paired ratio CIs, the agreed last line,
and one tiny suite end to end."""
import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.study.suite import (SuiteConfig, _best_gated, equal_accuracy, load_suite, ratio_ci, run_suite,
                                 suite_line)
from branchy.config import ConfigError, from_mapping

RAW = {
    "name": "t", "out": "OUT",
    "base": {"train": {"epochs": 1, "device": "cpu", "augment_shift": 0}, "validate": 0, "report": False,
             "dump": {"profile_time": 0.01, "pooling": "avg"},
             "predictors": {"model": "linear", "targets": ["gate"], "folds": 2}, "policies": {"bootstrap": 0}},
    "backbones": {"b-lenet": {"model": {"exits": [0, 1]}, "train": {"epochs": 2}}},
    "datasets": {"clean": {"dataset": "mnist5k", "options": {"sizes": [150, 100, 100]}},
                 "noisy": {"dataset": "mnist5k-c", "root": "ROOT", "options": {"sizes": [150, 100, 100]}}},
    "schemes": {"joint": {}, "ztw": {"datasets": ["noisy"], "trunk_from": "joint", "train": {"epochs": 1}}},
    "profiles": ["raspberry-pi-4"], "strategy": "greedy", "bootstrap": 50,
}


def test_the_grid_expands_into_checked_study_configs():
    s = from_mapping(SuiteConfig, RAW, "")
    studies = dict(s.studies())
    assert list(studies) == ["b-lenet/clean/joint", "b-lenet/noisy/joint", "b-lenet/noisy/ztw"]
    j, z = studies["b-lenet/noisy/joint"], studies["b-lenet/noisy/ztw"]
    assert j.train.epochs == 2 and z.train.epochs == 1 and z.train.scheme == "ztw"  # scheme over backbone over base
    assert z.train.init_checkpoint == "OUT/b-lenet-noisy-joint/model/model.pt"  # ztw on the joint net's trunk
    assert j.data.dataset == "mnist5k-c" and j.data.root == "ROOT" and j.model.exits == (0, 1)
    assert j.profiles == ("measured", "raspberry-pi-4") and j.placement.strategies == ("greedy",)
    assert j.out == "OUT/b-lenet-noisy-joint" and j.name == "b-lenet/noisy/joint"


@pytest.mark.parametrize("patch,msg", [
    ({"schemes": {"ztw": {"trunk_from": "joint"}, "joint": {}}}, "must be a scheme listed before ztw"),
    ({"schemes": {"joint": {"datasets": ["other"]}}}, "'other' is not one of datasets"),
    ({"schemes": {"joint": {"epochs": 3}}}, r"unknown key\(s\) \['epochs'\]"),
    ({"backbones": {"b-lenet": {"train": {"epochs": 0}}}}, "b-lenet/clean/joint.train: epochs must be"),
    ({"profiles": ["tpu"]}, "unknown device profile 'tpu'"),
    ({"backbones": {}}, "name at least one backbone"),
])
def test_bad_suites_fail_before_any_work(patch, msg):
    with pytest.raises(ConfigError, match=msg):
        from_mapping(SuiteConfig, {**RAW, **patch}, "")


def test_ratio_ci_is_the_paired_bootstrap_of_the_mean_ratio():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(1, 2, 300), rng.uniform(1.5, 2.5, 300)
    r, lo, hi = ratio_ci(a, b, n_boot=400, seed=3)
    assert r == pytest.approx(a.mean() / b.mean())
    idx = np.random.default_rng(3).integers(0, 300, (400, 300))  # the naive loop
    naive = [a[i].mean() / b[i].mean() for i in idx]
    assert (lo, hi) == pytest.approx((np.percentile(naive, 2.5), np.percentile(naive, 97.5)))
    assert lo < r < hi
    assert np.isnan(ratio_ci(a, b, n_boot=0)[1])


def test_the_last_line():
    df = pd.DataFrame({"study": ["a/x/joint", "a/y/joint", "b/x/joint", "b/y/joint"], "profile": ["p", "q", "p", "q"],
                       "best/oracle": [1.1, 1.3, np.nan, 1.2], "best_gated/cascade": [0.9, np.nan, 0.8, 0.7],
                       "best_gated_acc_vs_cascade_pts": [0.0, np.nan, -0.2, -1.0],
                       "best_gated_acc_vs_cascade_hi": [0.3, np.nan, 0.1, -0.4]})
    # 0.7 is faster but loses accuracy beyond its CI: P2 compares at equal accuracy
    assert suite_line(df) == "backbones: best/oracle max 1.300, best-gated/cascade min 0.800 (2 backbones, 2 profiles)"
    assert list(equal_accuracy(df)) == [True, False, True, False]


@pytest.mark.slow
def test_a_tiny_suite_end_to_end(tmp_path):
    raw = {**RAW, "out": str(tmp_path / "suite"),
           "datasets": {k: {**v, "root": str(tmp_path / "data")} if k == "noisy" else v
                        for k, v in RAW["datasets"].items()}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    df = run_suite(load_suite(tmp_path / "s.yaml"), log=lambda m: None)
    assert list(df.study) == ["b-lenet/clean/joint"] * 2 + ["b-lenet/noisy/joint"] * 2 + ["b-lenet/noisy/ztw"] * 2
    assert list(df.profile[:2]) == ["measured", "raspberry-pi-4"]
    joint = df[df.study.str.endswith("joint")]
    assert (joint["best/oracle"] >= 1 - 1e-9).all()  # nothing beats the oracle's latency at its accuracy... on test
    assert joint["best_mean_ms"].notna().all() and (joint["best_acc_%"] >= 0).all()
    # free perfect gates bound what predictors can save: never slower than the cascade, never better accuracy
    assert (joint["perfect_gates/cascade"] <= 1 + 1e-9).all()
    assert (joint["perfect_gates_acc_%"] == joint["cascade_acc_%"]).all()
    ztw = df[df.study.str.endswith("ztw")]
    assert ztw["best/oracle"].isna().all() and ztw.note.str.contains("chained").all()
    assert (tmp_path / "suite" / "comparison.csv").exists()
    assert suite_line(df).startswith("backbones: best/oracle max ")


def test_best_gated_picks_the_best_feasible_candidate_with_a_predictor():
    from placement import Constraint, Gate, Placement

    plain, gated = Placement.plain(3), Placement((True, True, True), (Gate("g", 0), None, None))
    slow = Placement((True, True, True), (Gate("g", 0), Gate("h", 1), None))
    table = pd.DataFrame([
        {"placement": plain, "candidate": True, "feasible": True, "accuracy_%": 90.0, "mean_ms": 1.0},
        {"placement": slow, "candidate": True, "feasible": True, "accuracy_%": 90.0, "mean_ms": 1.5},
        {"placement": gated, "candidate": True, "feasible": True, "accuracy_%": 90.0, "mean_ms": 1.2},
    ])

    class R:
        pass

    res = R()
    res.table, res.constraint, res.full_accuracy = table, Constraint(max_acc_drop=1.0), 90.0
    assert _best_gated(res) == gated
    res.table = table.iloc[:1]
    assert _best_gated(res) is None


def test_the_shipped_backbone_suite_loads_with_four_side_exits_on_the_deep_backbones():
    from pathlib import Path

    s = load_suite(Path(__file__).resolve().parents[2] / "configs" / "suites" / "backbones.yaml")
    studies = dict(s.studies())
    assert {k.split("/")[0] for k in studies} == {"b-lenet", "b-alexnet", "b-resnet", "b-resnext", "b-densenet"}
    assert {k.split("/")[1] for k in studies} == {"clean", "corrupted"} and any(k.endswith("/ztw") for k in studies)
    for key, cfg in studies.items():
        if not key.startswith("b-lenet"):
            assert len(cfg.model.exits) >= 4, key
        assert cfg.validate == 0 and len(s.profiles) == 2
