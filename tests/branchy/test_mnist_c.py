import inspect
import warnings

import numpy as np
import pytest

import branchy.data.mnist_c as mc
from branchy.data import load_dataset
from branchy.data.loaders import mnist5k_arrays
from branchy.data import DATASETS, SPLITS


@pytest.fixture(scope="module")
def digits():
    x, y = mnist5k_arrays()
    return x[:, 0], y


def test_corrupt_is_deterministic_per_seed(digits):
    x = digits[0][:400]
    a, ca, sa = mc.corrupt(x, 3)
    b, cb, sb = mc.corrupt(x, 3)
    c, cc, _ = mc.corrupt(x, 4)
    assert a.tobytes() == b.tobytes() and np.array_equal(ca, cb) and np.array_equal(sa, sb)
    assert a.tobytes() != c.tobytes() and not np.array_equal(ca, cc)
    # [N, 1, 28, 28] gives the same pixels in its own shape
    d, cd, _ = mc.corrupt(x[:, None], 3)
    assert d.shape == (400, 1, 28, 28) and d[:, 0].tobytes() == a.tobytes() and np.array_equal(cd, ca)


@pytest.mark.parametrize("name", list(mc.CORRUPTIONS))
def test_each_corruption_changes_images_more_at_higher_severity(name, digits):
    x = digits[0][:100]
    fn = mc.CORRUPTIONS[name]
    diff = []
    for s in (1, 3, 5):
        out = fn(x, s, np.random.default_rng(0))
        assert out.dtype == np.uint8 and out.shape == x.shape
        assert (out != x).reshape(len(x), -1).any(1).mean() >= 0.95, f"{name} severity {s} leaves images unchanged"
        assert fn(x, s, np.random.default_rng(0)).tobytes() == out.tobytes()
        diff.append(np.abs(out.astype(np.int16) - x).mean())
    assert diff[0] < diff[1] * 1.05 and diff[1] < diff[2] * 1.05 and diff[2] > 1.3 * diff[0], (name, diff)


def test_clean_fraction_is_respected_and_clean_images_are_untouched(digits):
    x = digits[0][:1000]
    out, corr, sev = mc.corrupt(x, 0, clean_fraction=0.3, severities=(2, 4))
    clean = corr == -1
    assert clean.sum() == 300 and np.array_equal(sev == 0, clean)
    assert np.array_equal(out[clean], x[clean])
    assert (out[~clean] != x[~clean]).reshape(700, -1).any(1).mean() > 0.99
    assert set(np.unique(sev[~clean])) == {2, 4}
    counts = np.bincount(corr[~clean], minlength=len(mc.CORRUPTIONS))
    assert counts.min() >= 700 // len(mc.CORRUPTIONS)  # spread evenly over the corruptions
    assert (mc.corrupt(x, 0, clean_fraction=1.0)[0] == x).all()
    assert (mc.corrupt(x, 0, clean_fraction=0.0)[1] >= 0).all()


def test_bad_arguments_are_one_line_value_errors(tmp_path, digits):
    x = digits[0][:20]
    for kw, msg in [({"clean_fraction": 1.5}, "clean_fraction must be"), ({"clean_fraction": -0.1}, "in \\[0, 1\\]"),
                    ({"severities": (0, 6)}, "severities must be"), ({"severities": ()}, "1..5")]:
        with pytest.raises(ValueError, match=msg):
            mc.corrupt(x, 0, **kw)
    with pytest.raises(ValueError, match="uint8 images"):
        mc.corrupt(x.astype(np.float32), 0)
    with pytest.raises(ValueError, match="sum to at most 5000"):
        mc.mnist5k_c(root=str(tmp_path), sizes=(4000, 1000, 1000))
    with pytest.raises(ValueError, match="seed must be"):
        mc.mnist5k_c(root=str(tmp_path), seed=-1)
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(mc.mnist5k_c).parameters.values())


