"""Segment costs fitted from path times (NNLS) recover known costs from synthetic path times, with and without
noise, and predict a policy held out from the fit."""
import numpy as np
import pytest

from analysis.core.calibrate import calib_rule
from analysis.core.costs import CostModel
from analysis.core.evidence import Evidence, cascade_outcome, full_outcome, oracle_outcome, outcome
from analysis.core.pathfit import design, fit_path_costs, fitted_costs, param_names, path_params
from analysis.core.simulate import path_outcome
from branchy.exits import ExitRule
from placement import Placement

COSTS = CostModel.from_arrays([0.30, 0.55, 0.8, 1.1], [0.05, 0.07, 0.09, 0.12], [0.02, 0.03, 0.04, 0.0],
                              [0.02, 0.03, 0.04, 0.0], sample_ms=0.04, decision_ms=0.015)


def _outcomes(tmp_path):
    from tests.helpers import priced_cache, synthetic_arrays

    cache = priced_cache(tmp_path / "c", synthetic_arrays(n=(50, 50, 600), k=4, bars=(0.8, 0.3, -0.3, -0.8)),
                              model_name="s")
    ev = Evidence.build(cache, "test", costs=COSTS)
    rule = calib_rule(cache, 99)
    loose = ExitRule("entropy", tuple(np.array(rule.thresholds) * 1.5))
    pols = {"full": full_outcome(ev), "cascade": cascade_outcome(ev, rule),
            "loose": cascade_outcome(ev, loose),
            "no-e1": outcome(ev, Placement((True, False, True, True), (None,) * 4), rule),
            "e2-only": outcome(ev, Placement((False, False, True, True), (None,) * 4), rule),
            "e1-only": outcome(ev, Placement((False, True, False, True), (None,) * 4), rule),
            "e0-only": outcome(ev, Placement((True, False, False, True), (None,) * 4), rule)}
    return pols


def test_the_design_reproduces_the_simulators_latency(tmp_path):
    for o in _outcomes(tmp_path).values():
        np.testing.assert_allclose(design(o) @ path_params(COSTS), o.latency_ms, rtol=1e-12, atol=1e-12)


def test_noiseless_path_times_give_back_every_path_time(tmp_path):
    pols = _outcomes(tmp_path)
    train = ["full", "cascade", "no-e1", "e2-only", "e1-only"]
    fit = fit_path_costs([pols[n] for n in train], [pols[n].latency_ms for n in train])
    assert fit.rms_ms < 1e-9
    ok = dict(zip(param_names(4), fit.identified))
    assert not ok["a0"] and not ok["h0"]  # the gauge every path shares (see row_basis)
    for n, o in pols.items():  # held-out policies too, where their paths lie in the span of those seen
        m = fit.predictable(o)
        assert m.mean() > 0.95, n
        np.testing.assert_allclose(fit.predict(o)[m], o.latency_ms[m], rtol=1e-7)
    refit = fitted_costs(fit, COSTS)  # the simulator on the fitted costs charges the same paths
    o = pols["cascade"]
    again = path_outcome("x", refit, o.exit, np.c_[o.path["held"], np.zeros(o.n, bool)], np.ones((o.n, 4), bool))
    np.testing.assert_allclose(again.latency_ms, o.latency_ms, rtol=1e-7)


def test_a_cascade_alone_cannot_separate_a_read_from_the_next_stage(tmp_path):
    pols = _outcomes(tmp_path)
    fit = fit_path_costs([pols["cascade"]], [pols["cascade"].latency_ms])
    assert fit.rms_ms < 1e-9
    assert not fit.predictable(pols["full"]).any()  # full's path never ran in a cascade: no promise there


@pytest.mark.parametrize("held_out", ["cascade", "no-e1", "loose"])
def test_noisy_path_times_predict_a_policy_held_out_from_the_fit(tmp_path, held_out):
    pols = _outcomes(tmp_path)
    g = np.random.default_rng(0)
    times = {n: o.latency_ms * g.lognormal(0, 0.05, o.n) + g.normal(0, 0.01, o.n) for n, o in pols.items()}
    train = [n for n in pols if n != held_out]
    fit = fit_path_costs([pols[n] for n in train], [times[n] for n in train])
    assert fit.predictable(pols[held_out]).all()
    assert fit.predict(pols[held_out]).mean() == pytest.approx(times[held_out].mean(), rel=0.02)
    assert fit.predict(pols[held_out]).mean() == pytest.approx(pols[held_out].latency_ms.mean(), rel=0.02)


def test_bad_inputs_are_refused(tmp_path):
    pols = _outcomes(tmp_path)
    o = pols["full"]
    with pytest.raises(ValueError, match="one array of measured times"):
        fit_path_costs([o], [])
    with pytest.raises(ValueError, match="times for"):
        fit_path_costs([o], [o.latency_ms[:-1]])
    with pytest.raises(ValueError, match="NaN"):
        fit_path_costs([o], [np.full(o.n, np.nan)])
    ev_o = oracle_outcome(Evidence.build(_cache_for(tmp_path), "test", costs=COSTS))
    with pytest.raises(ValueError, match="no recorded path"):
        design(ev_o)


def _cache_for(tmp_path):
    from branchy.cache import FeatureCache
    return FeatureCache.open(tmp_path / "c")
