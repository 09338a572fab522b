"""The learned exit policy as a registered policy (leave predictors from the predictor registry, Placement.leaves)
and jump-and-leave: simulation against naive per-sample loops, the leave target against a naive loop, the policy
decided on calib under its accuracy floor, and the real runtime taking the simulator's exits (100 %)."""
import contextlib
import warnings

import numpy as np
import pytest

from analysis.core.costs import CostModel
from analysis.core.evidence import Evidence, leave_cut_key, outcome
from analysis.core.learned import simulate_learned
from analysis.core.simulate import simulate_gated
from branchy.exits import ExitRule
from placement import Gate, Placement
from predictors import PredictorSpec, make_inputs
from predictors.targets import make_target


def random_costs(g, k):
    return CostModel.from_arrays(g.uniform(0.5, 2, k), g.uniform(0.05, 0.3, k), g.uniform(0, 0.1, k),
                                 g.uniform(0, 0.1, k), sample_ms=float(g.uniform(0, 0.2)),
                                 decision_ms=float(g.uniform(0, 0.05)))


def test_leave_target_matches_naive_loop(synth_cache):
    z, y = np.asarray(synth_cache.logits("calib")), synth_cache.labels("calib")
    k = synth_cache.num_exits
    for e in range(k - 1):
        got = make_target(synth_cache, "calib", "leave", k=e)
        want = [int(z[s, e].argmax() == y[s] or not any(z[s, j].argmax() == y[s] for j in range(e + 1, k)))
                for s in range(len(y))]
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="side exit"):
        make_target(synth_cache, "calib", "leave", k=k - 1)


def test_leave_spec_reads_its_own_exit(synth_cache):
    s = PredictorSpec("leave", 1, "linear-cv", 1, with_confidences=True)
    assert s.n_conf == 2 and s.task == "classification" and s.name == "leave_at1_for1_linear-cv"
    x = make_inputs(synth_cache, "calib", 1, with_confidences=True, n_conf=s.n_conf)
    f = synth_cache.features("calib", 1).shape[1]
    assert x.shape[1] == f + 3 * 2
    with pytest.raises(ValueError, match="at = for"):
        PredictorSpec("leave", 0, "linear", 1)
    with pytest.raises(ValueError, match="side exit it decides at"):
        PredictorSpec("leave", 0, "linear")


def test_learned_placement_round_trips_and_refuses_other_forms():
    pl = Placement.learned_on({0: "a", 2: "c"}, 4, kept=[True, False, True, True])
    assert pl.learned and pl.describe() == "e0:learn e1:- e2:learn e3:final"
    assert Placement.from_dict(pl.to_dict()) == pl
    assert Placement.from_dict(Placement.plain(3).to_dict()) == Placement.plain(3)  # 0.2 files have no leaves
    with pytest.raises(ValueError, match="every kept side exit"):
        Placement((True,) * 3, (None,) * 3, leaves=(Gate("a", 0), None, None))
    with pytest.raises(ValueError, match="at must be 1"):
        Placement((True,) * 3, (None,) * 3, leaves=(Gate("a", 0), Gate("b", 0), None))
    with pytest.raises(ValueError, match="without gates or a jump"):
        Placement((True,) * 3, (Gate("g", 0), None, None), leaves=(Gate("a", 0), Gate("b", 1), None))
    with pytest.raises(ValueError, match="give a jump"):
        Placement((True,) * 3, (None,) * 3, jump_leave=True)
    j = Placement((True,) * 3, (None,) * 3, Gate("j", 0), jump_leave=True)
    assert j.describe().endswith("jump@0+leave") and Placement.from_dict(j.to_dict()) == j
    assert j.key() != Placement((True,) * 3, (None,) * 3, Gate("j", 0)).key()


def _evidence(g, n, k, c=4, with_confidences=False):
    logits = g.normal(size=(n, k, c))
    labels = g.integers(0, c, n)
    preds = logits.argmax(-1)
    costs = random_costs(g, k)
    ev = Evidence("test", "entropy", g.random((n, k)), preds == labels[:, None], preds, costs)
    for e in range(k - 1):
        name = f"leave{e}"
        ev.scores[name] = g.random(n)
        ev.pcost[name] = (float(g.uniform(0, 0.05)), 10.0)
        ev.specs[name] = PredictorSpec("leave", e, "linear", e, with_confidences=with_confidences)
    return ev, logits, labels


