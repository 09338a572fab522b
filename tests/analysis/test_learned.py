"""The learned exit policy (analysis.core.learned): simulation against a naive per-sample loop, targets against a
naive loop, out-of-fold calib scores, tuned cuts under the calib accuracy constraint."""
import numpy as np
import pytest

from analysis.core.costs import CostModel
from analysis.core.learned import (fit_learned, learned_exits, learned_inputs, learned_targets, make_model,
                                   simulate_learned, tune_learned_cuts)
from analysis.core.simulate import simulate_full


def naive_learned(scores, cuts, logits, labels, costs, scorer_ms):
    """Per sample: walk the network, add each cost as it is paid (the module docstring's semantics)."""
    n, k, _ = logits.shape
    g = np.broadcast_to(np.asarray(scorer_ms, float), (k - 1,))
    S, E, W, R = costs.stage_ms, costs.exit_ms, costs.write_ms, costs.read_ms
    exits, lats, oks = [], [], []
    for s in range(n):
        lat = costs.sample_ms
        for i in range(k):
            lat += S[i]
            if i == k - 1:
                lat += E[i]
                break
            lat += costs.decision_ms + W[i] + E[i] + g[i]
            if scores[s, i] >= cuts[i]:
                break
            lat += R[i]
        exits.append(i), lats.append(lat), oks.append(logits[s, i].argmax() == labels[s])
    return np.array(exits), np.array(lats), np.array(oks)


def random_costs(g, k):
    return CostModel.from_arrays(g.uniform(0.5, 2, k), g.uniform(0.05, 0.3, k), g.uniform(0, 0.1, k),
                                 g.uniform(0, 0.1, k), sample_ms=float(g.uniform(0, 0.2)),
                                 decision_ms=float(g.uniform(0, 0.05)))


