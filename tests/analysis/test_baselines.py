"""The references a "do predictors pay?" claim is measured against: the best predictor-free policy is never worse
than full or the default cascade on calib, the gated search finds the exhaustive gated optimum on a small space,
the accuracy-matched oracle against a naive loop, the predictors' oracle target equals the simulator's oracle, and
the measured profile's independent profilings are read back."""
import shutil

import numpy as np
import pytest

from analysis.core.calibrate import calib_rule, rule_family
from analysis.core.costs import CostModel, measured_cost_models
from analysis.core.evidence import Evidence, matched_oracle_outcome, oracle_outcome
from analysis.core.policies import PolicyConfig
from analysis.core.simulate import simulate_matched_oracle, simulate_oracle
from analysis.study.baselines import decide_baselines
from analysis.study.placement_study import PlacementObjective, exit_macs
from branchy.exits import ExitRule
from placement import Constraint, SearchSpace, search
from predictors import PredictorSpec, fit_predictor
from predictors.targets import oracle_target
from tests.helpers import priced_cache, synthetic_arrays


def _cache(tmp_path, seed, k=3, bars=(0.8, 0.0, -0.8), name="c"):
    return priced_cache(tmp_path / name, synthetic_arrays(n=(200, 300, 200), k=k, seed=seed, bars=bars),
                             model_name="synthetic")


def _gates(cache, rule, exits, positions=None):
    out = {}
    for e in exits:
        for at in (positions or range(e + 1)):
            if at <= e:
                p = fit_predictor(cache, PredictorSpec("gate", at, "linear", e, rule), folds=2, timing=0.005)
                out[p.spec.name] = p
    return out


@pytest.mark.parametrize("seed", range(4))
def test_the_best_free_policy_is_never_worse_than_full_or_the_default_cascade_on_calib(tmp_path, seed):
    g = np.random.default_rng(seed)
    k = int(g.integers(2, 5))
    bars = tuple(np.sort(g.normal(size=k))[::-1])
    cache = _cache(tmp_path, seed, k=k, bars=bars)
    rule = calib_rule(cache, float(g.uniform(90, 100)))
    con = Constraint(max_acc_drop=float(g.choice([0.0, 0.5, 2.0])))
    for profile in ("measured", "raspberry-pi-4"):
        b = decide_baselines(cache, {}, profile=profile, rule=rule, cfg=PolicyConfig(target_acc=None), constraint=con)
        free, full, casc = b["best-free"].calib, b["full"].calib, b["cascade"].calib
        assert con.feasible(free, b.full_acc)
        assert free["mean_ms"] <= full["mean_ms"] + 1e-12
        if con.feasible(casc, b.full_acc):
            assert free["mean_ms"] <= casc["mean_ms"] + 1e-12
        assert b["best-rule"].calib["mean_ms"] <= casc["mean_ms"] + 1e-12 or not con.feasible(casc, b.full_acc)
        assert all(b["best-rule"].placement.kept)  # the rule family keeps every exit
        assert "best-gated" not in b.decided  # no predictor, no gated placement
        # re-scoring the decided placement on calib gives its recorded metrics (thresholds travel with it)
        assert b.objective(b["best-free"].placement)["mean_ms"] == pytest.approx(free["mean_ms"])


def test_the_rule_family_holds_the_default_rule_and_recalibrates_for_kept_exits(synth_cache):
    z, y = np.asarray(synth_cache.logits("calib")), synth_cache.labels("calib")
    fam = rule_family(z, y)
    default = calib_rule(synth_cache, 99).thresholds
    assert any(np.array_equal(th, default) for _, th in fam)
    for how, th in rule_family(z, y, kept=(False, True, True)):
        assert th[0] == -np.inf, how  # a removed exit never passes
    assert len({tuple(th) for _, th in fam}) == len(fam)


@pytest.mark.parametrize("seed", range(3))
def test_the_gated_search_finds_the_exhaustive_gated_optimum_on_a_small_space(tmp_path, seed):
    cache = _cache(tmp_path, seed, k=3)
    rule = calib_rule(cache, 99)
    preds = _gates(cache, rule, exits=(0, 1))
    preds.update({p.spec.name: p for p in [fit_predictor(cache, PredictorSpec("exit", 0, "linear", None, rule),
                                                         folds=2, timing=0.005)]})
    space = SearchSpace.from_predictors(preds, 3, exit_macs(cache))
    assert space.size() <= 64
    for profile in ("raspberry-pi-4", "mcu-npu"):
        obj = PlacementObjective(cache, preds, profile=profile, rule=rule, cfg=PolicyConfig())
        con = Constraint(max_acc_drop=0.5)

        def best_gated(res):
            rows = [r for r in res.table.to_dict("records") if r["candidate"] and
                    (any(g is not None for g in r["placement"].gates) or r["placement"].jump is not None)]
            return min(con.key({**r, "_order": 0}, res.full_accuracy)[:3] for r in rows)

        ex = search("exhaustive", space, obj, constraint=con, progress=False)
        gs = search("gated", space, obj, constraint=con, progress=False)
        assert best_gated(gs) == pytest.approx(best_gated(ex))
        assert len(gs.table) < len(ex.table)  # and it got there without scoring everything


