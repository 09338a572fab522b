"""Decisions against naive references: one exit rule, sequential calibration, cross-fitted selection,
per-setting gate cuts, chained exits, the true oracle bound and risk-controlled thresholds."""
import json

import numpy as np
import pytest

from analysis.core.calibrate import thresholds_for_accuracy
from analysis.core.costs import CostModel
from analysis.core.evidence import Evidence, cascade_outcome, cut_candidates, full_outcome, oracle_outcome, outcome, tune_cuts
from analysis.core.guarantee import lambda_family, risk_controlled_rule
from analysis.core.policies import POLICIES, PolicyConfig, choose_policies
from analysis.study.compare import study_policies
from branchy.exits import ExitRule, entropy
from placement import Gate, Placement
from predictors import PredictorSpec, fit_predictor
from tests.helpers import priced_cache, synthetic_arrays


# ----------------------------------------------------------------------------- the exit rule
def test_exit_rule_round_trips_and_refuses_what_it_cannot_convert(tmp_path):
    r = ExitRule.given([0.3, 0.5], 3, "entropy", tuned_by="target-acc 99% sequential", tuned_on="calib")
    assert r.thresholds[-1] == np.inf and r.num_exits == 3
    assert ExitRule.load(r.save(tmp_path / "thresholds.json")) == r
    assert json.loads((tmp_path / "thresholds.json").read_text())["tuned_on"] == "calib"
    conf = np.array([[0.2, 0.6, 9.0], [0.4, 0.4, 9.0]])
    np.testing.assert_array_equal(r.passes(conf), [[True, False, True], [False, True, True]])
    n = r.converted("norm_entropy", 10)  # exact: divide by ln C
    np.testing.assert_array_equal(n.passes(conf / np.log(10)), r.passes(conf))
    with pytest.raises(ValueError, match="cannot be converted to max_prob exactly"):
        r.converted("max_prob", 10)
    with pytest.raises(ValueError, match="tuned on the test split"):
        ExitRule("entropy", (0.1, np.inf), tuned_on="test")
    with pytest.raises(ValueError, match="deciding on max_prob"):
        r.compatible(ExitRule("max_prob", (0.9, 0.9, -np.inf)), what="gate")


# ----------------------------------------------------------------------------- sequential calibration
def naive_sequential(z, y, target):
    """Per side exit in order: the loosest threshold among the samples that reach it (not accepted before)."""
    n, k, _ = z.shape
    ent, ok = entropy(z), z.argmax(-1) == y[:, None]
    reach, out = np.ones(n, bool), []
    for i in range(k - 1):
        best = -np.inf
        for t in sorted(set(ent[reach, i])):
            acc = ok[reach & (ent[:, i] <= t), i].mean()
            if acc >= target:
                best = t
        out.append(best)
        if np.isfinite(best):
            reach &= ~(ent[:, i] <= best)
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sequential_calibration_equals_a_naive_loop(seed):
    y, z, _ = synthetic_arrays(n=(10, 300, 10), k=4, seed=seed, bars=(0.8, 0.2, -0.5, 0))["calib"]
    for target in (0.9, 0.97):
        t = thresholds_for_accuracy(z, y, target)
        ref = naive_sequential(z, y, target)
        ent = entropy(z)
        for i, b in enumerate(ref):  # same accepted set: entropy <= naive bound  <=>  entropy < T
            if np.isfinite(b):
                assert ((ent[:, i] <= b) == (ent[:, i] < t[i]))[_reach(ent, t, i)].all()
            else:
                assert not (ent[:, i] < t[i])[_reach(ent, t, i)].any()
        # the promise: among the samples that reach each exit, the accepted ones are `target` accurate
        ok, reach = z.argmax(-1) == y[:, None], np.ones(len(y), bool)
        for i in range(3):
            acc_set = reach & (ent[:, i] < t[i])
            if acc_set.any():
                assert ok[acc_set, i].mean() >= target
            reach &= ~acc_set


def _reach(ent, t, i):
    return ~(ent[:, :i] < t[:i]).any(1)


