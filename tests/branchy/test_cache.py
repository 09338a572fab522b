import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from branchy.cache import CacheError, FeatureCache, dump
from branchy.models import pool_features
from branchy.exits import confidence
from branchy.models import BranchyNet, ModelConfig, build_model
from branchy.runtime import count_macs, profile_segments
from tests.helpers import make_splits

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy_model():
    torch.manual_seed(0)
    return build_model("b-lenet", exits=(0, 1), num_classes=4).eval()


@pytest.fixture(scope="module")
def toy_cache(toy_model, toy_splits, tmp_path_factory):
    return dump(toy_model, toy_splits, tmp_path_factory.mktemp("c") / "cache", batch_size=40, profile_time=0.01,
                pooling="avg", progress=False)


def test_cached_logits_and_features_equal_the_model(toy_model, toy_splits, toy_cache):
    for split in ("train", "calib", "test"):
        x, y = toy_splits[split].batch(torch.arange(len(toy_splits[split])))
        with torch.no_grad():
            logits, feats = toy_model.forward_exits(x, return_features=True)
        np.testing.assert_array_equal(toy_cache.labels(split), y.numpy())
        np.testing.assert_allclose(toy_cache.logits(split), torch.stack(logits, 1).numpy(), rtol=1e-5, atol=1e-5)
        for k, h in enumerate(feats):
            f = toy_cache.features(split, k)
            assert isinstance(f, np.memmap) and f.dtype == np.float16
            np.testing.assert_allclose(f, h.mean((2, 3)).numpy(), rtol=2e-3, atol=2e-3)
    m = toy_cache.manifest
    assert m["splits"] == {"train": 96, "calib": 48, "test": 48} and m["num_exits"] == 3
    assert m["model"]["fingerprint"] == toy_model.fingerprint()
    assert m["feature_dims"] == [5, 10, 20]


def test_grid_pooling():
    h = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    out = pool_features(h, 2)
    assert out.shape == (2, 12)
    assert out[0, 0] == h[0, 0, :2, :2].mean()


def test_pyramid_pooling_concatenates_every_scale(toy_splits, tmp_path):
    """``grid:1,2``: the global average and the 2x2 grid of every channel, side by side; the runtime's gate on a
    raw activation scores exactly what the predictor scores on the cached features."""
    from branchy.cache import DumpConfig
    from branchy.models import build_model, parse_pooling
    from predictors import PredictorSpec, fit_predictor
    from predictors.deploy import score_callable

    assert parse_pooling("avg") == (1,) and parse_pooling("grid:3") == (3,) and parse_pooling("grid:1,2") == (1, 2)
    for bad in ("grid:", "grid:1,1", "grid:0", "grid:1,x", "pyramid"):
        with pytest.raises(ValueError, match="unknown pooling"):
            DumpConfig(pooling=bad)
    h = torch.randn(2, 3, 4, 4)
    out = pool_features(h, (1, 2))
    naive = torch.cat([h.mean((2, 3)), torch.stack([h[:, :, i:i + 2, j:j + 2].mean((2, 3))
                                                     for i in (0, 2) for j in (0, 2)], 2).flatten(1)], 1)
    torch.testing.assert_close(out, naive)
    torch.manual_seed(0)
    m = build_model("b-lenet", exits=(0, 1), num_classes=4).eval()
    cache = dump(m, toy_splits, tmp_path / "c", progress=False, profile=False, pooling="grid:1,2",
                 feature_dtype="float32")
    c0 = m.branch_shapes[0][0]
    assert cache.features("test", 0).shape[1] == 5 * c0
    pred = fit_predictor(cache, PredictorSpec("gate", 0, "nn", 0, (0.9, 0.9, np.inf), params={"max_epochs": 5}),
                         folds=2, timing=0.01)
    x = toy_splits.test.batch(torch.arange(8))[0]
    with torch.no_grad():
        act = m.run_stage(0, x)
    runtime = score_callable(pred, "grid:1,2")(act).numpy()
    np.testing.assert_allclose(runtime, pred.score_inputs(cache.features("test", 0)[:8]), rtol=1e-4, atol=1e-5)


