import json

import numpy as np
import pytest

from analysis.core.costs import DeviceProfile
from analysis.study.placement_study import PlacementObjective, exit_macs, run_placement
from branchy.exits import ExitRule
from placement import Constraint, Gate, Placement, SearchSpace, list_strategies, search
from predictors import PredictorSpec, fit_predictor
from tests.helpers import no_json_constants, priced_cache

pytestmark = pytest.mark.filterwarnings("ignore:gate_at0_for0_linear")
T = (0.5, 0.5, np.inf)
# stages 1 ms, exit heads 0.1 ms, buffering 0.1 ms each way, a 12-MAC linear gate 0.012 ms
PROFILE = DeviceProfile("toy", macs_per_s=1e6, bytes_per_s=1.024e7)


def _arrays(seed=0, n=600):
    """Exit 0 is never confident; exit 1 is confident and right exactly for the easy half (x0 > 0);
    the final exit is always right. Features at branch point 1 show x0 clearly, at 0 barely."""
    g = np.random.default_rng(seed)
    data = {}
    for split in ("train", "calib", "test"):
        y = g.integers(0, 4, n)
        x0 = g.normal(size=n)
        easy = x0 > 0
        z = np.zeros((n, 3, 4), np.float32)
        z[np.arange(n), 1, y] = np.where(easy, 8.0, 0.0)
        z[np.arange(n), 2, y] = 8.0
        f0 = np.c_[x0 + g.normal(scale=3.0, size=n), g.normal(size=(n, 5))]
        f1 = np.c_[x0, g.normal(size=(n, 5))]
        data[split] = (y, z, [f0, f1, g.normal(size=(n, 6))])
    return data


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    cache = priced_cache(tmp_path_factory.mktemp("p") / "c", _arrays())
    preds = {}
    for spec in (PredictorSpec("gate", 0, "linear", 0, T), PredictorSpec("gate", 0, "linear", 1, T),
                 PredictorSpec("gate", 1, "linear", 1, T), PredictorSpec("exit", 0, "linear", None, T),
                 PredictorSpec("leave", 0, "linear", 0, with_confidences=True),
                 PredictorSpec("leave", 1, "linear", 1, with_confidences=True)):
        preds[spec.name] = fit_predictor(cache, spec, timing=0.01)
    space = SearchSpace.from_predictors(preds, 3, exit_macs(cache))
    obj = PlacementObjective(cache, preds, profile=PROFILE, rule=ExitRule.given(T, 3))
    return cache, preds, space, obj


BEST = Placement((False, True, True), (None, Gate("gate_at1_for1_linear", 1), None))


def test_objective_matches_a_hand_computation(known):
    cache, preds, space, obj = known
    easy = np.asarray(cache.logits("calib"))[:, 1].max(1) > 4
    cut = obj.cuts(BEST)[1]  # tuned on calib out-of-fold scores
    enter = preds["gate_at1_for1_linear"].score(cache, "calib") >= cut
    assert (enter == easy).mean() > 0.97  # the gate after stage 1 sees the hardness clearly
    m = obj(BEST)
    # entered and easy: S0 + S1 + G + W1 + E1; entered in vain: ... + R1 + S2 + E2; skipped: S0..S2 + G + E2
    lat = np.where(enter & easy, 2 + 0.012 + 0.1 + 0.1,
                   np.where(enter, 3 + 0.012 + 0.1 + 0.3, 3 + 0.012 + 0.1))
    assert m["mean_ms"] == pytest.approx(lat.mean(), rel=1e-6)
    assert m["accuracy_%"] == 100.0


@pytest.mark.parametrize("strategy", ["exhaustive", "budget"])
def test_exhaustive_and_the_optimiser_find_the_known_best(known, strategy):
    cache, preds, space, obj = known
    res = search(strategy, space, obj, progress=False)
    assert (res.chosen.kept, res.chosen.gates, res.chosen.jump) == (BEST.kept, BEST.gates, BEST.jump)