# ----------------------------------------------------------------------------- cross-fitted selection
@pytest.fixture(scope="module")
def noise_cache(tmp_path_factory):
    """Features carry no information about the targets: whatever a model scores on its own fit data is
    memorisation."""
    data = synthetic_arrays(n=(50, 300, 300), seed=3)
    g = np.random.default_rng(5)
    data = {s: (y, z, [g.normal(size=f.shape) for f in feats]) for s, (y, z, feats) in data.items()}
    return priced_cache(tmp_path_factory.mktemp("noise") / "cache", data, model_name="noise")


def test_calib_outputs_are_out_of_fold_by_construction(noise_cache):
    T = (0.5, 0.5, np.inf)
    p = fit_predictor(noise_cache, PredictorSpec("gate", 0, "hgb", 0, T, params={"max_depth": None,
                                                                                    "max_iter": 200}),
                      folds=4, timing=0.01)
    x = p.inputs(noise_cache, "calib")
    y = (entropy(np.asarray(noise_cache.logits("calib")))[:, 0] < 0.5).astype(int)
    in_sample = (p.estimator.predict(x) == y).mean()
    assert in_sample > 0.9  # the refit model memorised calib ...
    oof = (p.predict(noise_cache, "calib") == y).mean()
    assert abs(oof - max(y.mean(), 1 - y.mean())) < 0.12  # ... but every calib output is out of fold
    assert p.evaluate(noise_cache, "calib")["split"] == "calib (out of fold)"
    np.testing.assert_array_equal(p.score(noise_cache, "calib"), p.oof[:, 1])
    # against a naive re-run of the folds
    from predictors.fit import cross_fit

    oof2, _ = cross_fit(p.spec, x, y, 4)
    np.testing.assert_allclose(oof2, p.oof)


# ----------------------------------------------------------------------------- per-setting gate cuts
def naive_latency(ev, passes, enter, gate_at, k):
    """Per sample walk of a placement with one gate: mean latency and accuracy."""
    c = ev.costs
    lat, acc = [], []
    for s in range(ev.n):
        t, ans = 0.0, None
        for i in range(k):
            t += c.stage_ms[i]
            if i == gate_at[1]:
                t += ev.pcost["g"][0]
            if i == k - 1:
                t += c.exit_ms[i]
                ans = ev.correct[s, i]
                break
            if i == 1 and not enter[s]:
                continue
            t += c.write_ms[i] + c.exit_ms[i]
            if passes[s, i]:
                ans = ev.correct[s, i]
                break
            t += c.read_ms[i]
        lat.append(t)
        acc.append(ans)
    return np.mean(lat), np.mean(acc)


def test_gate_cut_is_retuned_per_rule_against_brute_force():
    g = np.random.default_rng(0)
    n, k = 300, 3
    conf, correct = g.random((n, k)), g.random((n, k)) < 0.8
    costs = CostModel.from_arrays([1.0, 1.0, 1.0], [0.4, 0.4, 0.1], [0.05] * 3, [0.05] * 3)
    score = conf[:, 1] * -1 + g.normal(scale=0.2, size=n)  # a noisy forecast of leaving at exit 1
    spec = PredictorSpec("gate", 1, "linear", 1, (0.3, 0.3, np.inf))
    ev = Evidence("calib", "entropy", conf, correct, correct.astype(int), costs, scores={"g": score},
                  pcost={"g": (0.02, 10.0)}, specs={"g": spec})
    pl = Placement((True, True, True), (None, Gate("g", 1), None))
    for t in (0.2, 0.5, 0.8):  # the cut depends on the rule
        rule = ExitRule("entropy", (t, t, np.inf))
        passes = rule.passes(conf)
        cut = tune_cuts(ev, pl, rule)[1]
        base_lat, base_acc = naive_latency(ev, passes, np.ones(n, bool), (-1, 1), k)
        best = (base_lat, -np.inf)
        for c in cut_candidates(score):
            lat, acc = naive_latency(ev, passes, score >= c, (-1, 1), k)
            if acc >= base_acc - 1e-12 and lat < best[0] - 1e-12:
                best = (lat, c)
        assert cut == best[1]
        o = outcome(ev, pl, rule, cuts={1: cut})
        lat, acc = naive_latency(ev, passes, score >= cut, (-1, 1), k)
        assert o.latency_ms.mean() == pytest.approx(lat) and o.correct.mean() == pytest.approx(acc)