def test_cache_is_written_reused_and_recomputed_when_damaged(tmp_path, monkeypatch):
    first = mc.load_corrupted(root=tmp_path, seed=1, clean_fraction=0.2)
    p = mc.cache_path(tmp_path, 1, 0.2)
    assert p == tmp_path / "mnist5k-c" / f"v{mc.VERSION}-seed1-clean0.2.npz" and p.is_file()
    assert [q.name for q in p.parent.iterdir()] == [p.name]  # no temporary file left behind

    real = mc._compute

    def boom(*a, **k):
        raise AssertionError("recomputed although the cache is whole")

    monkeypatch.setattr(mc, "_compute", boom)
    again = mc.load_corrupted(root=tmp_path, seed=1, clean_fraction=0.2)
    assert all(np.array_equal(u, v) for u, v in zip(first, again))

    calls = []
    monkeypatch.setattr(mc, "_compute", lambda *a: calls.append(a) or real(*a))
    p.write_bytes(p.read_bytes()[:5000])  # truncated
    with pytest.warns(UserWarning, match="cannot be read"):
        assert mc.load_corrupted(root=tmp_path, seed=1, clean_fraction=0.2)[0].tobytes() == first[0].tobytes()
    np.savez(p, x=first[0][:10], corruption=first[1], severity=first[2])  # whole but wrong shape
    with pytest.warns(UserWarning, match="wrong shape"):
        mc.load_corrupted(root=tmp_path, seed=1, clean_fraction=0.2)
    zeros = np.zeros_like(first[2])  # not what the seed draws, though whole and true to its hash
    np.savez(p, x=first[0], corruption=first[1], severity=zeros, sha256=mc.content_hash(first[0], first[1], zeros))
    with pytest.warns(UserWarning, match="does not hold what seed 1"):
        mc.load_corrupted(root=tmp_path, seed=1, clean_fraction=0.2)
    assert len(calls) == 3
    monkeypatch.setattr(mc, "_compute", boom)
    assert mc.load_corrupted(root=tmp_path, seed=1, clean_fraction=0.2)[0].tobytes() == first[0].tobytes()


def test_cache_whose_corrupted_images_were_altered_is_recomputed(tmp_path, monkeypatch):
    """Issue 23: the cache carries a SHA-256 of its arrays; altering every corrupted image (the clean ones, which
    the old check compared, left as they are) no longer slips through."""
    first = mc.load_corrupted(root=tmp_path, seed=3, clean_fraction=0.2)
    p = mc.cache_path(tmp_path, 3, 0.2)
    with np.load(p, allow_pickle=False) as f:
        stored = str(f["sha256"][()])
    assert stored == mc.content_hash(*first)
    x, corruption, severity = (a.copy() for a in first)
    x[corruption >= 0] = 255 - x[corruption >= 0]  # every corrupted image altered, the clean ones untouched
    real, calls = mc._compute, []
    monkeypatch.setattr(mc, "_compute", lambda *a: calls.append(a) or real(*a))
    for extra in ({"sha256": stored}, {}):  # the old hash kept beside altered images; no hash at all
        np.savez(p, x=x, corruption=corruption, severity=severity, **extra)
        with pytest.warns(UserWarning, match="SHA-256" if extra else "no content hash") as w:
            again = mc.load_corrupted(root=tmp_path, seed=3, clean_fraction=0.2)
        assert "recomputing" in str(w[0].message) and str(p) in str(w[0].message)
        assert all(np.array_equal(u, v) for u, v in zip(first, again))
    assert len(calls) == 2
    assert [q.name for q in p.parent.iterdir()] == [p.name]  # written again atomically, nothing left behind
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten cache is whole again: read without a warning or a recompute
        monkeypatch.setattr(mc, "_compute", lambda *a: pytest.fail("recomputed a whole cache"))
        assert mc.load_corrupted(root=tmp_path, seed=3, clean_fraction=0.2)[0].tobytes() == first[0].tobytes()