def _naive(z):
    p = [math.exp(v - max(z)) for v in z]
    s = sum(p)
    p = [v / s for v in p]
    ent = -sum(v * math.log(v) for v in p if v > 0)
    top = sorted(p)
    return ent, ent / math.log(len(z)), top[-1], top[-1] - top[-2]


def test_table_measures_equal_a_naive_reference(toy_cache):
    t = toy_cache.table("test")
    z = toy_cache.logits("test")
    y = toy_cache.labels("test")
    assert len(t) == z.shape[0] * z.shape[1]
    for row in t.sample(40, random_state=0).itertuples():
        ref = _naive([float(v) for v in z[row.sample, row.exit]])
        assert row.entropy == pytest.approx(ref[0], abs=1e-6)
        assert row.norm_entropy == pytest.approx(ref[1], abs=1e-6)
        assert row.max_prob == pytest.approx(ref[2], abs=1e-6)
        assert row.margin == pytest.approx(ref[3], abs=1e-6)
        assert row.label == y[row.sample]
        assert row.correct == (int(np.argmax(z[row.sample, row.exit])) == y[row.sample])
    np.testing.assert_allclose(confidence(np.array([[0.0, 0.0]]), "entropy"), [math.log(2)])


def test_macs_of_a_tiny_net_equal_a_hand_count():
    cfg = ModelConfig("hand", 1, (8, 8), 3, (0,), {})
    blocks = [nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 4, 3, padding=1, stride=2)]
    final = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    head = lambda c, hw, nc, **kw: nn.Sequential(nn.Flatten(), nn.Linear(c * hw[0] * hw[1], nc))  # noqa: E731
    m = BranchyNet(blocks, final, (0,), config=cfg, head_factory=head)
    assert count_macs(lambda: m.run_stage(0, torch.zeros(1, 1, 8, 8))) == 8 * 8 * 2 * 1 * 9
    costs = profile_segments(m, measure_latency=False)
    stage = costs[costs.segment == "stage"].macs.tolist()
    exit_ = costs[costs.segment == "exit"].macs.tolist()
    assert stage == [8 * 8 * 2 * 9, 4 * 4 * 4 * 2 * 9]
    assert exit_ == [2 * 8 * 8 * 3, 64 * 3]
    assert costs[costs.segment == "buffer"].act_bytes.tolist() == [2 * 8 * 8 * 4, 4 * 4 * 4 * 4]


def test_cost_table_has_latency_and_branches_cost_less_than_the_rest_of_the_trunk(toy_cache):
    c = toy_cache.costs
    assert (c.ms_b1 > 0).all() and (c.ms_batch > 0).all() and (c.threads >= 1).all()
    for name in ("b-lenet", "b-alexnet", "b-resnet", "b-resnext", "b-densenet"):
        m = build_model(name, in_channels=3, image_size=32)
        t = profile_segments(m, measure_latency=False)
        stage, ex = t[t.segment == "stage"].macs.to_numpy(), t[t.segment == "exit"].macs.to_numpy()
        for k in range(m.num_exits - 1):
            rest = stage[k + 1 :].sum() + ex[-1]
            assert ex[k] < 0.5 * rest, (name, k, ex[k], rest)


def test_existing_cache_needs_overwrite(toy_model, toy_splits, toy_cache):
    with pytest.raises(FileExistsError, match="--overwrite"):
        dump(toy_model, toy_splits, toy_cache.path, progress=False)