def test_policies_are_decided_on_calib_and_test_only_reports(synth_cache):
    T = ExitRule.given((0.5, 0.5), 3)
    preds = {p.spec.name: p for p in [fit_predictor(synth_cache, PredictorSpec("gate", j, "linear", e, T),
                                                    folds=3, timing=0.01) for j, e in ((0, 0), (0, 1), (1, 1))]}
    st = study_policies(synth_cache, predictors=preds, profile="jetson-nano", cfg=PolicyConfig(bootstrap=0))
    # the same choice from calib evidence alone, whatever the test split holds
    ev_cal = Evidence.build(synth_cache, "calib", predictors=preds, profile="jetson-nano")
    again = choose_policies(ev_cal, st.rule)
    assert again["gated"].placement == st.chosen["gated"].placement
    assert again["gated"].cuts == st.chosen["gated"].cuts
    gated = st.table.set_index("policy").loc["gated"]
    cascade = st.table.set_index("policy").loc["cascade"]
    assert gated.mean_ms <= cascade.mean_ms * 1.05  # gates chosen only where they pay on calib
    assert set(st.gates.columns) >= {"break_even_G_ms", "pays", "true_skip_%", "false_skip_%"}
    assert st.rule.tuned_on == "calib"


# ----------------------------------------------------------------------------- chained exits
def test_chained_exits_charge_their_heads_and_refuse_skips(tmp_path):
    data = synthetic_arrays(n=(20, 100, 100), seed=1)
    cache = priced_cache(tmp_path / "c", data, model_name="boosted", chain="boost")
    assert cache.chained
    ev = Evidence.build(cache, "test", profile="measured")
    full = full_outcome(ev)
    c = ev.costs
    want = c.stage_ms.sum() + c.exit_ms.sum() + (c.write_ms + c.read_ms)[:2].sum()
    np.testing.assert_allclose(full.latency_ms, want)
    with pytest.raises(ValueError, match="chained"):
        outcome(ev, Placement((False, True, True), (None, None, None)), ExitRule.given((0.5, 0.5), 3))
    st = study_policies(cache, cfg=PolicyConfig(bootstrap=0))
    assert set(st.table.policy) == {"full", "cascade", "patience", "matched-oracle", "oracle"}


# ----------------------------------------------------------------------------- the true oracle bound
def test_oracle_is_a_lower_bound_even_when_no_exit_is_right():
    costs = CostModel.from_arrays([1.0, 1.0, 1.0], [0.2, 0.2, 0.2], [0.1] * 3, [0.1] * 3)
    correct = np.array([[False, False, False], [False, True, True], [True, True, True]])
    ev = Evidence("test", "entropy", np.zeros((3, 3)), correct, np.zeros((3, 3), int), costs)
    o = oracle_outcome(ev)
    np.testing.assert_array_equal(o.exit, [0, 1, 0])  # nothing right: the cheapest (wrong) exit
    np.testing.assert_allclose(o.latency_ms, [1.2, 2.2, 1.2])
    for pol in ("full", "cascade", "patience"):
        other = POLICIES.get(pol).run(ev, ExitRule.given((0.5, 0.5), 3), PolicyConfig())
        m = other.correct | ~o.correct  # samples it gets right, and those no exit gets right
        assert (o.latency_ms[m] <= other.latency_ms[m] + 1e-12).all()


# ----------------------------------------------------------------------------- confidences that never ran
def test_a_predictor_reading_confidences_pays_for_the_heads_it_reads():
    costs = CostModel.from_arrays([1.0, 1.0, 1.0], [0.3, 0.3, 0.1], [0.0] * 3, [0.0] * 3)
    n = 4
    correct = np.ones((n, 3), bool)
    conf = np.full((n, 3), 9.0)  # nobody leaves early
    spec_plain = PredictorSpec("gate", 1, "linear", 1, (0.5, 0.5, np.inf))
    spec_conf = PredictorSpec("gate", 1, "linear", 1, (0.5, 0.5, np.inf), with_confidences=True)
    ev = Evidence("calib", "entropy", conf, correct, np.zeros((n, 3), int), costs,
                  scores={"a": np.zeros(n), "b": np.zeros(n)}, pcost={"a": (0.0, 0.0), "b": (0.0, 0.0)},
                  specs={"a": spec_plain, "b": spec_conf})
    rule = ExitRule.given((0.5, 0.5), 3)
    for name, extra in (("a", 0.0), ("b", 0.3)):  # exit 0 removed: "b" still runs its head for the confidence
        pl = Placement((False, True, True), (None, Gate(name, 1), None))
        o = outcome(ev, pl, rule, cuts={1: np.inf})
        np.testing.assert_allclose(o.latency_ms, 3.1 + extra)


