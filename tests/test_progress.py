"""Issue 25: every long step shows a progress bar with a known total (so tqdm shows an ETA) that reaches it, and
``branchy -q`` (the ``branchy`` logger above INFO) or ``progress=False`` hides it. The bars are recorded by a fake
``tqdm`` put in place of each module's."""
import logging

import numpy as np
import pytest
import torch


class Bar:
    """A recording stand-in for ``tqdm.auto.tqdm``: total, desc, unit, disable and how far it got."""

    def __init__(self, iterable=None, *, total=None, desc=None, unit="it", disable=False, **kw):
        self.total, self.desc, self.unit, self.disable, self.n = total, desc, unit, disable, 0

    def update(self, n=1):
        self.n += n

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def bars(monkeypatch):
    """Patch ``tqdm`` in the given modules; returns every bar made, by desc (the branchy logger left unset)."""
    import importlib

    made = {}

    def make(*a, **kw):
        bar = Bar(*a, **kw)
        made.setdefault(bar.desc, []).append(bar)
        return bar

    def patch(*modules):
        for m in modules:
            monkeypatch.setattr(importlib.import_module(m), "tqdm", make)
        return made

    top = logging.getLogger("branchy")
    monkeypatch.setattr(top, "level", logging.NOTSET)
    return patch


def test_show_progress_obeys_the_argument_and_quiet():
    from branchy.core import show_progress

    top = logging.getLogger("branchy")
    level = top.level
    try:
        top.setLevel(logging.NOTSET)
        assert show_progress() and show_progress(True) and not show_progress(False)
        top.setLevel(logging.INFO)
        assert show_progress()
        top.setLevel(logging.WARNING)  # branchy -q
        assert not show_progress(True)
    finally:
        top.setLevel(level)


def test_profiling_bars_count_rounds_and_samples(bars):
    from branchy.models import build_model
    from branchy.runtime import profile_segments, runtime_overhead
    from branchy.runtime.pathtime import time_paths

    made = bars("branchy.runtime.profile", "branchy.runtime.pathtime")
    torch.manual_seed(0)
    m = build_model("b-lenet", exits=(0, 1), num_classes=4).eval()
    profile_segments(m, batch_size=2, min_run_time=0.005, rounds=4)
    runtime_overhead(m, rounds=3, min_run_time=0.005)
    time_paths(m, samples=5, reps=2)
    time_paths(m, samples=2, reps=1, progress=False)
    (p,), (o,), (t, quiet) = made["profile"], made["overhead"], made["paths"]
    assert (p.total, p.n, p.unit, p.disable) == (5, 5, "round", False)  # the sizing pass, then 4 rounds
    assert (o.total, o.n, o.unit) == (4, 4, "round")
    assert (t.total, t.n, t.unit, t.disable) == (10, 10, "sample", False)  # reps x samples
    assert quiet.disable and quiet.total == quiet.n == 2


def test_fitting_several_predictors_is_one_bar_over_every_fold_and_refit(bars, synth_cache):
    from predictors import PredictorSpec, fit_predictors

    made = bars("predictors.fit")
    t = (0.5, 0.5, np.inf)
    specs = [PredictorSpec("gate", 0, "linear", 0, t), PredictorSpec("exit", 0, "linear", None, t),
             PredictorSpec("entropy", 0, "linear", 1)]
    fitted = fit_predictors(synth_cache, specs, folds=3, timing=0.01)
    assert [p.spec for p in fitted] == specs and all(p.oof is not None for p in fitted)
    (bar,) = made["fit predictors"]
    assert (bar.total, bar.n, bar.unit, bar.disable) == (3 * (3 + 1), 12, "fit", False)  # 3 folds + the refit each
    fit_predictors(synth_cache, specs[:1], folds=2, timing=0.01, progress=False)
    assert made["fit predictors"][1].disable and made["fit predictors"][1].total == 3


def test_the_suite_bar_counts_studies(bars, monkeypatch, tmp_path):
    import analysis.study.pipeline as pipeline
    import analysis.study.suite as suite
    from analysis.study.suite import SuiteConfig
    from branchy.core import from_mapping

    made = bars("analysis.study.suite")
    raw = {"out": str(tmp_path), "backbones": {"b-lenet": {}}, "profiles": ["raspberry-pi-4"],
           "datasets": {"a": {"dataset": "mnist5k"}, "b": {"dataset": "mnist5k"}}}
    monkeypatch.setattr(pipeline, "run_study", lambda cfg, redo=False: None)
    monkeypatch.setattr(suite, "compare_study", lambda key, result, profiles, n_boot: [{"study": key}])
    df = suite.run_suite(from_mapping(SuiteConfig, raw, ""), log=lambda m: None)
    (bar,) = made["suite"]
    assert len(df) == 2 and (bar.total, bar.n, bar.unit) == (2, 2, "study")


@pytest.mark.parametrize("recheck", [False, True])
def test_the_validate_bar_counts_every_policy_run(recheck):
    """validate's bar (total ``reps * samples * policies``, :func:`analysis.study.validate.validate_samples`) reaches
    its total whether the samples run in chunks between recheck rounds or alone."""
    from analysis.study.validate import _Runs, _time_interleaved

    runs = _Runs()
    for name in ("full", "cascade", "gated"):
        runs.add(name, lambda x: (None, [0] * len(x)), None)
    x, reps = torch.zeros(7, 1, 2, 2), 2
    bar = Bar(total=reps * len(x) * 3)
    fns = {"a": lambda: None, "b": lambda: None} if recheck else None
    meas, taken, times = _time_interleaved(runs, x, reps, 0, 3, fns, bar)
    assert bar.n == bar.total == 42 and meas.shape == (3, 7) and (times is not None) == recheck