def test_fingerprint_mismatch_is_refused(toy_cache, toy_splits):
    other = build_model("b-lenet", exits=(0, 1), num_classes=4)
    with pytest.raises(CacheError, match="stale cache .* weights"):
        FeatureCache.open(toy_cache.path, model=other)
    with pytest.raises(CacheError, match="stale cache .* dataset toy"):
        FeatureCache.open(toy_cache.path, dataset=make_splits(seed=3))
    FeatureCache.open(toy_cache.path, dataset=toy_splits)  # the right one is fine


def test_not_a_cache_incomplete_and_newer_schema(tmp_path, toy_cache):
    with pytest.raises(CacheError, match="no feature cache"):
        FeatureCache.open(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CacheError, match="no manifest.json"):
        FeatureCache.open(tmp_path / "empty")
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(toy_cache.path, bad)
    os.remove(bad / "test" / "feat_1.npy")
    with pytest.raises(CacheError, match="incomplete: test/feat_1.npy"):
        FeatureCache.open(bad)
    newer = tmp_path / "newer"
    shutil.copytree(toy_cache.path, newer)
    m = json.loads((newer / "manifest.json").read_text())
    m["schema_version"] = 99
    (newer / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CacheError, match="cache schema version 99, newer than this toolkit's 2: upgrade"):
        FeatureCache.open(newer)


KILL_SCRIPT = textwrap.dedent("""
    import sys, torch
    from tests.helpers import make_splits
    from branchy.models import build_model
    from branchy.cache import dump
    torch.set_num_threads(2)
    torch.manual_seed(0)
    m = build_model("b-lenet", exits=(0, 1), num_classes=4)
    s = make_splits(n=({n}, 64, 64))
    dump(m, s, sys.argv[1], batch_size=8, profile=False, progress=False, overwrite=True)
""")


@pytest.mark.slow
def test_killed_dump_leaves_no_cache_and_rerun_equals_uninterrupted(tmp_path):
    script = tmp_path / "d.py"
    script.write_text(KILL_SCRIPT.format(n=12000))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    target = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, str(script), str(target)], env=env)
    partials = lambda: list(tmp_path.glob("cache.partial-*"))  # noqa: E731  (one folder per dump)
    deadline = time.time() + 60
    while not any((d / "train" / "logits.npy").exists() for d in partials()) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert proc.poll() is None, "the dump finished before it could be killed; make it bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (partial,) = partials()
    assert partial.exists() and not target.exists()
    with pytest.raises(CacheError, match="interrupted dump"):
        FeatureCache.open(target)
    with pytest.raises(CacheError):
        FeatureCache.open(partial)
    subprocess.run([sys.executable, str(script), str(target)], env=env, check=True)
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, str(script), str(ref)], env=env, check=True)
    a, b = FeatureCache.open(target), FeatureCache.open(ref)
    assert not partial.exists() and not partials()
    for sp in a.splits:
        np.testing.assert_array_equal(a.logits(sp), b.logits(sp))
        np.testing.assert_array_equal(a.labels(sp), b.labels(sp))
        for k in range(a.num_exits):
            np.testing.assert_array_equal(a.features(sp, k), b.features(sp, k))


def test_reading_a_cache_needs_numpy_and_pandas_only(toy_cache):
    code = (f"import sys; from branchy.cache import FeatureCache; c = FeatureCache.open({str(toy_cache.path)!r}); "
            f"c.table('test'); c.summary(); c.features('test', 0)[:2]; "
            f"assert 'torch' not in sys.modules, 'torch was imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr


def test_a_failing_dump_leaves_nothing(toy_splits, tmp_path, monkeypatch):
    m = build_model("b-lenet", exits=(0, 1), num_classes=4)
    calls = {"n": 0}
    real = m.forward_exits

    def flaky(x, return_features=False):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of a split
        return real(x, return_features)

    monkeypatch.setattr(m, "forward_exits", flaky)
    with pytest.raises(KeyboardInterrupt):
        dump(m, toy_splits, tmp_path / "c", batch_size=16, profile=False, progress=False)
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.partial").exists()