# ----------------------------------------------------------------------------- risk control
def test_risk_controlled_rule_is_certified_and_safer_than_the_point_estimate(synth_cache):
    ev = Evidence.build(synth_cache, "calib", profile="jetson-nano")
    lam, grid = lambda_family("entropy", synth_cache.num_classes, 3, 50)
    assert lam[0] == 0 and (grid[0, :-1] == 0).all()  # the safest candidate is full
    ch = risk_controlled_rule(ev, 2.0, 0.1, num_classes=synth_cache.num_classes, n_grid=50)
    assert ch.rule.tuned_on == "calib" and "learn-then-test" in ch.rule.tuned_by
    assert ch.table.certified.iloc[: ch.ltt.n_certified].all()
    if ch.ltt.index is not None:
        assert ch.table.p_value.iloc[ch.ltt.index] <= 0.1
    with pytest.raises(ValueError, match="calib"):
        risk_controlled_rule(Evidence.build(synth_cache, "test"), 2.0, 0.1, num_classes=5)
    with pytest.raises(ValueError, match="max_acc_drop"):
        PolicyConfig(risk=0.1)


def test_ties_are_never_split_by_a_threshold():
    """200 samples with the same (saturated) confidence at exit 0, 150 right: a 0.99 target cannot accept
    them all; the budgeted rule cannot send a fraction of a tie out."""
    from analysis.core.calibrate import budgeted_thresholds

    n = 300
    z = np.zeros((n, 2, 4), np.float32)
    y = np.zeros(n, int)
    z[:200, 0, 0] = 50.0  # entropy ~0 for all 200
    z[150:200, 0, 0], z[150:200, 0, 1] = 0.0, 50.0  # 50 of them wrong, same entropy
    z[200:, 0, :] = np.random.default_rng(0).normal(size=(100, 4))
    z[:, 1, 0] = 5.0
    t = thresholds_for_accuracy(z, y, 0.99)
    acc = entropy(z)[:, 0] < t[0]
    assert not acc[:200].any() or (z[acc, 0].argmax(-1) == y[acc]).mean() >= 0.99
    b = budgeted_thresholds(z, 0.5)
    share = (entropy(z)[:, 0] < b[0]).mean()
    assert share in (0.0, 200 / n) or share <= 2 / 3 + 1e-9


def test_runtime_overhead_is_charged_per_sample_and_per_decision():
    from analysis.core.simulate import simulate_cascade, simulate_full

    base = CostModel.from_arrays([1.0, 1.0, 1.0], [0.2, 0.2, 0.2], [0.1] * 3, [0.1] * 3)
    ov = CostModel.from_arrays([1.0, 1.0, 1.0], [0.2, 0.2, 0.2], [0.1] * 3, [0.1] * 3, sample_ms=0.05,
                               decision_ms=0.01)
    g = np.random.default_rng(0)
    passes, correct = g.random((50, 3)) < 0.4, g.random((50, 3)) < 0.8
    a, b = simulate_cascade(passes, correct, base), simulate_cascade(passes, correct, ov)
    entered = np.where(a.exit < 2, a.exit + 1, 2)  # side exits entered: every one up to the exit taken
    np.testing.assert_allclose(b.latency_ms - a.latency_ms, 0.05 + 0.01 * entered)
    np.testing.assert_allclose(simulate_full(correct, ov).latency_ms, 3.2 + 0.05)
    assert "runtime" in b.breakdown


