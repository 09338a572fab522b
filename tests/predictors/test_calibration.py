"""Probability calibration of gates: the maps against scikit-learn and a naive ECE, monotone so tuned decisions
stay, a real gain on a gate fitted with balanced class weights, and the map travelling through files and the
runtime's torch gate."""
import json

import numpy as np
import pytest
import torch

from predictors import PredictorSpec, fit_predictor, load_predictors, save_predictors
from predictors.calibration import (CALIBRATORS, CalibrationMap, apply_calibration, calibration_metrics,
                                    cross_calibrate, fit_calibration)
from predictors.deploy import TorchGate
from predictors.grid import PredictorsConfig
from tests.helpers import priced_cache

T = (0.5, 0.5, np.inf)


def _noisy_arrays(n=(300, 1500, 1500), k=3, c=4, d=4, seed=1, bar=0.9):
    """Exit 0 is confident where a hidden score exceeds ``bar`` (about 18 % of samples); the features see that
    score through heavy noise, so the true probability of leaving is smooth and a gate's cannot be sharp."""
    g = np.random.default_rng(seed)
    data = {}
    for split, m in zip(("train", "calib", "test"), n):
        y = g.integers(0, c, m)
        h = g.normal(size=m)
        logits = g.normal(scale=0.3, size=(m, k, c))
        logits[np.arange(m), 0, y] += np.where(h > bar, 6.0, 0.3)
        logits[np.arange(m), 1:, y] += 6.0
        feats = [np.concatenate([(h + g.normal(scale=0.8, size=m))[:, None], g.normal(size=(m, d - 1))], 1)
                 for _ in range(k)]
        data[split] = (y, logits.astype(np.float32), feats)
    return data


@pytest.fixture(scope="module")
def noisy_cache(tmp_path_factory):
    return priced_cache(tmp_path_factory.mktemp("noisy") / "cache", _noisy_arrays(), model_name="noisy")


def test_ece_and_brier_against_a_naive_loop():
    g = np.random.default_rng(0)
    p, y = g.random(500), g.random(500) < 0.3
    p[:3] = (0.0, 1.0, 14 / 15)  # the edges of the bins
    got = calibration_metrics(y, p, bins=15)
    ece = 0.0
    for b in range(15):
        inb = [i for i in range(500) if min(int(p[i] * 15), 14) == b]
        if inb:
            ece += len(inb) / 500 * abs(np.mean(p[inb]) - np.mean(y[inb]))
    assert got["ece"] == pytest.approx(ece, abs=1e-12)
    assert got["brier"] == pytest.approx(np.mean((p - y) ** 2), abs=1e-12)
    assert np.isnan(calibration_metrics([], [])["ece"])


def test_isotonic_map_is_scikit_learns_and_sigmoid_is_strictly_monotone():
    from sklearn.isotonic import IsotonicRegression

    g = np.random.default_rng(2)
    p = g.random(400)
    y = (g.random(400) < p ** 2).astype(int)
    q = np.concatenate([g.random(200), [-0.5, 0.0, 1.0, 1.5]])
    cal = fit_calibration("isotonic", p, y)
    iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p, y)
    np.testing.assert_allclose(apply_calibration(cal, q), iso.predict(q), atol=1e-12)
    sig = fit_calibration("sigmoid", p, y)
    assert float(sig["cal_a"]) > 0
    order = np.argsort(p)
    assert np.all(np.diff(apply_calibration(sig, p[order])) > 0)  # no two distinct scores merged
    # p**2 truth: the fitted Platt map bends probabilities down (a > 1 on the logit, b < 0)
    assert calibration_metrics(y, apply_calibration(sig, p))["ece"] < calibration_metrics(y, p)["ece"]


@pytest.mark.parametrize("method", CALIBRATORS.names())
def test_the_torch_map_is_the_numpy_map(method):
    g = np.random.default_rng(3)
    p = g.random(300)
    cal = fit_calibration(method, p, (g.random(300) < p).astype(int))
    q = np.concatenate([g.random(100), [0.0, 1.0, 1e-9, 1 - 1e-9]]).astype(np.float32)
    out = CalibrationMap(cal)(torch.from_numpy(q)).numpy()
    np.testing.assert_allclose(out, apply_calibration(cal, q.astype(np.float64)), atol=2e-6)


def test_calibration_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="only one outcome"):
        fit_calibration("sigmoid", np.random.default_rng(0).random(10), np.ones(10))
    with pytest.raises(ValueError, match="finite"):
        fit_calibration("isotonic", np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="unknown calibration 'platt'.*isotonic, sigmoid|unknown calibration"):
        PredictorSpec("gate", 0, "linear", 0, T, calibration="platt")
    with pytest.raises(ValueError, match="calibrate gates only"):
        PredictorSpec("entropy", 0, "linear", 0, calibration="sigmoid")
    with pytest.raises(ValueError, match="unknown calibration"):
        PredictorsConfig(calibration="platt")
    with pytest.warns(UserWarning, match="no ranking"):
        cal = fit_calibration("sigmoid", np.linspace(0, 1, 40), (np.arange(40) < 10).astype(int))
    assert np.allclose(apply_calibration(cal, np.array([0.1, 0.9])), 0.25)


