import pickle
import struct

import numpy as np
import pytest
import torch

from branchy.data import list_datasets, load_dataset
from branchy.registry import UnknownNameError


def test_registered_datasets():
    assert {"mnist5k", "mnist", "fashion-mnist", "cifar10", "cifar100", "npz", "imagefolder",
            "mnist5k-c"} <= set(list_datasets())
    with pytest.raises(UnknownNameError, match="known: .*mnist5k"):
        load_dataset("imagenet-22k")


def test_mnist5k_split_is_stratified_disjoint_and_deterministic():
    a = load_dataset("mnist5k", seed=0)
    b = load_dataset("mnist5k", seed=0)
    c = load_dataset("mnist5k", seed=1)
    assert a.sizes() == {"train": 3000, "calib": 1000, "test": 1000}
    assert a.info.input_shape == (1, 28, 28) and a.info.num_classes == 10
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    rows = {s: {r.tobytes() for r in a[s].x.numpy()} for s in ("train", "calib", "test")}
    # mnist5k may hold a few duplicate images; the splits must not share more than those
    assert len(rows["train"] & rows["test"]) <= 2 and len(rows["calib"] & rows["test"]) <= 2
    for s in ("calib", "test"):
        counts = np.bincount(a[s].y.numpy(), minlength=10) / len(a[s])
        ref = np.bincount(a.train.y.numpy(), minlength=10) / len(a.train)
        assert np.abs(counts - ref).max() < 0.01
    x, y = a.test.batch(torch.arange(4))
    assert x.dtype == torch.float32 and x.shape == (4, 1, 28, 28) and abs(float(x.mean())) < 2


def _write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    code = {1: 0x0801, 3: 0x0803}[arr.ndim]
    with open(path, "wb") as f:
        f.write(struct.pack(">I", code) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_torchvision_mnist_format_loads_from_disk(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    g = np.random.default_rng(0)
    ytr, yte = np.arange(60) % 10, np.arange(20) % 10
    _write_idx(raw / "train-images-idx3-ubyte", g.integers(0, 255, (60, 28, 28)))
    _write_idx(raw / "train-labels-idx1-ubyte", ytr)
    _write_idx(raw / "t10k-images-idx3-ubyte", g.integers(0, 255, (20, 28, 28)))
    _write_idx(raw / "t10k-labels-idx1-ubyte", yte)
    s = load_dataset(name, root=tmp_path, download=False, calib_size=20)
    assert s.sizes() == {"train": 40, "calib": 20, "test": 20}
    assert s.info.input_shape == (1, 28, 28)
    assert sorted(s.test.y.tolist()) == sorted(yte.tolist())


def test_torchvision_cifar10_format_loads_from_disk(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    g = np.random.default_rng(0)

    def batch(n):
        return {"data": g.integers(0, 255, (n, 3072), dtype=np.uint8), "labels": list(np.arange(n) % 10)}

    for i in range(1, 6):
        pickle.dump(batch(10), open(d / f"data_batch_{i}", "wb"))
    pickle.dump(batch(10), open(d / "test_batch", "wb"))
    pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, open(d / "batches.meta", "wb"))
    # our files are not the official ones, so skip only the md5 check; the parsing is torchvision's own
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    s = load_dataset("cifar10", root=tmp_path, calib_size=10)
    assert s.sizes() == {"train": 40, "calib": 10, "test": 10}
    assert s.info.input_shape == (3, 32, 32) and s.train.x.shape[1:] == (3, 32, 32)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100", "fashion-mnist"])
def test_missing_torchvision_dataset_says_how_to_fix(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_dataset(name, root=tmp_path, download=False)


def test_npz_dataset_and_its_errors(tmp_path):
    g = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    np.savez(p, x=g.random((50, 12, 12)).astype(np.float32), y=np.arange(50) % 5)
    s = load_dataset("npz", path=p)
    assert s.info.input_shape == (1, 12, 12) and s.info.num_classes == 5
    assert sum(s.sizes().values()) == 50
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((4, 8, 8)), y=np.zeros(4, int))
    with pytest.raises(ValueError, match="missing \\['x'\\]"):
        load_dataset("npz", path=bad)
    np.savez(bad, x=np.zeros((4, 8)), y=np.zeros(4, int))
    with pytest.raises(ValueError, match="x must be"):
        load_dataset("npz", path=bad)
    np.savez(bad, x=np.zeros((4, 8, 8)), y=np.zeros(3, int))
    with pytest.raises(ValueError, match="y must be \\[N\\] with N=4"):
        load_dataset("npz", path=bad)
    np.savez(bad, x=np.full((4, 8, 8), np.nan), y=np.zeros(4, int))
    with pytest.raises(ValueError, match="NaN"):
        load_dataset("npz", path=bad)
    with pytest.raises(FileNotFoundError):
        load_dataset("npz", path=tmp_path / "nope.npz")


def test_imagefolder(tmp_path):
    from PIL import Image

    g = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.fromarray(g.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    s = load_dataset("imagefolder", root=tmp_path, image_size=16)
    assert s.info.input_shape == (3, 16, 16) and s.info.num_classes == 2
    assert sum(s.sizes().values()) == 20


def test_imagefolder_read_on_demand_is_the_in_memory_dataset(tmp_path):
    from PIL import Image

    from branchy.dump import dump
    from branchy.models import build_model
    from branchy.splits import ImageFiles

    g = np.random.default_rng(1)
    root = tmp_path / "img"
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        for i in range(9):
            Image.fromarray(g.integers(0, 255, (21, 19, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    mem = load_dataset("imagefolder", root=root, image_size=16)
    lazy = load_dataset("imagefolder", root=root, image_size=16, in_memory=False, stats_sample=10_000)
    assert isinstance(lazy.train, ImageFiles) and not hasattr(lazy.train, "x")
    assert lazy.info == mem.info and lazy.sizes() == mem.sizes()
    for s in ("train", "calib", "test"):
        idx = torch.arange(len(mem[s]))
        xm, ym = mem[s].batch(idx)
        xl, yl = lazy[s].batch(idx)
        assert torch.equal(xm, xl) and torch.equal(ym, yl)
    assert torch.equal(next(lazy.train.iter_batches(4, shuffle=True, seed=3))[0],
                       next(mem.train.iter_batches(4, shuffle=True, seed=3))[0])
    # a dump of the files read on demand is the dump of the decoded arrays, byte for byte
    torch.manual_seed(0)
    m = build_model("b-lenet", in_channels=3, image_size=16, exits=(0,), num_classes=3).eval()
    a = dump(m, mem, tmp_path / "ca", batch_size=5, profile=False, progress=False)
    b = dump(m, lazy, tmp_path / "cb", batch_size=5, profile=False, progress=False)
    fa, fb = a.manifest["files"], b.manifest["files"]
    assert {f: fa[f] for f in fa if f.endswith(".npy")} == {f: fb[f] for f in fb if f.endswith(".npy")}
    # the fingerprint follows the files: same files, same print; a file that changes size changes it
    before = lazy.fingerprint()
    assert load_dataset("imagefolder", root=root, image_size=16, in_memory=False).fingerprint() == before
    Image.fromarray(g.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "a" / "0.png")
    assert load_dataset("imagefolder", root=root, image_size=16, in_memory=False).fingerprint() != before