def test_loader_options_are_typed_like_settings(tmp_path):
    small = load_dataset("mnist5k-c", root=tmp_path, seed="0", sizes="300,100,100", clean_fraction="0.2")
    assert small.sizes() == {"train": 300, "calib": 100, "test": 100}
    with pytest.raises(ValueError, match="mnist5k-c dataset option sizes\\[0\\]: expected an integer, got 3000.5"):
        load_dataset("mnist5k-c", root=tmp_path, sizes=(3000.5, 1000, 1000))
    with pytest.raises(ValueError, match="dataset option clean_fraction: expected a number, got 'most'"):
        load_dataset("mnist5k-c", root=tmp_path, clean_fraction="most")


def test_unwritable_root_computes_in_memory_and_warns_once(tmp_path):
    root = tmp_path / "a-file"
    root.write_text("not a folder")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        a = mc.load_corrupted(root=root, seed=2)
        b = mc.load_corrupted(root=root, seed=2)
    assert a[0].tobytes() == b[0].tobytes()
    assert len([m for m in w if "cannot cache" in str(m.message)]) == 1


def test_loader_keeps_mnist5k_samples_labels_and_table_lines_up(tmp_path, digits):
    assert "mnist5k-c" in DATASETS
    c = load_dataset("mnist5k-c", root=str(tmp_path), seed=0)
    ref = load_dataset("mnist5k", seed=0)
    assert c.sizes() == {"train": 3000, "calib": 1000, "test": 1000}
    assert c.info.name == "mnist5k-c" and (c.info.mean, c.info.std) == (ref.info.mean, ref.info.std)
    t = mc.corruption_table(seed=0)
    assert list(t.columns[:5]) == ["split", "index", "corruption", "severity", "label"] and len(t) == 5000
    for s in SPLITS:
        assert np.array_equal(c[s].y.numpy(), ref[s].y.numpy())
        rows = t[t.split == s]
        assert np.array_equal(rows["label"].to_numpy(), c[s].y.numpy())
        assert np.array_equal(rows["index"].to_numpy(), np.arange(len(c[s])))
        clean = (rows["corruption"] == "clean").to_numpy()
        assert np.array_equal(rows["severity"].to_numpy() == 0, clean)
        xc, xr = c[s].x.numpy(), ref[s].x.numpy()
        assert np.array_equal(xc[clean], xr[clean])
        assert (xc[~clean] != xr[~clean]).reshape((~clean).sum(), -1).any(1).mean() > 0.99
    assert abs((t.corruption == "clean").mean() - 0.2) < 0.03
    assert set(t.corruption) == {*mc.CORRUPTIONS, "clean"} and set(t.severity) == {0, 1, 2, 3, 4, 5}
    small = mc.mnist5k_c(root=str(tmp_path), seed=0, sizes=(300, 100, 100))
    assert small.sizes() == {"train": 300, "calib": 100, "test": 100}


def test_corruption_makes_the_task_harder(tmp_path):
    from sklearn.linear_model import LogisticRegression

    c = mc.mnist5k_c(root=str(tmp_path), seed=0, clean_fraction=0.0)
    ref = load_dataset("mnist5k", seed=0)
    flat = lambda d: d.x.numpy().reshape(len(d), -1) / 255.0  # noqa: E731
    take = np.random.default_rng(0).permutation(len(ref.train))[:1000]  # mnist5k is ordered by class
    clf = LogisticRegression(max_iter=300).fit(flat(ref.train)[take], ref.train.y.numpy()[take])
    clean = clf.score(flat(ref.test), ref.test.y.numpy())
    corrupted = clf.score(flat(c.test), c.test.y.numpy())
    print(f"logistic regression accuracy: clean {clean:.3f}, corrupted {corrupted:.3f}")
    assert clean > 0.8 and corrupted < clean - 0.1, (clean, corrupted)
