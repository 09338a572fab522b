import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from predictors import (PredictorSpec, fit_predictor, list_predictor_models, load_predictors, make_estimator,
                        make_target, save_predictors)
from predictors.evaluate import exit_metrics, gate_curves, gate_metrics, ranking_metrics
from predictors.targets import exit_target, oracle_target, passes
from predictors.torch_mlp import TorchMLPClassifier, TorchMLPRegressor
from tests.helpers import priced_cache, synthetic_arrays

T = (0.5, 0.5, np.inf)


@parametrize_with_checks([TorchMLPClassifier(max_epochs=30), TorchMLPRegressor(max_epochs=30)])
def test_torch_predictors_follow_the_sklearn_contract(estimator, check):
    check(estimator)


def test_targets_against_a_naive_loop(synth_cache):
    z = np.asarray(synth_cache.logits("calib"))
    y = synth_cache.labels("calib")
    ex, orc, ok = exit_target(synth_cache, "calib", T), oracle_target(synth_cache, "calib"), passes(synth_cache, "calib", T)
    for i in range(len(y)):
        ents = []
        for k in range(z.shape[1]):
            p = np.exp(z[i, k] - z[i, k].max())
            p /= p.sum()
            ents.append(-(p * np.log(p)).sum())
        first = next((k for k in range(z.shape[1] - 1) if ents[k] < T[k]), z.shape[1] - 1)
        assert ex[i] == first
        assert ok[i, 0] == (ents[0] < T[0])
        first_ok = next((k for k in range(z.shape[1]) if z[i, k].argmax() == y[i]), z.shape[1] - 1)
        assert orc[i] == first_ok
    np.testing.assert_array_equal(make_target(synth_cache, "calib", "gate", k=1, rule=T), ok[:, 1])
    with pytest.raises(ValueError, match="2 thresholds for 3 exits|thresholds"):
        exit_target(synth_cache, "calib", (0.1,))


@pytest.mark.parametrize("model", [m for m in list_predictor_models() if m != "dummy"])
def test_every_predictor_learns_a_planted_relation_and_not_shuffled_labels(synth_cache, model):
    gate = fit_predictor(synth_cache, PredictorSpec("gate", 0, model, 0, T), timing=0.01)
    ev = gate.evaluate(synth_cache, "test")
    assert ev["balanced_accuracy"] > 0.85, ev
    ext = fit_predictor(synth_cache, PredictorSpec("exit", 0, model, None, T), timing=0.01)
    assert ext.evaluate(synth_cache, "test")["accuracy"] > 0.75
    ent = fit_predictor(synth_cache, PredictorSpec("entropy", 0, model, 1), timing=0.01)
    assert ent.evaluate(synth_cache, "test")["r2"] > 0.6
    # control: the same model on shuffled targets learns nothing that transfers
    x = gate.inputs(synth_cache, "calib")
    y = make_target(synth_cache, "calib", "gate", k=0, rule=T)
    from predictors.models import one_thread

    with one_thread():
        est = make_estimator(model, "classification").fit(x, np.random.default_rng(0).permutation(y))
    yt = make_target(synth_cache, "test", "gate", k=0, rule=T)
    control = gate_metrics(yt, est.predict(gate.inputs(synth_cache, "test")))
    assert control["balanced_accuracy"] < 0.62, control
    assert gate.cost["macs"] > 0 and gate.cost["ms_b1"] > 0