def test_an_exit_nothing_can_pass_is_not_entered_and_uncrossfitted_predictors_are_refused(synth_cache):
    ev = Evidence.build(synth_cache, "test", profile="jetson-nano")
    never0 = ExitRule.given((-np.inf, 0.5), 3)
    o = cascade_outcome(ev, never0)
    removed = outcome(ev, Placement((False, True, True), (None, None, None)), never0)
    np.testing.assert_allclose(o.latency_ms, removed.latency_ms)
    with pytest.raises(ValueError, match="cross-fitted"):
        fit_predictor(synth_cache, PredictorSpec("gate", 0, "linear", 0, (0.5, 0.5, np.inf)), folds=0)


def test_placement_under_risk_is_certified_on_calib_rows_the_search_never_saw(synth_cache):
    from analysis.study.placement_study import run_placement

    T = ExitRule.given((0.5, 0.5), 3)
    preds = {p.spec.name: p for p in [fit_predictor(synth_cache, PredictorSpec("gate", j, "linear", e, T),
                                                    folds=3, timing=0.01) for j, e in ((0, 0), (1, 1))]}
    cfg = PolicyConfig(max_acc_drop=2.0, risk=0.1, bootstrap=0)
    res, cmp = run_placement(synth_cache, preds, "exhaustive", profile="jetson-nano", cfg=cfg, progress=False)
    assert {"p_value", "certified"} <= set(res.table.columns)
    row = res.table[res.table.chosen].iloc[0]
    full_key = Placement.plain(3, [False, False, True]).key()
    assert row.certified or row.placement.key() == full_key
    # certification is a prefix of the candidates ordered from slowest to fastest (fixed sequence)
    cert = res.table[res.table.certified]
    assert (cert.p_value <= 0.1).all()


def test_under_risk_the_certification_halfs_labels_change_no_fitted_predictor(tmp_path):
    """Learn-then-Test's premise: nothing certified depends on the certification half. Its labels changed, every
    predictor the placement deploys (refitted on the search half) is the same, and those refits are saved."""
    from analysis.study.placement_study import run_placement, write_placement
    from predictors.store import load_predictors
    from tests.helpers import synthetic_arrays

    data = synthetic_arrays(n=(200, 240, 200), seed=3)
    y, z, f = data["calib"]
    cert = np.sort(np.random.default_rng(0).permutation(len(y))[len(y) // 2:])  # run_placement's halves, seed 0
    y2 = y.copy()
    y2[cert] = (y2[cert] + 1) % z.shape[2]
    a = priced_cache(tmp_path / "a", data, model_name="s")
    b = priced_cache(tmp_path / "b", {**data, "calib": (y2, z, f)}, model_name="s")
    cfg = PolicyConfig(max_acc_drop=2.0, risk=0.2, bootstrap=0)
    got = {}
    for name, cache in (("a", a), ("b", b)):
        rule = ExitRule.given((0.5, 0.5), 3)  # fitted on all of calib, labels included: refitted under risk
        preds = {p.spec.name: p for p in [
            fit_predictor(cache, PredictorSpec("gate", 0, "linear", 0, rule), folds=2, timing=0.005),
            fit_predictor(cache, PredictorSpec("exit", 1, "linear", None, rule), folds=2, timing=0.005),
            fit_predictor(cache, PredictorSpec("oracle", 0, "linear"), folds=2, timing=0.005)]}
        res, _ = run_placement(cache, preds, "greedy", profile="jetson-nano", cfg=cfg, progress=False, seed=0)
        got[name] = res.predictors
        assert set(res.predictors) == set(preds)
        for p in res.predictors.values():
            assert len(p.fit_rows) == len(y) - len(cert) and not np.isin(p.fit_rows, cert).any()
        write_placement(res, _, tmp_path / f"pl_{name}")
        back = load_predictors(tmp_path / f"pl_{name}" / "predictors", cache)
        for n, p in res.predictors.items():  # the deployed predictors are exactly the certified ones
            np.testing.assert_array_equal(back[n].fit_rows, p.fit_rows)
            np.testing.assert_allclose(back[n]._raw(cache, "calib"), p._raw(cache, "calib"))
    for n in got["a"]:
        pa, pb = got["a"][n], got["b"][n]
        assert pa.spec == pb.spec
        np.testing.assert_array_equal(pa.oof, pb.oof)
        np.testing.assert_array_equal(pa._raw(a, "test"), pb._raw(b, "test"))
        np.testing.assert_array_equal(pa._raw(a, "calib"), pb._raw(b, "calib"))  # the cert half scored by the refit
