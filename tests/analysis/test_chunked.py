"""Simulation a chunk of rows at a time equals the whole split in memory: fixed policies and a gated placement
with an exit predictor's jump, with chunks that do not divide the split."""
import numpy as np
import pytest

from analysis.core.chunked import RunningSummary, simulate_chunked
from analysis.core.costs import CostModel
from analysis.core.evidence import Evidence, outcome
from analysis.core.policies import POLICIES, PolicyConfig
from analysis.core.stats import summarize
from branchy.exits import ExitRule
from placement import Gate, Placement
from predictors import PredictorSpec, fit_predictor
from tests.helpers import priced_cache, synthetic_arrays

RULE = ExitRule("entropy", (0.5, 0.5, np.inf))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cache = priced_cache(tmp_path_factory.mktemp("ch") / "c", synthetic_arrays(n=(200, 300, 517)))
    preds = {p.spec.name: p for p in (
        fit_predictor(cache, PredictorSpec("gate", 0, "linear", 1, RULE), timing=0.01),
        fit_predictor(cache, PredictorSpec("exit", 0, "linear", None, RULE), timing=0.01))}
    return cache, preds


@pytest.mark.parametrize("split", ["test", "calib"])  # calib: out-of-fold scores, sliced
def test_chunked_simulation_equals_the_whole_split_in_memory(setup, split):
    cache, preds = setup
    costs = CostModel.from_cache(cache, "measured")
    gated = Placement((True, True, True), (None, Gate("gate_at0_for1_linear", 0), None))
    jump = Placement((True, True, True), (None, None, None), Gate("exit_at0_linear", 0))
    cuts = {1: 0.4}
    whole = Evidence.build(cache, split, predictors=preds, costs=costs)
    for policy in ("full", "cascade", "oracle", gated, jump):
        ref = summarize(POLICIES.get(policy).run(whole, RULE, PolicyConfig()) if isinstance(policy, str)
                        else outcome(whole, policy, RULE, cuts=cuts), n_boot=0)
        for chunk in (1, 37, 10_000):
            got = simulate_chunked(cache, split, policy, RULE, predictors=preds, cuts=cuts, costs=costs,
                                   chunk_rows=chunk)
            assert set(got) == set(ref), (policy, set(got) ^ set(ref))
            for k, v in ref.items():
                if isinstance(v, str):
                    assert got[k] == v
                else:
                    assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-12), (policy, chunk, k)


def test_running_percentiles_are_numpys_inverted_cdf():
    from analysis.core.simulate import Outcome

    g = np.random.default_rng(0)
    lat = g.choice([0.5, 1.25, 2.0, 3.0, 7.5], size=1001, p=[0.5, 0.2, 0.15, 0.1, 0.05])
    rs = RunningSummary()
    for part in np.array_split(np.arange(1001), 7):
        o = Outcome("x", np.zeros(len(part), int), np.ones(len(part), bool), lat[part], np.zeros(len(part)),
                    np.zeros(len(part)), {}, 1)
        rs.add(o)
    for q in (0, 1, 50, 50.05, 95, 99, 99.9, 100):
        assert rs.percentile(q) == np.percentile(lat, q, method="inverted_cdf"), q
    with pytest.raises(ValueError, match="chunk_rows"):
        simulate_chunked(None, "test", "full", RULE, chunk_rows=0)


def test_cache_from_memory_maps_in_chunks_equals_from_arrays(tmp_path, monkeypatch):
    import branchy.cache.arrays as ac
    from branchy.cache import FeatureCache

    data = synthetic_arrays(n=(50, 61, 33))
    whole = priced_cache(tmp_path / "a", data)
    maps = {}
    for sp, (y, z, feats) in data.items():  # the same arrays as memory maps, read 7 rows at a time
        save = lambda name, a: (np.save(tmp_path / f"{sp}_{name}.npy", a),  # noqa: E731
                                np.load(tmp_path / f"{sp}_{name}.npy", mmap_mode="r"))[1]
        maps[sp] = (save("y", y), save("z", z), [save(f"f{i}", f) for i, f in enumerate(feats)])
    monkeypatch.setattr(ac, "CHUNK", 7)
    chunked = priced_cache(tmp_path / "b", maps)
    assert chunked.fingerprint == whole.fingerprint
    fa, fb = whole.manifest["files"], FeatureCache.open(tmp_path / "b", verify=True).manifest["files"]
    assert {f: fa[f] for f in fa if f.endswith(".npy")} == {f: fb[f] for f in fb if f.endswith(".npy")}
    bad = np.array(maps["calib"][1])
    bad[40, 1, 2] = np.nan  # a NaN in the 6th chunk is found and counted
    with pytest.raises(ValueError, match="calib: 1 logits are NaN"):
        priced_cache(tmp_path / "c", {**maps, "calib": (maps["calib"][0], bad, maps["calib"][2])})


@pytest.mark.parametrize("measure", ["entropy", "max_prob"])
def test_chunked_threshold_sweep_equals_the_in_memory_sweep(setup, measure):
    from analysis.core.sweep import sweep_cascade, sweep_cascade_cache

    cache, _ = setup
    costs = CostModel.from_cache(cache, "measured")
    z = np.asarray(cache.logits("test"))
    rule = ExitRule(measure, (np.inf,) * 3)
    conf = rule.confidence(z)
    correct = z.argmax(-1) == cache.labels("test")[:, None]
    grid = np.quantile(conf, np.linspace(0.05, 0.95, 9), axis=0)
    ref = sweep_cascade(conf, correct, costs, grid, lower_is_confident=rule.lower_is_confident)
    for chunk in (1, 50, 10_000):
        got = sweep_cascade_cache(cache, "test", costs, grid, measure=measure, chunk_rows=chunk)
        pd_testing = pytest.importorskip("pandas.testing")
        pd_testing.assert_frame_equal(got, ref, rtol=1e-12)


def test_rows_of_a_fortran_ordered_file_are_its_rows(tmp_path):
    cache = priced_cache(tmp_path / "c", synthetic_arrays(n=(20, 30, 25)))
    f = tmp_path / "c" / "test" / "logits.npy"
    z = np.load(f)
    np.save(f, np.asfortranarray(z))  # as an older writer could leave it: same size, another layout
    np.testing.assert_array_equal(cache.logits("test", rows=slice(3, 11)), z[3:11])
    np.testing.assert_array_equal(cache.rows("test", "logits.npy", slice(0, 25)), z)
