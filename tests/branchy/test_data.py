import pickle
import struct

import numpy as np
import pytest
import torch

from branchy.data import list_datasets, load_dataset
from branchy.core import UnknownNameError


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

    from branchy.cache import dump
    from branchy.models import build_model
    from branchy.data.splits import ImageFiles

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


# ----------------------------------------------------------------------------- issue 23: image folders checked up front
def _folder(root, classes=("cat", "dog"), n=6, seed=0):
    from PIL import Image

    g = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(g.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _refused_one_line(exc, phrase, fn, *args, **kw) -> str:
    with pytest.raises(exc) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert phrase in msg and "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("in_memory", [False, True])
def test_imagefolder_bad_files_are_named_before_any_image_is_decoded(tmp_path, monkeypatch, in_memory):
    import branchy.data.folders as ld

    root = _folder(tmp_path / "img")
    (root / "cat" / "0.png").write_bytes(b"")                                        # empty
    good = (root / "dog" / "1.png").read_bytes()
    (root / "dog" / "2.png").write_bytes(good[: len(good) // 2])                     # cut short
    (root / "dog" / "3.png").write_bytes(b"not an image at all" * 10)                # not an image
    (root / "cat" / "9.png").symlink_to(tmp_path / "gone.png")                       # listed, but missing
    decoded = []
    monkeypatch.setattr(ld, "load_image", lambda *a: decoded.append(a) or pytest.fail("decoded before the check"))
    msg = _refused_one_line(ValueError, "4 of 13 image files are missing, empty or cannot be decoded",
                            load_dataset, "imagefolder", root=root, image_size=8, in_memory=in_memory)
    assert str(root / "cat" / "0.png") + " (empty)" in msg and str(root / "cat" / "9.png") + " (missing)" in msg
    assert str(root / "dog" / "2.png") + " (not a decodable image" in msg
    assert "and 1 more" in msg and "replace or remove them" in msg and not decoded


def test_imagefolder_class_with_one_image_says_what_is_needed(tmp_path):
    root = _folder(tmp_path / "img")
    _folder(root, classes=("emu",), n=1)
    msg = _refused_one_line(ValueError, "needs at least 5 images per class; 1 class(es) have fewer: emu (1)",
                            load_dataset, "imagefolder", root=root, image_size=8, in_memory=False)
    assert "stratified train/calib/test split (0.6, 0.2, 0.2)" in msg and "stratify" not in msg
    two = tmp_path / "two"
    _folder(two / "train")
    _folder(two / "test", n=2)
    _folder(two / "train", classes=("emu",), n=1)
    _folder(two / "test", classes=("emu",), n=1)
    _refused_one_line(ValueError, "train/calib split of train/ (a fifth to calib) needs at least 2 images per class; "
                      "1 class(es) have fewer: emu (1)", load_dataset, "imagefolder", root=two, image_size=8)
    (two / "test" / "emu" / "0.png").rename(two / "test" / "dog" / "e.png")
    (two / "test" / "emu").rmdir()
    _refused_one_line(ValueError, "test/ holds the classes ['cat', 'dog'] but train/ holds ['cat', 'dog', 'emu']",
                      load_dataset, "imagefolder", root=two, image_size=8)


def test_imagefolder_options_are_typed_and_checked_before_torchvision(tmp_path, monkeypatch):
    import branchy.data.folders as ld

    root = _folder(tmp_path / "img", n=5)
    monkeypatch.setattr(ld, "_list_images", lambda *a: pytest.fail("torchvision called before the options' check"))
    for kw, phrase in [({"in_memory": "maybe"}, "imagefolder dataset option in_memory: expected true or false, "
                                                "got 'maybe'"),
                       ({"stats_sample": 0}, "option stats_sample must be a whole number >= 1, got 0"),
                       ({"image_size": -5}, "option image_size must be a whole number >= 1, got -5"),
                       ({"image_size": "big"}, "option image_size: expected an integer, got 'big'"),
                       ({"channels": 2}, "option channels must be 1 (grey) or 3 (RGB), got 2"),
                       ({"fractions": (0.5, 0.5, 0.5)}, "option fractions must be three positive shares"),
                       ({"seed": -1}, "option seed must be a whole number >= 0, got -1")]:
        _refused_one_line(ValueError, phrase, load_dataset, "imagefolder", root=root, **kw)
        _refused_one_line(ValueError, phrase, ld.imagefolder, root=root, **kw)  # called directly: the same
    _refused_one_line(ValueError, "image_size must be a whole number >= 1", ld.imagefolder,
                      root=tmp_path / "nowhere", image_size=-5)  # before the folder is even looked at
    monkeypatch.undo()
    s = load_dataset("imagefolder", root=root, image_size="8", in_memory=False, stats_sample="3",
                     fractions="0.6,0.2,0.2")
    assert s.info.input_shape == (3, 8, 8) and sum(s.sizes().values()) == 10


def test_build_splits_takes_numpy_arrays_and_names_a_wrong_shape():
    from branchy.data.splits import build_splits

    rng = np.random.default_rng(0)
    parts = {s: (rng.integers(0, 255, (8, 1, 4, 4), dtype=np.uint8), np.arange(8) % 2) for s in ("train", "calib", "test")}
    sp = build_splits("toy", 2, parts)
    assert sp.info.channels == 1 and len(sp.test) == 8
    parts["calib"] = (rng.integers(0, 255, (8, 4, 4), dtype=np.uint8), np.arange(8) % 2)
    with pytest.raises(ValueError, match=r"toy calib: images must be \[N, C, H, W\] and labels \[N\], got \(8, 4, 4\)"):
        build_splits("toy", 2, parts)
