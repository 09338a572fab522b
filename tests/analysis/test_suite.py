"""A suite of studies: expansion of the grid into study configs, the paired ratio CIs, the agreed last line,
and one tiny suite end to end."""
import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.core.paired import ratio_ci
from analysis.study.suite import SuiteConfig, load_suite, paying, run_suite, suite_line
from branchy.core import ConfigError, from_mapping

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


def test_ratio_ci_resamples_the_profilings_with_the_samples():
    rng = np.random.default_rng(0)
    n = 200
    a = rng.uniform(1, 2, (3, n)) * np.array([[1.0], [1.4], [0.8]])  # three profilings that move the costs
    b = rng.uniform(1.5, 2.5, (3, n))
    r, lo, hi = ratio_ci(a, b, n_boot=300, seed=5)
    assert r == pytest.approx(a[0].mean() / b[0].mean())  # the point: the table the decisions used
    g = np.random.default_rng(5)  # the naive loop: a table and a resample of samples per draw
    idx = g.integers(0, n, (300, n))
    tab = g.integers(0, 3, 300)
    naive = [a[t][i].mean() / b[t][i].mean() for t, i in zip(tab, idx)]
    assert (lo, hi) == pytest.approx((np.percentile(naive, 2.5), np.percentile(naive, 97.5)))
    r1, lo1, hi1 = ratio_ci(a[0], b[0], n_boot=300, seed=5)
    assert hi - lo > 3 * (hi1 - lo1)  # the costs' own spread widens the CI
    with pytest.raises(ValueError, match="same samples"):
        ratio_ci(a, b[:2])


def test_the_last_line_counts_paying_rows_at_non_inferior_accuracy():
    df = pd.DataFrame({"study": ["a/x/joint", "a/y/joint", "b/x/joint", "b/y/ztw"], "profile": ["p", "q", "p", "q"],
                       "acc_eps_pts": 0.5,
                       "gated_vs_free": [0.9, 0.95, 0.7, np.nan], "gated_vs_free_lo": [0.85, 0.9, 0.6, np.nan],
                       "gated_vs_free_hi": [0.95, 1.02, 0.8, np.nan],
                       "gated_vs_free_acc_pts": [0.0, 0.1, -1.0, np.nan],
                       "gated_vs_free_acc_lo_pts": [-0.3, -0.2, -1.6, np.nan],
                       "best_vs_matched_oracle": [1.2, 1.5, 1.1, 1.3]})
    # 0.7 is faster but its accuracy may be 1.6 points worse (> 0.5): not non-inferior, so not the min and not paying;
    # 0.95's CI reaches above 1; the chained row has no gated placement and is not counted among M
    assert list(paying(df)) == [True, False, False, False]
    assert suite_line(df) == ("backbones: gated/best-free min 0.900 [0.850, 0.950], predictors pay on 1 of 3 rows, "
                              "best/matched-oracle max 1.500 (2 backbones, 2 profiles)")


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
    for col in ("full_ms", "cascade_ms", "best_free_ms", "oracle_ms", "matched_oracle_ms"):
        assert joint[col].notna().all(), col
    gated = joint.best_gated_ms.notna()  # one epoch on 150 images: some gates answer a constant, and do not count
    assert gated.any() and joint[~gated].note.str.contains("no placement with a predictor").all()
    for col in ("gated_vs_free", "gated_vs_free_lo", "gated_vs_free_hi", "gated_vs_free_acc_lo_pts"):
        assert joint.loc[gated, col].notna().all(), col
    assert (joint["best_vs_oracle"] >= 1 - 1e-9).all()  # nothing beats the label oracle at its accuracy
    assert (joint["matched_oracle_acc_%"] == joint["full_acc_%"]).all()  # full's answers, at the cheapest exit
    # free perfect gates bound what predictors save on the default cascade: never slower, never better accuracy
    assert (joint["perfect_gates_vs_cascade"] <= 1 + 1e-9).all()
    assert (joint["perfect_gates_acc_%"] == joint["cascade_acc_%"]).all()
    # and on the best predictor-free policy's exits and rule: the most any gate could save over it
    assert (joint["perfect_gates_vs_free"] <= 1 + 1e-9).all()
    assert (joint["perfect_gates_on_free_acc_%"] == joint["best_free_acc_%"]).all()
    assert joint[gated].verdict.str.contains("Free perfect gates").all()
    ztw = df[df.study.str.endswith("ztw")]
    assert ztw["gated_vs_free"].isna().all() and ztw.note.str.contains("chained").all()
    assert ztw["best_free_ms"].notna().all()  # full and the rule family still compete on chained exits
    assert (tmp_path / "suite" / "comparison.csv").exists()
    assert suite_line(df).startswith("backbones: gated/best-free min ")


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