def test_ranking_metrics_against_a_naive_pair_count(synth_cache):
    """ROC AUC is the share of (leaving, not leaving) pairs the score orders right (ties count half)."""
    rng = np.random.default_rng(0)
    y = rng.random(80) < 0.3
    score = np.round(y * 0.6 + rng.random(80), 1)  # ties on purpose
    pos, neg = score[y], score[~y]
    naive = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    m = ranking_metrics(y, score)
    assert m["roc_auc"] == pytest.approx(naive)
    c = gate_curves(y, score)
    assert c["fpr"][0] == 0 and c["tpr"][-1] == 1 and np.sum(np.diff(c["fpr"]) * (c["tpr"][1:] + c["tpr"][:-1]) / 2) == pytest.approx(naive)
    assert c["positive_rate"] == pytest.approx(y.mean()) and 0 < c["average_precision"] <= 1
    assert np.isnan(ranking_metrics(np.ones(5), np.arange(5))["roc_auc"]) and gate_curves(np.ones(5), np.arange(5)) == {}
    # a fitted gate and entropy predictor: out-of-fold on calib, ranked against leaving at their exit
    for spec in (PredictorSpec("gate", 0, "linear", 0, T), PredictorSpec("entropy", 0, "linear", 0, T)):
        p = fit_predictor(synth_cache, spec, timing=0.01)
        ev = p.evaluate(synth_cache, "calib")
        lv = passes(synth_cache, "calib", T)[:, 0]
        assert ev["roc_auc"] == pytest.approx(ranking_metrics(lv, p.score(synth_cache, "calib"))["roc_auc"])
        assert ev["roc_auc"] > 0.8 and p.curves(synth_cache, "test")["roc_auc"] > 0.8
    ext = fit_predictor(synth_cache, PredictorSpec("exit", 0, "linear", None, T), timing=0.01)
    assert ext.curves(synth_cache, "calib") == {} and "roc_auc" not in ext.evaluate(synth_cache, "calib")


def test_error_rates_by_hand():
    m = gate_metrics(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]))
    assert m["false_enter"] == 0.25 and m["false_skip"] == 0.25 and m["confusion"] == [[1, 1], [1, 1]]
    e = exit_metrics(np.array([0, 1, 2, 2]), np.array([1, 1, 0, 2]), 3)
    assert e["false_enter"] == 0.25 and e["false_skip"] == 0.25 and e["accuracy"] == 0.5


def test_saved_predictor_reloads_identically_and_refuses_another_cache(synth_cache, tmp_path):
    p = fit_predictor(synth_cache, PredictorSpec("gate", 0, "nn", 1, T), timing=0.01)
    save_predictors([p], tmp_path / "pred")
    q = load_predictors(tmp_path / "pred", synth_cache)[p.spec.name]
    np.testing.assert_array_equal(p.predict(synth_cache, "test"), q.predict(synth_cache, "test"))
    other = priced_cache(tmp_path / "other", synthetic_arrays(seed=5))
    with pytest.raises(ValueError, match="fitted on cache .* refit"):
        load_predictors(tmp_path / "pred", other)
    with pytest.raises(FileNotFoundError, match="fit-predictors"):
        load_predictors(tmp_path / "none")


def test_spec_and_split_rules(synth_cache):
    with pytest.raises(ValueError, match="test split is refused"):
        fit_predictor(synth_cache, PredictorSpec("oracle", 0, "linear"), split="test")
    with pytest.warns(UserWarning, match="over-confident"):
        fit_predictor(synth_cache, PredictorSpec("oracle", 0, "linear"), split="train", timing=0.01)
    with pytest.raises(ValueError, match="at <= for"):
        PredictorSpec("gate", 2, "nn", 1, T)
    with pytest.raises(ValueError, match="needs the exit rule"):
        PredictorSpec("gate", 0, "nn", 1)
    with pytest.raises(KeyError, match="unknown predictor model 'svm'; known: dummy, hgb, linear, linear-cv, mlp, nn"):
        PredictorSpec("oracle", 0, "svm")
    with pytest.raises(ValueError, match="position 7 out of range"):
        fit_predictor(synth_cache, PredictorSpec("oracle", 7, "linear"))


def test_confidence_inputs_use_only_earlier_exits(synth_cache):
    from predictors.inputs import CONFIDENCES, make_inputs

    tab = synth_cache.table("calib").sort_values(["exit", "sample"])
    feats = [np.asarray(synth_cache.features("calib", j), dtype=np.float32) for j in range(synth_cache.num_exits)]
    # after stage 0 no exit has run yet: the features alone
    np.testing.assert_array_equal(make_inputs(synth_cache, "calib", 0, with_confidences=True), feats[0])
    x = make_inputs(synth_cache, "calib", 2, with_confidences=True)
    d = feats[2].shape[1]
    np.testing.assert_array_equal(x[:, :d], feats[2])
    # then exits 0 and 1's confidences (per measure, per exit), as the cache's table holds them; not exit 2's
    want = np.column_stack([tab.loc[tab.exit == e, m].to_numpy(np.float32) for m in CONFIDENCES for e in (0, 1)])
    np.testing.assert_allclose(x[:, d:], want, rtol=1e-6)
    last = tab.loc[tab.exit == 2, "entropy"].to_numpy(np.float32)
    assert not any(np.allclose(col, last) for col in x[:, d:].T)