def naive_learned(ev, kept, cuts):
    """Per sample: walk the network; at every kept side exit pay buffer, head and the leave predictor, leave when
    its score reaches the cut, else read the buffer back and go on."""
    k, c = ev.num_exits, ev.costs
    out = []
    for s in range(ev.n):
        lat = c.sample_ms
        for i in range(k):
            lat += c.stage_ms[i]
            if i == k - 1:
                lat += c.exit_ms[i]
                break
            if not kept[i]:
                continue
            lat += c.decision_ms + c.write_ms[i] + c.exit_ms[i] + ev.pcost[f"leave{i}"][0]
            if ev.scores[f"leave{i}"][s] >= cuts[i]:
                break
            lat += c.read_ms[i]
        out.append((i, lat, ev.correct[s, i]))
    return [np.array(v) for v in zip(*out)]


@pytest.mark.parametrize("seed", range(6))
def test_learned_outcome_matches_naive_loop_and_the_reference_simulation(seed):
    g = np.random.default_rng(seed)
    k = int(g.integers(2, 6))
    ev, logits, labels = _evidence(g, 80, k)
    kept = [True] + [bool(v) for v in g.random(k - 2) < 0.7] + [True]
    names = {e: f"leave{e}" for e in range(k - 1) if kept[e]}
    cuts = g.choice([-np.inf, np.inf, 0.2, 0.5, 0.8], k - 1)
    pl = Placement.learned_on(names, k, kept)
    o = outcome(ev, pl, ExitRule("entropy", (0.5,) * k), cuts={leave_cut_key(e): cuts[e] for e in names})
    ex, lat, ok = naive_learned(ev, kept, cuts)
    np.testing.assert_array_equal(o.exit, ex)
    np.testing.assert_allclose(o.latency_ms, lat, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(o.correct, ok)
    if any(not kept[j] and any(kept[j + 1: k - 1]) for j in range(k - 1)):  # reads a removed exit: refused
        ev2, _, _ = _evidence(np.random.default_rng(seed), 80, k, with_confidences=True)
        with pytest.raises(ValueError, match="whose head then never runs"):
            outcome(ev2, pl, ExitRule("entropy", (0.5,) * k), cuts={})
    if all(kept):  # analysis.core.learned's own simulation of the same policy
        scores = np.stack([ev.scores[f"leave{e}"] for e in range(k - 1)], 1)
        ref = simulate_learned(scores, cuts, logits, labels, ev.costs, [ev.pcost[f"leave{e}"][0] for e in range(k - 1)])
        np.testing.assert_array_equal(o.exit, ref.exit)
        np.testing.assert_allclose(o.latency_ms, ref.latency_ms, rtol=1e-12, atol=1e-12)


def naive_jump_leave(passes, correct, costs, kept, at, target, sure, jms):
    """Per sample: the cascade up to stage ``at``; there the exit predictor (cost ``jms``) names t; exits at..t-1
    skipped; a sure sample leaves at the first kept exit from max(t, at) on without the check, the others go on as
    a cascade."""
    k = len(kept)
    out = []
    for s in range(len(passes)):
        lat, t = costs.sample_ms, max(int(target[s]), at)
        for i in range(k):
            lat += costs.stage_ms[i]
            if i == at:
                lat += jms
            if i == k - 1:
                lat += costs.exit_ms[i]
                break
            if not kept[i] or at <= i < t:
                continue
            lat += costs.decision_ms + costs.write_ms[i] + costs.exit_ms[i]
            if passes[s, i] or (sure[s] and i >= t):
                break
            lat += costs.read_ms[i]
        out.append((i, lat, correct[s, i]))
    return [np.array(v) for v in zip(*out)]


@pytest.mark.parametrize("seed", range(8))
def test_jump_and_leave_matches_naive_loop(seed):
    g = np.random.default_rng(seed)
    n, k = 100, int(g.integers(2, 6))
    passes, correct = g.random((n, k)) < 0.3, g.random((n, k)) < 0.7
    costs = random_costs(g, k)
    kept = np.array([bool(v) for v in g.random(k) < 0.75])
    kept[-1] = True
    at, jms = int(g.integers(0, k)), float(g.uniform(0, 0.1))
    target, sure = g.integers(0, k, n), g.random(n) < 0.5
    o = simulate_gated(passes, correct, costs, kept=kept, jump=(at, target, jms, 0.0), jump_sure=sure)
    ex, lat, ok = naive_jump_leave(passes, correct, costs, kept, at, target, sure, jms)
    np.testing.assert_array_equal(o.exit, ex)
    np.testing.assert_allclose(o.latency_ms, lat, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(o.correct, ok)
    plain = simulate_gated(passes, correct, costs, kept=kept, jump=(at, target, jms, 0.0))
    none_sure = simulate_gated(passes, correct, costs, kept=kept, jump=(at, target, jms, 0.0),
                               jump_sure=np.zeros(n, bool))
    np.testing.assert_array_equal(plain.exit, none_sure.exit)  # nobody sure: the plain jump


@pytest.fixture(scope="module")
def leave_fitted(synth_cache):
    from predictors import fit_predictors
    from predictors.grid import PredictorsConfig

    from analysis.core.policies import PolicyConfig, calibrate

    rule = calibrate(synth_cache, PolicyConfig())
    specs = PredictorsConfig(model="linear-cv", targets=("leave", "oracle")).specs(synth_cache.num_exits, rule)
    with _quiet():
        preds = {p.spec.name: p for p in fit_predictors(synth_cache, specs, folds=3, progress=False, timing=0.01)}
    return rule, preds


@contextlib.contextmanager
def _quiet():
    """Predictors fitted without scikit-learn's convergence notes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_the_learned_policy_is_decided_on_calib_within_its_floor(synth_cache, leave_fitted):
    from analysis.core.policies import PolicyConfig, choose_policies, learned_floor, run_policy

    rule, preds = leave_fitted
    ev = Evidence.build(synth_cache, "calib", predictors=preds)
    from predictors import fit_predictor
    from predictors.deploy import leave_scorer, linear_form

    p = preds["leave_at0_for0_linear-cv"]  # the runtime's one dot product is the model's probability
    x = p.inputs(synth_cache, "test")
    assert linear_form(p.estimator) is not None
    np.testing.assert_allclose(leave_scorer(p)(x), p.score_inputs(x), rtol=1e-12, atol=1e-15)
    chosen = choose_policies(ev, rule, PolicyConfig())
    assert "learned" in chosen and chosen["learned"].placement.learned
    lrn = run_policy("learned", ev, rule, PolicyConfig(), chosen)
    full = run_policy("full", ev, rule, PolicyConfig(), chosen)
    assert learned_floor(ev, PolicyConfig()) == pytest.approx(full.correct.mean() - 0.005)
    assert lrn.correct.mean() >= learned_floor(ev, PolicyConfig()) - 1e-12  # within 0.5 points of full on calib
    nn = fit_predictor(synth_cache, PredictorSpec("leave", 1, "nn", 1, with_confidences=True,
                                                  params={"max_epochs": 5}), folds=2, timing=0.005)
    x = nn.inputs(synth_cache, "test")  # a torch MLP's fast path is its predict_proba too
    np.testing.assert_allclose(leave_scorer(nn)(x), nn.score_inputs(x), rtol=1e-12, atol=1e-15)
    strict = choose_policies(ev, rule, PolicyConfig(learned_max_drop=0.0))["learned"]
    assert run_policy("learned", ev, rule, PolicyConfig(), {"learned": strict}).correct.mean() >= full.correct.mean()
    evt = Evidence.build(synth_cache, "test", predictors=preds)
    assert run_policy("learned", evt, rule, PolicyConfig(), chosen).policy == "learned"
    # jump-and-leave is offered only when asked for
    assert not chosen.get("jump") or not chosen["jump"].placement.jump_leave
    on = choose_policies(ev, rule, PolicyConfig(jump_leave=True))
    assert "jump" in on


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")
def test_the_runtime_takes_the_simulators_exits_for_learned_and_jump_and_leave(toy_splits, tmp_path):
    import torch

    from analysis.study.validate import build_runtime
    from branchy.cache import dump
    from branchy.models import build_model
    from predictors import fit_predictors

    torch.manual_seed(0)
    m = build_model("b-lenet", exits=(0, 1), num_classes=4).eval()
    cache = dump(m, toy_splits, tmp_path / "c", progress=False, profile_time=0.01, pooling="grid:2")
    ent = Evidence.build(cache, "test").conf  # an untrained net: thresholds at the median entropy send rows every way
    rule = ExitRule("entropy", (*np.median(ent[:, :2], 0), np.inf))
    specs = [PredictorSpec("leave", e, "linear-cv", e, with_confidences=True) for e in (0, 1)]
    specs.append(PredictorSpec("oracle", 0, "linear", class_weight="balanced"))
    with _quiet():
        preds = {p.spec.name: p for p in fit_predictors(cache, specs, folds=3, progress=False, timing=0.01)}
    ev = Evidence.build(cache, "test", predictors=preds)
    x, _ = toy_splits.test.batch(torch.arange(cache.size("test")))
    pooling, fdt = cache.manifest["pooling"], cache.manifest["feature_dtype"]
    learned = Placement.learned_on({0: "leave_at0_for0_linear-cv", 1: "leave_at1_for1_linear-cv"}, 3)
    cuts = {leave_cut_key(e): float(np.median(ev.scores[f"leave_at{e}_for{e}_linear-cv"])) for e in (0, 1)}
    jump = Placement((True,) * 3, (None,) * 3, Gate("oracle_at0_linear", 0), jump_leave=True)
    jcuts = {"jump": float(np.median(ev.probs["oracle_at0_linear"]))}
    for pl, c in ((learned, cuts), (jump, jcuts)):
        want = outcome(ev, pl, rule, cuts=c).exit
        assert len(set(want.tolist())) >= 2, want
        rt = build_runtime(m, pl, rule, c, preds, pooling, feature_dtype=fdt)
        one = torch.cat([rt(x[i:i + 1])[1] for i in range(len(x))]).numpy()
        np.testing.assert_array_equal(one, want)
        pred, batched = rt(x)
        np.testing.assert_array_equal(batched.numpy(), want)
        z = np.asarray(cache.logits("test"))
        np.testing.assert_array_equal(pred.numpy(), z[np.arange(len(z)), want].argmax(-1))


@pytest.mark.parametrize("method", ["ltt", "crc"])
def test_the_risk_controlled_learned_cut_is_the_matrix_forms(method):
    """Under --max-acc-drop EPS --risk DELTA the learned placement's shared cut is the one
    analysis.core.learned.risk_controlled_cut certifies on the same scores, costs and labels."""
    from analysis.core.learned import risk_controlled_cut
    from analysis.core.policies import PolicyConfig, learned_cuts

    g = np.random.default_rng(7)
    k = 3
    ev, logits, labels = _evidence(g, 400, k)
    # scores that rank: a sample whose exit is right scores higher
    for e in range(k - 1):
        ev.scores[f"leave{e}"] = np.clip(0.5 * ev.correct[:, e] + 0.5 * g.random(ev.n), 0, 1)
    pl = Placement.learned_on({e: f"leave{e}" for e in range(k - 1)}, k)
    cfg = PolicyConfig(max_acc_drop=5.0, risk=0.1, risk_method=method)
    cuts = learned_cuts(ev, pl, ExitRule("entropy", (0.5,) * k), cfg)
    scores = np.stack([ev.scores[f"leave{e}"] for e in range(k - 1)], 1)
    lam, _ = risk_controlled_cut(scores, logits, labels, ev.costs, [ev.pcost[f"leave{e}"][0] for e in range(k - 1)],
                                 eps_pts=5.0, delta=0.1, method=method)
    assert lam is not None and set(cuts.values()) == {lam}


def test_a_learned_policy_that_beats_the_best_free_one_makes_predictors_pay():
    """DESIGN 3.4: gates, jumps or a learned policy; the real run, where there is one, must agree."""
    from analysis.study.verdict import beats, card, learned_sentence, pays

    row = {"acc_eps_pts": 0.5, "gated_vs_free": 1.02, "gated_vs_free_lo": 1.0, "gated_vs_free_hi": 1.05,
           "gated_vs_free_acc_pts": 0.0, "gated_vs_free_acc_lo_pts": -0.2, "gated_vs_free_acc_hi_pts": 0.2,
           "learned_vs_free": 0.8, "learned_vs_free_lo": 0.75, "learned_vs_free_hi": 0.85,
           "learned_vs_free_acc_pts": 0.1, "learned_vs_free_acc_lo_pts": -0.3, "learned_vs_free_acc_hi_pts": 0.5,
           "learned_vs_best_rule": 0.9, "learned_vs_best_rule_lo": 0.85, "learned_vs_best_rule_hi": 0.95,
           "learned_vs_best_rule_acc_pts": 0.1, "learned_vs_best_rule_acc_lo_pts": -0.3,
           "learned_vs_best_rule_acc_hi_pts": 0.5, "best_learned_placement": "e0:learn e1:final",
           "profile": "p", "best_vs_full": 0.8}
    assert pays(row) and beats(row, "learned_vs_best_rule")
    assert learned_sentence(row).endswith("it beats the rule; 0.800 [0.750, 0.850] x the best predictor-free policy.")
    assert "the learned exit policy does" in card({**row, "pays": True})["sentences"][0]
    assert not pays({**row, "real_learned_vs_free_hi": 1.1})  # the real run does not confirm it
    assert not pays({**row, "learned_vs_free_acc_lo_pts": -0.9})  # it may lose more than 0.5 points