def test_calibrated_gate_reads_as_a_probability_on_test_and_lets_in_the_same_samples(noisy_cache):
    c = noisy_cache
    raw = fit_predictor(c, PredictorSpec("gate", 0, "linear", 0, T, class_weight="balanced"), timing=0.01)
    sig = fit_predictor(c, PredictorSpec("gate", 0, "linear", 0, T, class_weight="balanced", calibration="sigmoid"),
                        timing=0.01)
    iso = fit_predictor(c, PredictorSpec("gate", 0, "linear", 0, T, class_weight="balanced",
                                         calibration="isotonic"), timing=0.01)
    assert sig.spec.name == "gate_at0_for0_linear_cal-sigmoid"
    e_raw, e_sig, e_iso = (p.evaluate(c, "test") for p in (raw, sig, iso))
    # balanced weights put the positives' probabilities far too high; the map, fitted on calib, fixes that on test
    assert e_raw["ece"] > 0.15, e_raw
    assert e_sig["ece"] < 0.05 and e_iso["ece"] < 0.06, (e_sig, e_iso)
    assert e_sig["brier"] < e_raw["brier"] - 0.03
    # on calib (out of fold) the scores, so the reported calibration and every cut chosen there, are cross-
    # calibrated: each fold's isotonic map fitted on the other folds, not the stored map fitted on these very samples
    e_cal = iso.evaluate(c, "calib")
    r = iso.reached(c, "calib")
    lv = iso.leaves(c, "calib")
    in_map = apply_calibration(iso.calibration, iso._gate_proba(iso.oof))
    cross = iso.score(c, "calib")
    assert not np.allclose(cross[r], in_map[r])
    assert e_cal["ece"] > calibration_metrics(lv[r].astype(int), in_map[r])["ece"]
    np.testing.assert_allclose(cross[r], cross_calibrate("isotonic", iso._gate_proba(iso.oof)[r], lv[r].astype(int),
                                                         iso.folds, iso.spec.random_state))
    # Platt scaling is strictly monotone: any cut on the raw score has a calibrated cut with the same samples
    s_raw, s_sig = raw.score(c, "test"), sig.score(c, "test")
    np.testing.assert_array_equal(np.argsort(s_raw, kind="stable"), np.argsort(s_sig, kind="stable"))
    assert e_sig["roc_auc"] == pytest.approx(e_raw["roc_auc"], abs=1e-12)
    # a calibrated gate's own operating point: enter where leaving is at least as likely as not
    np.testing.assert_array_equal(sig.predict(c, "test"), (s_sig >= 0.5).astype(int))
    assert 0 < e_sig["false_enter"] < e_raw["false_enter"]


def test_calibration_travels_through_files_and_the_runtime_gate(noisy_cache, tmp_path):
    c = noisy_cache
    specs = [PredictorSpec("gate", 0, "nn", 0, T, calibration=m, params={"max_epochs": 10}) for m in ("sigmoid",
                                                                                                      "isotonic")]
    fitted = [fit_predictor(c, s, folds=3, timing=0.01) for s in specs]
    save_predictors(fitted, tmp_path / "p")
    back = load_predictors(tmp_path / "p", c)
    x = c.features("test", 0)[:50]
    for f in fitted:
        b = back[f.spec.name]
        np.testing.assert_array_equal(b.score(c, "test"), f.score(c, "test"))
        h = torch.tensor(np.asarray(x, dtype=np.float32))[:, :, None, None]  # a [B, D, 1, 1] "activation"
        got = TorchGate(b.estimator, 1, "gate", b.calibration)(h).detach().numpy()
        np.testing.assert_allclose(got, f.score_inputs(x), atol=1e-5)
    # a map the spec does not name, or a damaged one, is refused with the way out
    idx = json.loads((tmp_path / "p" / "predictors.json").read_text())
    name = fitted[0].spec.name
    idx["predictors"][name]["spec"]["calibration"] = None
    (tmp_path / "p" / "predictors.json").write_text(json.dumps(idx))
    with pytest.raises(ValueError, match="calibration map its spec does not name.*refit|spec of"):
        load_predictors(tmp_path / "p", c)


def test_cross_calibration_scores_each_fold_with_a_map_fitted_on_the_others():
    g = np.random.default_rng(5)
    p = g.random(200)
    y = (g.random(200) < p).astype(int)
    out = cross_calibrate("isotonic", p, y, folds=4, seed=0)
    assert out.shape == p.shape and np.isfinite(out).all()
    assert not np.allclose(out, apply_calibration(fit_calibration("isotonic", p, y), p))


def test_the_study_config_calibrates_gates_only():
    specs = PredictorsConfig(model="linear", calibration="sigmoid").specs(3, T)
    assert {s.calibration for s in specs if s.target == "gate"} == {"sigmoid"}
    assert {s.calibration for s in specs if s.target != "gate"} == {None}


def test_the_torch_isotonic_map_keeps_break_points_that_float32_would_merge():
    cal = {"cal_x": np.array([0.2, 0.5, 0.5 + 3e-7, 0.9]), "cal_y": np.array([0.0, 0.1, 0.165, 0.9])}
    q = np.array([0.5 + 1e-7, 0.5 + 2e-7, 0.5, 0.7, 0.95, 0.1])
    out = CalibrationMap(cal)(torch.tensor(q, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(out, apply_calibration(cal, q), atol=1e-9)


def test_platt_keeps_distinct_confident_scores_apart():
    g = np.random.default_rng(7)
    p = np.concatenate([g.random(200), 1 - np.array([1e-7, 1e-8, 1e-9, 1e-10])])
    y = (g.random(204) < p).astype(int)
    cal = fit_calibration("sigmoid", p, y)
    top = apply_calibration(cal, p[-4:])
    assert len(np.unique(top)) == 4 and np.all(np.diff(top) > 0)  # 1 - 1e-7 < 1 - 1e-8 < ...: kept in order
