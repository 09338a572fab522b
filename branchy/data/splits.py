"""What every dataset comes as: :class:`Splits` (train / calib / test, each an :class:`ArrayDataset`) with a
:class:`DatasetInfo`, the dataset registry, and the helpers loaders share (stratified split by seed, NCHW
tensors, normalisation statistics). Loaders live in :mod:`branchy.data.loaders`; :mod:`branchy.data` is the way in."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from ..core import Registry

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


class ImageFiles(ArrayDataset):
    """Images read from their files when a batch asks for them (decoded, converted to ``channels``, resized to
    ``size`` x ``size``, as the in-memory loader does), for datasets larger than memory: only a batch is ever
    decoded. ``paths`` ``[N]`` and labels ``y`` ``[N]``; the fingerprint hashes each file's path (relative to
    ``root``), size and label, not its pixels (reading every image would be a pass over the dataset)."""

    def __init__(self, paths: list[str], y: torch.Tensor, mean, std, *, size: int, channels: int, root: str) -> None:
        if len(paths) != len(y):
            raise ValueError(f"{len(paths)} image files but {len(y)} labels")
        self.paths, self.y, self.size, self.channels, self.root = list(paths), y.long().contiguous(), size, channels, root
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def load(self, idx) -> torch.Tensor:
        """Images ``idx`` as uint8 ``[B, C, size, size]``."""
        return torch.stack([load_image(self.paths[int(i)], self.size, self.channels)
                            for i in torch.as_tensor(idx).reshape(-1)])

    def normalise(self, xb: torch.Tensor) -> torch.Tensor:
        return (xb.float() / 255.0 - self._mean) / self._std

    def __getitem__(self, i):
        return self.normalise(self.load([i]))[0], self.y[i]

    def batch(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalise(self.load(idx)), self.y[torch.as_tensor(idx)]

    def fingerprint(self) -> str:
        import os

        h = hashlib.sha256(f"{self.size}x{self.channels}".encode())
        for p, y in zip(self.paths, self.y.tolist()):
            h.update(f"{os.path.relpath(p, self.root)}\0{os.path.getsize(p)}\0{y}\n".encode())
        return h.hexdigest()[:16]


def load_image(path: str, size: int, channels: int) -> torch.Tensor:
    """One image file as uint8 ``[channels, size, size]`` (grey or RGB, resized)."""
    import torchvision.transforms.functional as TF
    from torchvision.datasets.folder import default_loader

    img = default_loader(path).convert("L" if channels == 1 else "RGB")
    return TF.pil_to_tensor(TF.resize(img, [size, size]))


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


DATASETS: Registry[Callable[..., Splits]] = Registry("dataset", plugins="branchy.datasets")


def register_dataset(name: str, doc: str | None = None):
    """Register a loader: a function of keyword-only options (no ``**kwargs``: an unknown option is refused)
    that returns :class:`Splits`, stratified and deterministic from ``seed``."""
    return DATASETS.register(name, doc=doc)


def stratified_split(y: np.ndarray, sizes: tuple[int, ...], seed: int) -> list[np.ndarray]:
    """Indices for consecutive parts of the given sizes, stratified by label, deterministic for ``seed``."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    out, rest = [], idx
    for size in sizes[:-1]:
        take, rest = train_test_split(rest, train_size=size, stratify=y[rest], random_state=seed)
        out.append(np.sort(take))
    out.append(np.sort(rest[: sizes[-1]]))
    return out


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xf = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    mean = xf.mean(dim=(0, 2, 3))
    std = xf.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def as_nchw(x: np.ndarray | torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x))
    if t.ndim == 3:
        t = t.unsqueeze(1)
    elif t.ndim == 4 and channels_last:
        t = t.permute(0, 3, 1, 2)
    return t.contiguous()


def _images_and_labels(name: str, split: str, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``[N, C, H, W]`` and ``y`` ``[N]`` as tensors (numpy arrays are converted); a clear error otherwise."""
    x = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
    y = y if torch.is_tensor(y) else torch.as_tensor(np.asarray(y))
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{name} {split}: images must be [N, C, H, W] and labels [N], got {tuple(x.shape)} and "
                         f"{tuple(y.shape)} (as_nchw adds the channel axis to [N, H, W] images)")
    return x, y


def build_splits(name: str, num_classes: int, parts: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 mean=None, std=None) -> Splits:
    """:class:`Splits` from ``{"train": (x, y), "calib": ..., "test": ...}``: images ``[N, C, H, W]`` (uint8, or
    float in [0, 1]; tensors or numpy arrays) and integer labels ``[N]``; normalisation statistics from train
    unless ``mean`` and ``std`` (per channel) are given."""
    parts = {s: _images_and_labels(name, s, x, y) for s, (x, y) in parts.items()}
    x_train = parts["train"][0]
    if mean is None:
        mean, std = channel_stats(x_train)
    c, h, w = x_train.shape[1:]
    info = DatasetInfo(name, int(c), int(h), int(w), int(num_classes), tuple(mean), tuple(std))
    ds = {s: ArrayDataset(x, y, info.mean, info.std) for s, (x, y) in parts.items()}
    return Splits(info, ds["train"], ds["calib"], ds["test"])


__all__ = ["ArrayDataset", "DATASETS", "DatasetInfo", "ImageFiles", "SPLITS", "Splits", "as_nchw", "build_splits",
           "channel_stats", "load_image", "register_dataset", "stratified_split"]