@pytest.mark.parametrize("seed", range(6))
def test_simulate_matches_naive_loop(seed):
    g = np.random.default_rng(seed)
    n, k, c = 60, int(g.integers(2, 6)), 4
    logits = g.normal(size=(n, k, c))
    labels = g.integers(0, c, n)
    scores = g.random((n, k - 1))
    cuts = g.choice([-np.inf, np.inf, 0.2, 0.5, 0.8], k - 1)
    costs = random_costs(g, k)
    gms = g.uniform(0, 0.05, k - 1) if seed % 2 else 0.03
    o = simulate_learned(scores, cuts, logits, labels, costs, gms)
    ex, lat, ok = naive_learned(scores, cuts, logits, labels, costs, gms)
    np.testing.assert_array_equal(o.exit, ex)
    np.testing.assert_allclose(o.latency_ms, lat, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(o.correct, ok)
    np.testing.assert_allclose(o.breakdown["predictors"],
                               [sum(np.broadcast_to(gms, (k - 1,))[: min(e + 1, k - 1)]) for e in ex])


def test_targets_match_naive_loop(synth_cache):
    y = learned_targets(synth_cache, "calib")
    z, lab = np.asarray(synth_cache.logits("calib")), synth_cache.labels("calib")
    n, k, _ = z.shape
    assert y.shape == (n, k - 1) and y.dtype == bool
    for s in range(n):
        right = [z[s, i].argmax() == lab[s] for i in range(k)]
        for i in range(k - 1):
            assert y[s, i] == (right[i] or not any(right[i + 1:]))
    assert 0 < y.mean() < 1


def test_inputs_shape(synth_cache):
    f = np.asarray(synth_cache.features("calib", 1)).reshape(synth_cache.size("calib"), -1)
    x = learned_inputs(synth_cache, "calib", 1)
    assert x.shape == (len(f), f.shape[1] + 3 * 2)  # entropy, max-prob and margin of exits 0 and 1
    np.testing.assert_allclose(x[:, : f.shape[1]], f)
    with pytest.raises(IndexError):
        learned_inputs(synth_cache, "calib", synth_cache.num_exits - 1)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # scikit-learn's notes on LogisticRegressionCV's coming defaults
def test_calib_scores_are_out_of_fold(synth_cache):
    from sklearn.model_selection import KFold

    sc = fit_learned(synth_cache, folds=4, seed=3)
    oof = sc.scores(synth_cache, "calib")
    y = learned_targets(synth_cache, "calib")
    n = len(y)
    assert oof.shape == y.shape and np.isfinite(oof).all()
    for k in range(y.shape[1]):
        x = learned_inputs(synth_cache, "calib", k)
        for tr, te in KFold(4, shuffle=True, random_state=3).split(np.arange(n)):  # the manual cross-fit
            want = make_model(3).fit(x[tr], y[tr, k]).predict_proba(x[te])[:, 1]
            np.testing.assert_allclose(oof[te, k], want, rtol=1e-10, atol=1e-12)
        insample = sc.models_[k].predict_proba(x)[:, 1]
        assert not np.allclose(insample, oof[:, k])  # the in-sample model's scores are not the calib scores
    t = sc.scores(synth_cache, "test")
    assert t.shape == (synth_cache.size("test"), y.shape[1]) and ((t >= 0) & (t <= 1)).all()


def test_cut_extremes_and_constraint(synth_cache):
    costs = CostModel.from_cache(synth_cache)
    z, lab = np.asarray(synth_cache.logits("calib")), synth_cache.labels("calib")
    n, k, _ = z.shape
    sc = fit_learned(synth_cache, folds=5, seed=0).scores(synth_cache, "calib")
    first = simulate_learned(sc, np.full(k - 1, -np.inf), z, lab, costs, 0.01)
    assert (first.exit == 0).all()
    np.testing.assert_array_equal(first.correct, z[:, 0].argmax(-1) == lab)
    full = simulate_full(z.argmax(-1) == lab[:, None], costs)
    never = simulate_learned(sc, np.full(k - 1, np.inf), z, lab, costs, 0.01)
    np.testing.assert_array_equal(never.exit, full.exit)
    np.testing.assert_array_equal(never.correct, full.correct)
    assert (never.latency_ms > full.latency_ms).all()  # every side exit and scorer paid on the way
    for drop in (0.0, 1.0, 5.0):
        cuts = tune_learned_cuts(sc, z, lab, costs, 0.01, max_acc_drop=drop)
        o = simulate_learned(sc, cuts, z, lab, costs, 0.01)
        assert o.correct.mean() >= full.correct.mean() - drop / 100 - 1e-12
        again = tune_learned_cuts(sc, z, lab, costs, 0.01, max_acc_drop=drop)
        np.testing.assert_array_equal(cuts, again)  # deterministic


def test_tuned_policy_no_slower_than_full(synth_cache):
    costs = CostModel.from_cache(synth_cache)
    z, lab = np.asarray(synth_cache.logits("calib")), synth_cache.labels("calib")
    sc = fit_learned(synth_cache).scores(synth_cache, "calib")
    cuts = tune_learned_cuts(sc, z, lab, costs, 0.01, max_acc_drop=1.0)
    o = simulate_learned(sc, cuts, z, lab, costs, 0.01)
    full = simulate_full(z.argmax(-1) == lab[:, None], costs)
    assert o.latency_ms.mean() <= full.latency_ms.mean()
    assert np.isfinite(cuts).any()  # the planted relation: some exit leaves early


def test_refusals():
    costs = CostModel.from_arrays([1.0, 1.0], [0.1, 0.1])
    z, lab = np.zeros((3, 2, 2)), np.zeros(3, int)
    with pytest.raises(ValueError):
        simulate_learned(np.zeros((3, 2)), [0.5], z, lab, costs, 0.0)
    with pytest.raises(ValueError):
        simulate_learned(np.zeros((3, 1)), [0.5], z, lab, costs, -1.0)
    with pytest.raises(ValueError):
        simulate_learned(np.full((3, 1), np.nan), [0.5], z, lab, costs, 0.0)
    with pytest.raises(ValueError):
        tune_learned_cuts(np.zeros((3, 1)), z, lab, costs, 0.0, max_acc_drop=-1)


def test_single_class_fold_scores_constant():
    from analysis.core.learned import fit_scorer, score_with

    m = fit_scorer(np.random.default_rng(0).normal(size=(5, 3)), np.ones(5, bool), 0)
    np.testing.assert_array_equal(score_with(m, np.zeros((4, 3))), np.ones(4))


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")
def test_the_real_runtime_takes_the_simulators_exits_for_the_learned_policy(toy_splits, tmp_path):
    """The learned decision as the runtime runs it (pooling, confidences, scaler, logistic score, cut) leaves at the
    exit the simulator says for every test sample, at batch 1 and on a batch."""
    import torch

    from analysis.core.learned import leave_callables
    from branchy.cache import dump
    from branchy.models import build_model
    from branchy.runtime import EarlyExitRuntime

    torch.manual_seed(0)
    m = build_model("b-lenet", exits=(0, 1), num_classes=4).eval()
    cache = dump(m, toy_splits, tmp_path / "c", progress=False, profile_time=0.01, pooling="grid:2")
    sc = fit_learned(cache, folds=3)
    test = sc.scores(cache, "test")
    cuts = np.median(test, 0)  # a cut that sends samples every way
    want = learned_exits(test, cuts)
    assert len(set(want.tolist())) == 3, want
    rt = EarlyExitRuntime(m, (np.inf, np.inf, np.inf),
                          leave=leave_callables(sc, cuts, cache.manifest["pooling"], cache.manifest["feature_dtype"]))
    x, _ = toy_splits.test.batch(torch.arange(cache.size("test")))
    one = torch.cat([rt(x[i:i + 1])[1] for i in range(len(x))]).numpy()
    assert (one == want).all(), (one, want)
    pred, batched = rt(x)
    assert (batched.numpy() == want).all()
    z = np.asarray(cache.logits("test"))
    assert (pred.numpy() == z[np.arange(len(z)), want].argmax(-1)).all()
    with pytest.raises(ValueError, match="every kept side exit"):
        EarlyExitRuntime(m, (np.inf, np.inf, np.inf), leave={0: lambda h, zs: None})


def test_the_risk_controlled_cut_is_the_cheapest_certified_one(synth_cache):
    """LTT's and CRC's shared cut against their selections redone by hand on the same loss matrix."""
    from analysis.core.costs import CostModel
    from analysis.core.crc import crc_select
    from analysis.core.learned import LAMBDAS, risk_controlled_cut
    from analysis.core.risk import ltt_select

    sc = fit_learned(synth_cache, folds=3).scores(synth_cache, "calib")
    z, y = np.asarray(synth_cache.logits("calib")), synth_cache.labels("calib")
    costs = CostModel.from_cache(synth_cache, "measured")
    full_right = z[:, -1].argmax(-1) == y
    loss = np.array([full_right & ~simulate_learned(sc, np.full(2, lam), z, y, costs, 0.01).correct for lam in LAMBDAS])
    ms = np.array([simulate_learned(sc, np.full(2, lam), z, y, costs, 0.01).latency_ms.mean() for lam in LAMBDAS])
    for method, want in (("ltt", ltt_select(loss, ms, 0.02, 0.1).index), ("crc", crc_select(loss, ms, 0.02,
                                                                                             monotonize=True).index)):
        lam, res = risk_controlled_cut(sc, z, y, costs, 0.01, eps_pts=2.0, delta=0.1, method=method)
        assert res.index == want and (lam is None) == (want is None)
        if want is not None:
            assert lam == LAMBDAS[want] and lam < 1.0  # something certified beyond the safest cut
    with pytest.raises(ValueError, match="method must be 'ltt' or 'crc'"):
        risk_controlled_cut(sc, z, y, costs, 0.01, eps_pts=2.0, method="naive")
