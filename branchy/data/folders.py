"""The ``imagefolder`` dataset: a torchvision ImageFolder tree (``root/class/img.png``), checked file by file
before any decoding, resized, held in memory or decoded per batch."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..core import check_int, is_int
from .options import fractions_ok, min_per_class, own_options
from .splits import (SPLITS, DatasetInfo, ImageFiles, Splits, build_splits, channel_stats, load_image, register_dataset,
                     stratified_split)




@register_dataset("imagefolder", doc="torchvision ImageFolder (root/class/img.png), resized; root/train + root/test if "
                                 "present; in_memory=false decodes each batch from disk (larger than memory)")
def imagefolder(*, root: str | os.PathLike | None = None, image_size: int = 32, channels: int = 3,
                seed: int = 0, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), in_memory: bool = True,
                stats_sample: int = 2000) -> Splits:
    """``in_memory=False``: the images stay on disk and each batch is decoded when asked for
    (:class:`~branchy.data.splits.ImageFiles`; for datasets larger than memory); the normalisation statistics then come
    from ``stats_sample`` train images drawn with ``seed``. Before any image is decoded, the options are checked
    (:func:`typed_options`), every listed file is stat-ed and its header read (:func:`_check_image_files`) and
    each class is checked to have enough images for the stratified split: each problem is one line."""
    o = own_options(imagefolder, locals())
    image_size, channels, seed, in_memory, stats_sample = (o[k] for k in ("image_size", "channels", "seed",
                                                                           "in_memory", "stats_sample"))
    fractions = fractions_ok(o["fractions"])
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
    if fractions_ok(o["fractions"]) is None:
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


__all__ = ["imagefolder"]
