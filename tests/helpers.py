"""Data makers shared by tests in every folder: import them as ``from tests.helpers import ...``.
Fixtures built from them live in ``tests/conftest.py``; conftest is never imported as a module."""
import numpy as np
import torch

from branchy.data import ArrayDataset, DatasetInfo, Splits


def make_splits(n=(96, 48, 48), channels=1, size=28, classes=4, seed=0) -> Splits:
    """A tiny learnable dataset: class c has a bright square at a class-specific place."""
    g = np.random.default_rng(seed)
    parts = {}
    for split, m in zip(("train", "calib", "test"), n):
        y = g.integers(0, classes, m)
        x = g.integers(0, 60, (m, channels, size, size)).astype(np.uint8)
        for i, c in enumerate(y):
            r = (c * size // classes)
            x[i, :, r : r + size // classes, 2 : size - 2] = 220
        parts[split] = ArrayDataset(torch.from_numpy(x), torch.from_numpy(y), (0.3,) * channels, (0.3,) * channels)
    info = DatasetInfo("toy", channels, size, size, classes, (0.3,) * channels, (0.3,) * channels)
    return Splits(info, parts["train"], parts["calib"], parts["test"])


def synthetic_arrays(n=(400, 400, 400), k=3, c=5, d=6, seed=0, bars=(0.8, 0.0, -0.8)):
    """Cache arrays with a planted relation: a sample is easy (confident and right) at exit i when its
    hidden hardness score ``x0`` (feature 0 at every branch point) exceeds ``bars[i]``."""
    g = np.random.default_rng(seed)
    data = {}
    for split, m in zip(("train", "calib", "test"), n):
        y = g.integers(0, c, m)
        x0 = g.normal(size=m)
        base = np.concatenate([x0[:, None], g.normal(size=(m, d - 1))], 1)
        logits = g.normal(scale=0.3, size=(m, k, c))
        feats = []
        for i in range(k):
            easy = x0 > bars[i] if i < k - 1 else np.ones(m, bool)
            wrong = (y + 1 + g.integers(0, c - 1, m)) % c
            target = np.where(easy | (g.random(m) < 0.5), y, wrong)
            logits[np.arange(m), i, target] += np.where(easy, 5.0, 0.6)
            feats.append(base + g.normal(scale=0.1, size=base.shape))
        data[split] = (y, logits.astype(np.float32), feats)
    return data


def unit_costs(k: int):
    """The costs the synthetic caches are priced with: every stage 1 ms and 1000 MACs, every exit head 0.1 ms and
    100 MACs, every buffer 0.01 ms of a 1024-byte activation (the hand computations in the tests use them)."""
    from branchy.cache import cost_table

    return cost_table(k, stage_ms=1.0, exit_ms=0.1, buffer_ms=0.01, stage_macs=1000, exit_macs=100, act_bytes=1024)


def priced_cache(path, data, **kw):
    """:func:`branchy.cache.cache_from_arrays` with :func:`unit_costs` (the number of exits read from the logits)."""
    from branchy.cache import cache_from_arrays

    return cache_from_arrays(path, data, costs=unit_costs(np.shape(data["train"][1])[1]), **kw)


def no_json_constants(name):
    """A ``parse_constant`` for ``json.loads`` that refuses non-standard JSON (``Infinity``, ``NaN``)."""
    raise AssertionError(f"non-standard JSON constant {name}")


def refused(exc, phrase, fn, *args, **kw) -> str:
    """Call ``fn``; it must raise ``exc`` with ``phrase`` in a one-line message (no pickle-loading hint leaked);
    return the message."""
    import pytest

    with pytest.raises(exc) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert phrase in msg, msg
    assert "\n" not in msg, msg
    assert "weights_only" not in msg, msg
    return msg


def small_study_result(path, *, name: str = "a small study", profiles=("measured", "raspberry-pi-4")):
    """A finished study on a synthetic priced cache, as :func:`analysis.study.pipeline.run_study` returns it: gate
    predictors, every policy simulated, the references compared per profile, one placement searched. For report
    tests (a few seconds)."""
    import pandas as pd

    from analysis.core.policies import PolicyConfig
    from analysis.study.baselines import compare_references
    from analysis.study.config import StudyConfig
    from analysis.study.outputs import simulate_to
    from analysis.study.placement_study import run_placement
    from analysis.study.result import StudyResult
    from branchy.data import DataConfig
    from branchy.models import BackboneConfig
    from placement import Constraint
    from predictors import PredictorSpec, fit_predictor

    cache = priced_cache(path / "cache", synthetic_arrays(n=(200, 300, 200)), model_name="synthetic")
    cfg = PolicyConfig(bootstrap=50)
    sim = simulate_to(cache, path / "simulate", profiles=profiles, cfg=cfg, verbose=False)
    rule = sim["rule"]
    preds = {p.spec.name: p for p in (fit_predictor(cache, PredictorSpec("gate", at, "linear", e, rule), folds=2,
                                                    timing=0.005) for e, at in ((0, 0), (1, 0), (1, 1)))}
    sim = simulate_to(cache, path / "simulate", predictors=preds, profiles=profiles, cfg=cfg, verbose=False)
    refs = pd.DataFrame([compare_references(cache, preds, rule=rule, cfg=cfg, constraint=Constraint(), profile=p,
                                            n_boot=50) for p in profiles])
    res, compare = run_placement(cache, preds, "greedy", profile=profiles[0], rule=rule, progress=False)
    cfg = StudyConfig(data=DataConfig(dataset="npz", path=str(path / "data.npz")), model=BackboneConfig(), name=name)
    return StudyResult(out=path, config=cfg, cache=cache, rule=rule, test_eval=pd.DataFrame(),
                       simulation=sim, predictors=preds, predictor_table=pd.DataFrame(),
                       placements={"greedy": (res, compare)}, validate=None, references=refs)