def test_greedy_is_never_better_than_exhaustive(known):
    cache, preds, space, obj = known
    ex = search("exhaustive", space, obj, progress=False).chosen_row
    for s in ("greedy", "greedy-backward"):
        g = search(s, space, obj, progress=False).chosen_row
        assert (g.feasible, -g.mean_ms) <= (ex.feasible, -ex.mean_ms) or (not ex.feasible)
        assert g.mean_ms >= ex.mean_ms - 1e-12


@pytest.mark.parametrize("strategy", list_strategies())
def test_every_strategy_returns_a_valid_placement(known, strategy):
    cache, preds, space, obj = known
    res = search(strategy, space, obj, progress=False)
    p = res.chosen
    assert p.num_exits == 3 and p.kept[-1]
    assert Placement.from_dict(p.to_dict()) == p
    for g in (*p.gates, *(p.leaves or ())):
        assert g is None or g.predictor in preds
    assert res.table.chosen.sum() == 1 and len(res.table) >= 1
    if strategy == "learned":  # every set of kept side exits, each decided by its leave predictor
        assert p.learned and len(res.table) == 1 + 2  # full, and the two learned decisions


def test_the_search_space_holds_learned_decisions_and_jump_and_leave(known):
    from placement.space import learned_placements
    from placement.strategies import make_placement

    cache, preds, space, obj = known
    # prefixes of the side exits: a leave predictor reads the confidences of every exit before it
    assert space.learned_sets() == [{0: "leave_at0_for0_linear"},
                                    {0: "leave_at0_for0_linear", 1: "leave_at1_for1_linear"}]
    assert [p.describe() for p in learned_placements(space)] == ["e0:learn e1:- e2:final",
                                                               "e0:learn e1:learn e2:final"]
    assert space.size() == 3 * 4 * 2 + 2  # (removed, open, gates) per side exit x (no jump, jump) + learned
    jl = SearchSpace.from_predictors(preds, 3, exit_macs(cache), jump_leave=True)
    assert jl.jump_choices()[-1] == (Gate("exit_at0_linear", 0), "leave") and jl.size() == 3 * 4 * 3 + 2
    pl = make_placement(jl, [None, None], jl.jump_choices()[-1])
    assert pl.jump_leave and pl.describe() == "e0:open e1:open e2:final jump@0+leave"
    m = obj(pl)  # scored, its cut on the exit predictor's probability tuned on calib
    assert 0 < m["accuracy_%"] <= 100 and "jump" in obj.cuts(pl)


def test_same_seed_same_result_with_one_and_two_jobs(known):
    cache, preds, space, obj = known
    a = search("greedy-backward", space, obj, n_jobs=1, seed=3, progress=False)
    b = search("greedy-backward", space, obj, n_jobs=2, seed=3, progress=False)
    assert a.chosen == b.chosen
    assert a.table.drop(columns="placement").equals(b.table.drop(columns="placement"))


def test_latency_budget_dual(known):
    cache, preds, space, obj = known
    res = search("exhaustive", space, obj, constraint=Constraint(latency_budget=2.75), progress=False)
    r = res.chosen_row
    assert r.mean_ms <= 2.75 and r["accuracy_%"] == res.table[res.table.feasible]["accuracy_%"].max()


def test_exhaustive_limit_and_bad_inputs(known, tmp_path):
    cache, preds, space, obj = known
    with pytest.raises(ValueError, match=r"exhaustive search over 26 placements exceeds the limit of 5"):
        search("exhaustive", space, obj, limit=5, progress=False)
    with pytest.raises(KeyError, match="unknown placement strategy 'anneal'"):
        search("anneal", space, obj, progress=False)
    with pytest.raises(ValueError, match="the final exit"):
        Placement((True, False), (None, None))
    with pytest.raises(ValueError, match="gate of exit 0 sits after stage 1"):
        Placement((True, True), (Gate("g", 1), None))
    with pytest.raises(ValueError, match="exit 0 is removed but has a gate"):
        Placement((False, True), (Gate("g", 0), None))
    with pytest.raises(ValueError, match="give max_acc_drop or latency_budget"):
        Constraint(max_acc_drop=None)
    with pytest.raises(ValueError, match="not among the fitted gate"):
        obj(Placement((True, True, True), (Gate("nope", 0), None, None)))
    p = BEST.save(tmp_path / "p.json")
    assert Placement.load(p) == BEST