@pytest.mark.parametrize("model", ["linear", "hgb", "nn"])
def test_make_estimator_passes_the_class_weight_on(model):
    est = clone(make_estimator(model, "classification", class_weight="balanced"))
    weights = {k: v for k, v in est.get_params().items() if k.endswith("class_weight")}
    assert list(weights.values()) == ["balanced"], weights


def test_one_thread_limits_openmp_and_restores_it():
    from threadpoolctl import threadpool_info

    from predictors.models import one_thread

    def omp():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"]

    before = omp()
    with one_thread():
        assert omp() and set(omp()) == {1}
        with one_thread():  # nested, as a fit inside a cross-fit
            assert set(omp()) == {1}
        assert set(omp()) == {1}
    assert omp() == before


def test_cache_rows_read_what_make_inputs_holds_in_any_order(synth_cache):
    from predictors.inputs import CacheRows, make_inputs

    for at, conf in ((0, False), (1, True), (2, True)):
        full = make_inputs(synth_cache, "calib", at, with_confidences=conf)
        rows = CacheRows(synth_cache, "calib", at, with_confidences=conf)
        assert rows.shape == full.shape
        idx = np.random.default_rng(at).permutation(len(full))[:57]
        np.testing.assert_array_equal(rows.take(idx), full[idx])
        sub = rows[idx]  # a lazy subset of a lazy subset
        np.testing.assert_array_equal(sub[5:9].take(np.array([3, 0])), full[idx[5:9][[3, 0]]])
        np.testing.assert_array_equal(np.asarray(rows), full)
        mean, std = rows.moments()
        np.testing.assert_allclose(mean, full.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(std, full.std(0), rtol=1e-4, atol=1e-6)


def test_a_torch_mlp_fitted_on_rows_read_on_demand_is_the_one_fitted_in_memory(synth_cache, monkeypatch):
    import predictors.fit as fit_mod

    quick = {"max_epochs": 40}
    for spec in (PredictorSpec("gate", 1, "nn", 1, T, with_confidences=True, params=quick),
                 PredictorSpec("entropy", 0, "nn", 1, params=quick)):
        mem = fit_predictor(synth_cache, spec, folds=3, timing=0.01, stream=False)
        lazy = fit_predictor(synth_cache, spec, folds=3, timing=0.01, stream=True)
        assert lazy.estimator.n_iter_ == mem.estimator.n_iter_
        # the same batches in the same order: only the moments' summation order differs (float64 by chunks)
        np.testing.assert_allclose(lazy._raw(synth_cache, "test"), mem._raw(synth_cache, "test"), atol=1e-5)
        oof = np.abs(lazy.oof - mem.oof)
        assert oof.mean() < 1e-3, oof.mean()
    # auto: a torch MLP streams when the inputs would be large; other models warn, or refuse when told to stream
    monkeypatch.setattr(fit_mod, "STREAM_BYTES", 0)
    spec = PredictorSpec("gate", 0, "nn", 0, T, params=quick)
    auto = fit_predictor(synth_cache, spec, folds=2, timing=0.01)
    np.testing.assert_allclose(auto._raw(synth_cache, "test"), fit_predictor(
        synth_cache, spec, folds=2, timing=0.01, stream=True)._raw(synth_cache, "test"))
    with pytest.warns(UserWarning, match="needs them there"):
        fit_predictor(synth_cache, PredictorSpec("gate", 0, "linear", 0, T), timing=0.01)
    with pytest.raises(ValueError, match="only models nn, sgd"):
        fit_predictor(synth_cache, PredictorSpec("gate", 0, "linear", 0, T), timing=0.01, stream=True)


def test_scores_of_a_large_split_come_a_chunk_at_a_time(synth_cache, monkeypatch):
    import predictors.fitted as fitted_mod

    p = fit_predictor(synth_cache, PredictorSpec("gate", 0, "linear", 0, T), timing=0.01)
    whole = p.score(synth_cache, "test")
    monkeypatch.setattr(fitted_mod, "SCORE_CHUNK", 37)
    # float32 features: a chunk's matrix product may take another BLAS kernel (AVX-512 vs AVX2 blocking), so the
    # scores agree to float32 precision, not bit for bit
    np.testing.assert_allclose(p.score(synth_cache, "test"), whole, rtol=1e-5, atol=1e-6)


def test_targets_read_a_chunk_of_logits_at_a_time(synth_cache, monkeypatch):
    import predictors.targets as tg

    want = {t: make_target(synth_cache, "test", t, k=1, rule=T) for t in ("gate", "exit", "entropy", "oracle")}
    monkeypatch.setattr(tg, "CHUNK", 7)
    for t, w in want.items():
        np.testing.assert_array_equal(make_target(synth_cache, "test", t, k=1, rule=T), w)


def test_an_sgd_model_learns_incrementally_from_rows_read_on_demand(synth_cache, tmp_path, monkeypatch):
    import predictors.torch_mlp as tm

    monkeypatch.setattr(tm.Rows, "chunk", 64)  # many chunks: partial_fit over each, in a seeded order
    gate = fit_predictor(synth_cache, PredictorSpec("gate", 0, "sgd", 0, T, class_weight="balanced"), timing=0.01,
                         stream=True)
    assert gate.evaluate(synth_cache, "test")["balanced_accuracy"] > 0.85
    ent = fit_predictor(synth_cache, PredictorSpec("entropy", 0, "sgd", 1), timing=0.01, stream=True)
    assert ent.evaluate(synth_cache, "test")["r2"] > 0.5
    save_predictors([gate, ent], tmp_path / "p")  # a plain fitted pipeline: skops files as any scikit-learn model
    back = load_predictors(tmp_path / "p", synth_cache)
    np.testing.assert_array_equal(back[gate.spec.name].score(synth_cache, "test"), gate.score(synth_cache, "test"))


def test_a_predictor_fitted_on_some_rows_scores_the_others_with_its_refit(synth_cache, tmp_path):
    from predictors import load_predictors, save_predictors

    rows = np.arange(0, synth_cache.size("calib"), 2)
    p = fit_predictor(synth_cache, PredictorSpec("gate", 0, "linear", 0, T), folds=2, timing=0.01, rows=rows)
    whole = fit_predictor(synth_cache, PredictorSpec("gate", 0, "linear", 0, T), folds=2, timing=0.01)
    raw = p._raw(synth_cache, "calib")
    np.testing.assert_array_equal(raw[rows], p.oof)  # out of fold where it was fitted
    others = np.setdiff1d(np.arange(synth_cache.size("calib")), rows)
    x = p.inputs(synth_cache, "calib")
    # the refit where it never looked; float32 coefficients: 200 rows vs the whole split may take another BLAS
    # kernel (AVX-512 vs AVX2 blocking), so they agree to float32 precision, not bit for bit
    np.testing.assert_allclose(raw[others], p.raw_inputs(x[others]), rtol=1e-5, atol=1e-6)
    part, fitted = p._raw(synth_cache, "calib", slice(5, 40)), np.isin(np.arange(5, 40), rows)
    np.testing.assert_array_equal(part[fitted], raw[5:40][fitted])  # out-of-fold rows: copied, exact
    # the refit's rows: 35 rows vs the whole split may take another BLAS kernel, float32 precision
    np.testing.assert_allclose(part, raw[5:40], rtol=1e-5, atol=1e-6)
    assert not np.array_equal(p.oof, whole.oof[rows])  # another fit, not a slice of the whole one
    save_predictors([p], tmp_path / "p")
    back = load_predictors(tmp_path / "p", synth_cache)[p.spec.name]
    np.testing.assert_array_equal(back.fit_rows, rows)
    np.testing.assert_allclose(back._raw(synth_cache, "calib"), raw)
    with pytest.raises(ValueError, match="at least 2 rows"):
        fit_predictor(synth_cache, PredictorSpec("gate", 0, "linear", 0, T), folds=2, timing=0.01, rows=[10 ** 6])
