"""The ``nsga2`` strategy (Optuna NSGA-II): the exhaustive optimum on small spaces, seeded, resumable, and a
non-dominated Pareto set. A toy objective (a simulated net) keeps it fast."""
import subprocess
import sys
import zlib

import joblib
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from placement import Constraint, Gate, SearchSpace, search
from placement.selection import non_dominated

CONSTRAINTS = [Constraint(max_acc_drop=1.0), Constraint(max_acc_drop=6.0), Constraint(latency_budget=2.1)]


class Toy:
    """K stages of 1 ms, exit heads 0.2 ms. Exit k is right for samples of difficulty d < q[k] and answers when d
    is below its threshold; a gate (or the jump predictor) sees d with noise, less after later stages. Counts its
    calls; ``fail_after`` makes it raise, as an interrupted run."""

    def __init__(self, k=3, n=300, seed=0, fail_after=None):
        self.k, self.fail_after, self.calls = k, fail_after, 0
        self.q = np.linspace(1 / k, 1, k) ** 1.3
        self.t = tuple(self.q[:-1] + 0.05) + (np.inf,)
        self.d = np.random.default_rng(seed).uniform(size=n)

    def _noise(self, g):
        return np.random.default_rng(zlib.crc32(g.predictor.encode())).normal(scale=0.25 / (1 + g.at),
                                                                                size=len(self.d))

    def __call__(self, p):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("interrupted")
        d, n, K = self.d, len(self.d), self.k
        t = self.t if p.thresholds is None else p.thresholds
        ms, right, done, skip = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
        for k in range(K):
            ms[~done] += 1.0
            if p.jump is not None and p.jump.at == k:
                ms[~done] += 0.05
                skip |= ~done & (d + self._noise(p.jump) > self.q[K // 2])
            if k < K - 1 and not p.kept[k]:
                continue
            live = ~done & (~skip if k < K - 1 else True)
            if p.gates[k] is not None:
                ms[live] += 0.03 + 0.01 * p.gates[k].at
                live &= d + self._noise(p.gates[k]) < t[k]
            ms[live] += 0.2
            out = live & (d < t[k])
            right[out] = d[out] < self.q[k]
            done |= out
        return {"accuracy_%": 100 * right.mean(), "mean_ms": ms.mean(), "p95_ms": float(np.percentile(ms, 95)),
                "mean_MACs": 1e6 * ms.mean()}


def toy_space(k):
    """Side exit i has gates after stages i-1 and i; two jump predictors."""
    gates = tuple(tuple(Gate(f"g{i}_at{a}", a) for a in sorted({max(0, i - 1), i})) for i in range(k - 1))
    return SearchSpace(k, gates + ((),), (Gate("j_at0", 0), Gate("j_at1", 1)), tuple(float(i + 1) for i in range(k)))


def thresholds(obj, n):
    return [None] + [tuple(obj.q[:-1] + s) + (np.inf,) for s in (-0.05, 0.0, 0.1)][: n - 1]


def _front(table):
    return sorted(zip(table[table.pareto].mean_ms, table[table.pareto]["accuracy_%"]))


def _run(space, obj, **kw):
    return search("nsga2", space, obj, progress=False, **kw)


def test_a_budget_that_covers_the_space_scores_all_of_it_as_exhaustive_and_budget_do():
    obj, space = Toy(), toy_space(3)
    for con in CONSTRAINTS:
        ex = search("exhaustive", space, obj, constraint=con, progress=False)
        ns = _run(space, obj, constraint=con)  # 200 trials > 36 placements
        assert list(ns.table["describe"]) == list(ex.table["describe"])
        assert ns.chosen == ex.chosen and _front(ns.table) == _front(ex.table)
    th = thresholds(obj, 3)
    bu = search("budget", space, obj, progress=False, threshold_options=th)
    ns = _run(space, obj, threshold_options=th)
    assert ns.chosen == bu.chosen and list(ns.table["describe"]) == list(bu.table["describe"])


def test_with_a_budget_below_the_space_it_finds_the_exhaustive_optimum_and_front():
    obj, space = Toy(k=5), toy_space(5)
    th = thresholds(obj, 4)
    ref = search("budget", space, obj, progress=False, threshold_options=th, limit=10**6)
    # 450 of 2304 placements (5 exits, 4 threshold options); 40 seeds out of 40 find the whole front (Optuna 5.0)
    ns = _run(space, obj, threshold_options=th, trials=450)
    assert len(ref.table) == 2304 and ns.table.candidate.sum() == 450
    assert ns.chosen == ref.chosen
    # every constrained optimum (either kind of constraint) lies on the front, and the whole front is found
    assert _front(ns.table) == _front(ref.table)
    obj3, space3 = Toy(), toy_space(3)
    th3 = thresholds(obj3, 4)
    for con in CONSTRAINTS:
        ref = search("budget", space3, obj3, constraint=con, progress=False, threshold_options=th3).chosen_row
        got = _run(space3, obj3, constraint=con, threshold_options=th3, trials=110).chosen_row  # 110 of 144
        assert (got.mean_ms, got["accuracy_%"]) == (ref.mean_ms, ref["accuracy_%"])


def test_same_seed_same_table_whatever_the_jobs_and_storage(tmp_path):
    obj, space = Toy(k=4), toy_space(4)
    a = _run(space, obj, seed=5, trials=40)
    b = _run(space, obj, seed=5, trials=40)
    c = _run(space, obj, seed=5, trials=40, storage=f"sqlite:///{tmp_path}/s.db", study_name="s")
    with joblib.parallel_backend("threading"):  # the generations are scored in parallel batches (threads: fast)
        d = _run(space, obj, seed=5, trials=40, n_jobs=2)
    for other in (b, c, d):
        assert a.chosen == other.chosen
        assert a.table.drop(columns="placement").equals(other.table.drop(columns="placement"))
    e = _run(space, obj, seed=6, trials=40)
    assert list(e.table["describe"]) != list(a.table["describe"])


def test_a_resumed_study_continues_and_scores_only_new_placements(tmp_path):
    space, url = toy_space(4), f"sqlite:///{tmp_path}/search.db"
    th = thresholds(Toy(k=4), 2)
    first = _run(space, Toy(k=4), trials=30, threshold_options=th, storage=url, study_name="s")
    obj = Toy(k=4)
    second = _run(space, obj, trials=30, threshold_options=th, storage=url, study_name="s")
    study = optuna.load_study(study_name="s", storage=url)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 60 and second.table.candidate.sum() == 60
    # the objective ran for the full network, the 30 new placements and the stored Pareto set (the check)
    assert obj.calls == 1 + 30 + first.table.pareto.sum()
    old = first.table[first.table.candidate].set_index("describe")[["mean_ms", "accuracy_%"]]
    assert old.equals(second.table.set_index("describe").loc[old.index, ["mean_ms", "accuracy_%"]])
    a, b = first.chosen_row, second.chosen_row  # more placements: the choice can only improve
    assert (not b.feasible, b.mean_ms) <= (not a.feasible, a.mean_ms) and a.feasible
    # the Pareto set is Optuna's own front of the stored study
    assert _front(second.table) == sorted((t.values[0], t.values[1]) for t in study.best_trials)

    with pytest.raises(ValueError, match="scored with another objective"):
        _run(space, Toy(k=4, seed=1), trials=5, threshold_options=th, storage=url, study_name="s")
    with pytest.raises(ValueError, match="built on another search space"):
        _run(space, Toy(k=4), trials=5, storage=url, study_name="s")
    with pytest.raises(ValueError, match="resume it with population=10"):
        _run(space, Toy(k=4), trials=5, threshold_options=th, storage=url, study_name="s", population=12)


def test_an_interrupted_run_keeps_its_finished_generations(tmp_path):
    space, url = toy_space(4), f"sqlite:///{tmp_path}/search.db"
    with pytest.raises(RuntimeError, match="interrupted"):  # the full network, two generations of 10, then fails
        _run(space, Toy(k=4, fail_after=25), trials=40, storage=url, study_name="s")
    study = optuna.load_study(study_name="s", storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 20
    res = _run(space, Toy(k=4), trials=20, storage=url, study_name="s")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == res.table.candidate.sum() == 20 + 20


def test_the_pareto_set_is_non_dominated():
    obj, space = Toy(k=4), toy_space(4)
    for res in (_run(space, obj, trials=80, threshold_options=thresholds(obj, 3)),
                search("exhaustive", space, obj, progress=False)):
        cand = res.table[res.table.candidate]
        pts = list(zip(cand.mean_ms, cand["accuracy_%"]))
        naive = [not any(m2 <= m and a2 >= a and (m2 < m or a2 > a) for m2, a2 in pts) for m, a in pts]
        assert list(cand.pareto) == naive and not res.table[~res.table.candidate].pareto.any()
        assert res.chosen_row.pareto and list(res.pareto.mean_ms) == sorted(cand[cand.pareto].mean_ms)
    # ties: equal points are all kept, an equally fast but less accurate one is not
    assert list(non_dominated([1, 1, 1, 2, 0.5], [90, 90, 80, 95, 70])) == [True, True, False, True, True]


def test_bad_options_quiet_logging_and_a_lazy_import(capfd):
    obj, space = Toy(), toy_space(3)
    for kw, msg in [({"trials": 0}, "trials must be an integer >= 1"), ({"population": 1}, "population must be"),
                    ({"storage": 3}, "storage must be an Optuna storage URL"), ({"threshold_options": []}, "empty")]:
        with pytest.raises(ValueError, match=msg):
            _run(space, obj, **kw)
    level = optuna.logging.get_verbosity()
    capfd.readouterr()
    _run(space, obj, trials=20)
    assert optuna.logging.get_verbosity() == level and "Trial" not in capfd.readouterr().err
    code = "import sys, placement; assert 'nsga2' in placement.list_strategies() and 'optuna' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_placement_config_passes_nsga2_settings_from_yaml_and_cli(synth_cache, tmp_path):
    """trials / storage / study_name reach the nsga2 strategy through PlacementConfig (YAML and CLI share it); the
    stored study resumes across runs."""
    from analysis.core.policies import PolicyConfig, calibrate
    from analysis.study.placement_config import PlacementConfig
    from analysis.study.placement_study import run_placement

    with pytest.raises(ValueError, match="give storage too"):
        PlacementConfig(strategies=("nsga2",), study_name="s")
    with pytest.raises(ValueError, match="which strategies does not name"):
        PlacementConfig(strategies=("greedy",), trials=5)
    with pytest.raises(ValueError, match="trials"):
        PlacementConfig(strategies=("nsga2",), trials=0)
    db = f"sqlite:///{tmp_path / 's.db'}"
    pc = PlacementConfig(strategies=("nsga2",), trials=4, storage=db, study_name="s")
    assert pc.options("nsga2") == {"trials": 4, "storage": db, "study_name": "s"} and pc.options("greedy") == {}
    rule = calibrate(synth_cache, PolicyConfig())
    runs = [run_placement(synth_cache, {}, "nsga2", rule=rule, progress=False, **pc.options("nsga2"))[0]
            for _ in range(2)]
    stored = optuna.load_study(study_name="s", storage=db).get_trials(deepcopy=False)
    assert len(runs[0].table) >= 1 and len(stored) >= len(runs[0].table)  # the second run resumed the first's study
    from branchy.core import add_arguments, from_arguments
    import argparse

    ap = argparse.ArgumentParser()
    add_arguments(ap, PlacementConfig)
    a = ap.parse_args(["--strategy", "nsga2", "--trials", "7", "--storage", db, "--study-name", "t"])
    assert from_arguments(PlacementConfig, a).options("nsga2") == {"trials": 7, "storage": db, "study_name": "t"}