@pytest.mark.parametrize("kw, phrase", [
    (dict(max_acc_drop=float("nan")), "max_acc_drop must be a finite number (percentage points), got nan"),
    (dict(max_acc_drop=float("inf")), "max_acc_drop must be a finite number (percentage points), got inf"),
    (dict(latency_budget=float("nan")), "latency_budget must be a finite number (ms), got nan"),
    (dict(latency_budget=float("inf")), "latency_budget must be a finite number (ms), got inf"),
    (dict(max_acc_drop=1.0, latency_budget=float("nan")), "latency_budget must be a finite number"),
    (dict(max_acc_drop=float("nan"), latency_budget=2.0), "max_acc_drop must be a finite number"),
    (dict(max_acc_drop="1"), "max_acc_drop must be a finite number (percentage points), got '1'"),
    (dict(max_acc_drop=-1.0), "max_acc_drop must be >= 0"),
])
def test_constraint_refuses_non_finite_bounds(kw, phrase):
    with pytest.raises(ValueError) as e:
        Constraint(**kw)
    assert phrase in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_run_placement_reports_calib_and_test(known):
    cache, preds, space, obj = known
    res, cmp = run_placement(cache, preds, "exhaustive", profile=PROFILE, rule=ExitRule.given(T, 3), progress=False)
    assert set(cmp.split) == {"calib", "test"}
    assert set(cmp.policy) == {"full", "cascade", "placement (exhaustive)", "oracle"}
    t = cmp[cmp.split == "test"].set_index("policy")
    assert t.loc["placement (exhaustive)", "mean_ms"] < t.loc["cascade", "mean_ms"] < t.loc["full", "mean_ms"]
    assert t.loc["oracle", "mean_ms"] <= t.loc["placement (exhaustive)", "mean_ms"]


def test_placement_json_with_infinities_round_trips(tmp_path):
    pl = Placement((True,) * 3, (None,) * 3, thresholds=(np.inf, -np.inf, np.inf))
    text = pl.save(tmp_path / "placement.json").read_text()
    json.loads(text, parse_constant=no_json_constants)
    assert Placement.load(tmp_path / "placement.json") == pl


@pytest.mark.slow
def test_a_dask_cluster_scores_the_search_as_local_processes_do(known):
    distributed = pytest.importorskip("distributed")
    cache, preds, space, obj = known
    local = search("greedy-backward", space, obj, n_jobs=2, seed=3, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc:
        on_dask = search("greedy-backward", space, obj, seed=3, progress=False, scheduler=lc.scheduler_address)
        with distributed.Client(lc) as client:  # a client the caller owns is used, and left open
            again = search("exhaustive", space, obj, progress=False, scheduler=client)
            assert client.status == "running"
            assert sum(client.run(lambda: 1).values()) == 2  # both workers alive after the search
    assert on_dask.chosen == local.chosen
    assert on_dask.table.drop(columns="placement").equals(local.table.drop(columns="placement"))
    assert again.chosen == search("exhaustive", space, obj, progress=False).chosen
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), \
            pytest.raises(ValueError, match="--scheduler tcp://127.0.0.1:9: no Dask scheduler answered within 1 s"):
        search("greedy-backward", space, obj, progress=False, scheduler="tcp://127.0.0.1:9")


def test_the_search_progress_bar_knows_its_total(capsys):
    """Every batch of placements asked of the evaluator adds to its bar's total, so the bar shows an ETA (tqdm
    shows none without a total)."""
    from placement.evaluator import Evaluator

    ev = Evaluator(lambda p: {"accuracy_%": 90.0, "mean_ms": 1.0}, progress=True)
    plain = [Placement.plain(3, [True, k == 1, True]) for k in range(2)]
    ev(plain)
    assert (ev._bar.total, ev._bar.n) == (2, 2)
    ev(plain + [Placement.plain(3, [False, False, True])])  # two already scored, one new
    assert (ev._bar.total, ev._bar.n) == (3, 3)
    ev.close()
    assert "3/3" in capsys.readouterr().err