def test_decided_gated_placements_use_a_predictor_and_are_scored_as_recorded(tmp_path):
    cache = _cache(tmp_path, 1, k=3)
    rule = calib_rule(cache, 99)
    preds = _gates(cache, rule, exits=(0, 1))
    b = decide_baselines(cache, preds, profile="raspberry-pi-4", rule=rule, cfg=PolicyConfig())
    g = b["best-gated"]
    assert any(x is not None for x in g.placement.gates) and g.placement.thresholds is not None
    assert b.objective(g.placement)["mean_ms"] == pytest.approx(g.calib["mean_ms"])
    assert b.objective(g.placement)["predictor_runs_%"] > 0  # its predictor runs: not a free policy in disguise
    dead = b.table[(b.table.kind == "gated") & (b.table["predictor_runs_%"] == 0)]
    for pl in dead.placement:  # e.g. a gate on an exit nothing passes: the same paths as without it
        assert b.objective(pl)["mean_ms"] == pytest.approx(
            b.objective(type(pl)(pl.kept, (None,) * len(pl.kept), None, pl.thresholds))["mean_ms"])
    best = b["best"].calib
    for n in ("full", "cascade", "best-rule", "best-free", "best-gated"):
        assert b.constraint.key({**best, "_order": 0}, b.full_acc)[:2] <= \
            b.constraint.key({**b[n].calib, "_order": 0}, b.full_acc)[:2]
    assert set(b.table.kind) == {"free", "gated"} and b.table.feasible.any()


def test_the_matched_oracle_against_a_naive_loop(synth_cache):
    ev = Evidence.build(synth_cache, "test", profile="raspberry-pi-4")
    o = simulate_matched_oracle(ev.preds, ev.correct, ev.costs)
    leave = np.cumsum(ev.costs.stage_ms) + ev.costs.exit_ms
    for i in range(ev.n):
        agree = [k for k in range(ev.num_exits) if ev.preds[i, k] == ev.preds[i, -1]]
        want = min(agree, key=lambda k: (leave[k], k))
        assert o.exit[i] == want
        assert o.latency_ms[i] == pytest.approx(leave[want])
    assert np.array_equal(o.correct, ev.correct[:, -1])  # full's answers, so full's accuracy
    assert (o.latency_ms >= oracle_outcome(ev).latency_ms - 1e-12).mean() > 0.9
    assert matched_oracle_outcome(ev).latency_ms.mean() == pytest.approx(
        o.latency_ms.mean())


def test_the_oracle_target_is_the_simulators_oracle_exit(tmp_path):
    data = synthetic_arrays(n=(200, 300, 200), k=4, seed=2, bars=(0.8, 0.3, -0.3, -0.8))
    y, z, f = data["calib"]
    z = z.copy()
    z[np.arange(20), :, (y[:20] + 1) % z.shape[2]] += 100.0  # 20 samples no exit gets right
    data["calib"] = (y, z, f)
    cache = priced_cache(tmp_path / "c", data, model_name="synthetic")
    heavy = CostModel.from_arrays(np.ones(4), [5.0, 0.1, 3.0, 0.1])  # heavy heads: a later exit can be cheaper
    for cost in (None, np.cumsum(heavy.stage_ms) + heavy.exit_ms):  # the cache's measured ms, then the heavy heads
        target = oracle_target(cache, "calib", exit_cost=cost)
        ev = Evidence.build(cache, "calib")
        assert np.array_equal(target, simulate_oracle(ev.correct, ev.costs if cost is None else heavy).exit)
    none_right = ~ev.correct.any(1)
    assert none_right.any() and (oracle_target(cache, "calib")[none_right] == 0).all()  # the cheapest, not the last


def test_measured_profilings_are_read_from_the_history(tmp_path):
    cache = _cache(tmp_path, 0)
    assert len(measured_cost_models(cache)) == 1 and len(measured_cost_models(cache, "raspberry-pi-4")) == 1
    hist = cache.path / "costs_history"
    hist.mkdir()
    costs = cache.costs
    for i, f in enumerate((1.5, 0.8)):
        c = costs.copy()
        c["ms_b1"] = c["ms_b1"] * f
        c.to_csv(hist / f"costs_2026010{i}T000000_000000.csv", index=False)
    shutil.copy(hist / "costs_20260100T000000_000000.csv", hist / "costs_onnxruntime_20260100T000000_000000.csv")
    ms = [m.stage_ms[0] for m in measured_cost_models(cache)]
    assert ms == pytest.approx([costs[costs.segment == "stage"].ms_b1.iloc[0] * f for f in (1.0, 1.5, 0.8)])
    (hist / "costs_20260102T000000_000000.csv").write_text("segment,k\nstage,0\n")
    with pytest.raises(ValueError, match="earlier profiling"):
        measured_cost_models(cache)


def test_a_predictor_that_answers_a_constant_is_not_searched_as_a_gate(tmp_path):
    cache = _cache(tmp_path, 0, k=3)
    never = ExitRule.given((0.0, 0.0), 3)  # entropy below 0: no sample leaves, every gate target is 0
    with pytest.warns(UserWarning, match="constant answer"):
        p = fit_predictor(cache, PredictorSpec("gate", 0, "linear", 0, never), folds=2, timing=0.005)
    assert p.constant
    b = decide_baselines(cache, {p.spec.name: p}, profile="raspberry-pi-4", rule=calib_rule(cache, 99),
                         cfg=PolicyConfig())
    assert "best-gated" not in b.decided and set(b.table.kind) == {"free"}
