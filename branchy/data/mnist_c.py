"""MNIST-5k corrupted in the style of MNIST-C, so that early exits see a mix of easy and hard samples.

Reference: N. Mu and J. Gilmer (2019), "MNIST-C: A Robustness Benchmark for Computer Vision",
arXiv:1906.02337. The corruptions here are short numpy/scipy re-implementations in that spirit (not the
paper's exact code or parameters), each with five severities.

Units: images are uint8 0..255, ``[N, 28, 28]`` (``[N, 1, 28, 28]`` also accepted by :func:`corrupt`);
severity is an integer 1 (mild) .. 5 (strong); 0 marks a clean sample. Corruption index ``-1`` is clean,
otherwise the position in :data:`CORRUPTIONS`. Distances are in pixels, angles in degrees.

The dataset ``mnist5k-c`` (registered on import) corrupts all 5,000 MNIST-5k digits at load time (nothing is
stored in the repository), caches them under ``root/mnist5k-c/`` (with a SHA-256 of the arrays inside the file:
a cache whose content differs from its hash is recomputed, with a warning), and splits them exactly as
``mnist5k`` does for the same seed: same samples, same labels, only the pixels differ.
"""
from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from .loaders import mnist5k_arrays
from .splits import SPLITS, Splits, build_splits, register_dataset, stratified_split
from .corruptions import IMAGE_H, IMAGE_W, CLEAN, CORRUPTIONS  # noqa: F401 - re-exported

VERSION = 1  # bump whenever a corruption or the assignment changes: old caches are then ignored
SEVERITIES = (1, 2, 3, 4, 5)
# ----------------------------------------------------------------------------- checks
def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_seed(seed) -> int:
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    return int(seed)


def _check_fraction(clean_fraction) -> float:
    ok = isinstance(clean_fraction, (int, float, np.integer, np.floating)) and not isinstance(clean_fraction, bool)
    if not ok or not 0.0 <= float(clean_fraction) <= 1.0:
        raise ValueError(f"clean_fraction must be a number in [0, 1] (share of samples left clean), "
                         f"got {clean_fraction!r}")
    return float(clean_fraction)


def _check_severities(severities) -> tuple[int, ...]:
    try:
        sev = tuple(severities)
    except TypeError:
        sev = ()
    if not sev or not all(_is_int(s) and 1 <= s <= 5 for s in sev):
        raise ValueError(f"severities must be a non-empty list of whole numbers in 1..5, e.g. (1, 2, 3, 4, 5); "
                         f"got {severities!r}")
    return tuple(sorted({int(s) for s in sev}))


def _check_sizes(sizes, total: int) -> tuple[int, int, int]:
    try:
        sz = tuple(sizes)
    except TypeError:
        sz = ()
    if len(sz) != 3 or not all(_is_int(s) and s > 0 for s in sz):
        raise ValueError(f"sizes must be three positive whole numbers (train, calib, test), e.g. "
                         f"(3000, 1000, 1000); got {sizes!r}")
    if sum(sz) > total:
        raise ValueError(f"mnist5k-c has {total} samples; split sizes {sz} sum to {sum(sz)}: make them sum to "
                         f"at most {total}")
    return tuple(int(s) for s in sz)


# ----------------------------------------------------------------------------- corrupting a set
def assignment(n: int, seed: int, *, clean_fraction: float = 0.2, severities=SEVERITIES
               ) -> tuple[np.ndarray, np.ndarray]:
    """Which corruption (index, -1 = clean) and severity (0 = clean) each of ``n`` samples gets, from ``seed``.
    Exactly ``round(clean_fraction * n)`` samples are clean; the others are spread evenly over the corruptions
    and over ``severities`` (in random order). Cheap: no image is touched."""
    seed, frac, sev = _check_seed(seed), _check_fraction(clean_fraction), _check_severities(severities)
    rng = np.random.default_rng([seed, VERSION, 0])
    n_clean = int(round(frac * n))
    perm = rng.permutation(n)
    dirty = np.sort(perm[n_clean:])
    m = len(dirty)
    corruption = np.full(n, -1, dtype=np.int64)
    severity = np.zeros(n, dtype=np.int64)
    corruption[dirty] = rng.permutation(np.arange(m) % len(CORRUPTIONS))
    severity[dirty] = np.asarray(sev, dtype=np.int64)[rng.permutation(np.arange(m) % len(sev))]
    return corruption, severity


def corrupt(x: np.ndarray, seed: int, *, clean_fraction: float = 0.2, severities=SEVERITIES
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Corrupt uint8 images ``x`` [N, 28, 28] (or [N, 1, 28, 28]): returns ``(images, corruption, severity)``,
    images uint8 of ``x``'s shape, corruption index per sample (-1 = clean, else position in
    :data:`CORRUPTIONS`), severity per sample (0 = clean, else 1..5). Clean samples are ``x`` unchanged. The
    same ``x`` and ``seed`` give byte-identical output (the draw depends on N: a subset is drawn anew)."""
    arr = np.asarray(x)
    if arr.dtype != np.uint8 or arr.shape[-2:] != (IMAGE_H, IMAGE_W) or arr.ndim not in (3, 4) \
            or (arr.ndim == 4 and arr.shape[1] != 1):
        raise ValueError(f"x must be uint8 images [N, 28, 28] or [N, 1, 28, 28], got {arr.dtype} {arr.shape}; "
                         f"convert with x.reshape(-1, 28, 28).astype(np.uint8)")
    seed = _check_seed(seed)
    imgs = arr.reshape(-1, IMAGE_H, IMAGE_W)
    corruption, severity = assignment(len(imgs), seed, clean_fraction=clean_fraction, severities=severities)
    out = imgs.copy()
    for k, fn in enumerate(CORRUPTIONS.values()):
        for s in np.unique(severity[corruption == k]):
            idx = np.flatnonzero((corruption == k) & (severity == s))
            out[idx] = fn(imgs[idx], int(s), np.random.default_rng([seed, VERSION, 1, k, int(s)]))
    return out.reshape(arr.shape), corruption, severity


# ----------------------------------------------------------------------------- the cached dataset
_WARNED: set[str] = set()


def cache_path(root: str | os.PathLike, seed: int, clean_fraction: float) -> Path:
    return Path(root) / "mnist5k-c" / f"v{VERSION}-seed{int(seed)}-clean{float(clean_fraction)}.npz"


def _compute(seed: int, clean_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All 5,000 MNIST-5k digits corrupted: x uint8 [5000, 28, 28], corruption, severity [5000]."""
    X, _ = mnist5k_arrays()
    return corrupt(X.reshape(-1, IMAGE_H, IMAGE_W), seed, clean_fraction=clean_fraction)


def content_hash(x: np.ndarray, corruption: np.ndarray, severity: np.ndarray) -> str:
    """SHA-256 (hex) of the three arrays: dtype, shape and bytes of each, in order."""
    h = hashlib.sha256()
    for a in (x, corruption, severity):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _read_cache(p: Path, seed: int, clean_fraction: float
                ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray] | None, str]:
    """``(arrays, "")`` if the file is whole, its arrays match the SHA-256 stored with them, and they match what
    would be computed (shapes, dtypes, the assignment and the clean images); ``(None, why)`` otherwise."""
    X, _ = mnist5k_arrays()
    n = len(X)
    try:
        with np.load(p, allow_pickle=False) as f:
            x, corruption, severity = f["x"], f["corruption"], f["severity"]
            stored = str(f["sha256"][()]) if "sha256" in f.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        return None, f"cannot be read ({type(e).__name__}: damaged or cut short)"
    if x.dtype != np.uint8 or x.shape != (n, IMAGE_H, IMAGE_W) or corruption.shape != (n,) or severity.shape != (n,) \
            or corruption.dtype != np.int64 or severity.dtype != np.int64:
        return None, "holds arrays of the wrong shape or type"
    if stored is None:
        return None, "carries no content hash (written by an older branchy)"
    if content_hash(x, corruption, severity) != stored:
        return None, "does not match the SHA-256 stored with it (its images were altered or damaged)"
    want_c, want_s = assignment(n, seed, clean_fraction=clean_fraction)
    clean = want_c < 0
    if not (np.array_equal(corruption, want_c) and np.array_equal(severity, want_s)
            and np.array_equal(x[clean], X.reshape(-1, IMAGE_H, IMAGE_W)[clean])):
        return None, f"does not hold what seed {seed} and clean_fraction {clean_fraction} draw"
    return (x, corruption, severity), ""


def _write_cache(p: Path, x: np.ndarray, corruption: np.ndarray, severity: np.ndarray) -> None:
    """Write atomically, the arrays' SHA-256 inside: a temporary file in the same folder, then ``os.replace``."""
    from ..core import atomic_path

    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp, open(tmp, "xb") as fh:
        np.savez(fh, x=x, corruption=corruption, severity=severity,
                 sha256=np.array(content_hash(x, corruption, severity)))


def load_corrupted(*, root: str | os.PathLike = "data", seed: int = 0, clean_fraction: float = 0.2
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 5,000 corrupted digits (x uint8 [5000, 28, 28], corruption, severity), in MNIST-5k order: read from
    the cache under ``root`` when it is whole and matches its SHA-256, else computed and cached (a cache that
    is there but refused warns, saying why). An unwritable ``root`` warns once and keeps the result in memory
    only."""
    seed, clean_fraction = _check_seed(seed), _check_fraction(clean_fraction)
    p = cache_path(root, seed, clean_fraction)
    if p.is_file():
        got, why = _read_cache(p, seed, clean_fraction)
        if got is not None:
            return got
        warnings.warn(f"mnist5k-c: the cached file {p} {why}; recomputing it", UserWarning, stacklevel=2)
    x, corruption, severity = _compute(seed, clean_fraction)
    try:
        _write_cache(p, x, corruption, severity)
    except OSError as e:
        key = str(p.parent)
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(f"mnist5k-c: cannot cache under {key} ({type(e).__name__}: {e}); computing in memory "
                          f"each time. Pass a writable root (CLI: --data-root) to cache it", UserWarning,
                          stacklevel=3)
    return x, corruption, severity


@register_dataset("mnist5k-c", doc="MNIST-5k with MNIST-C style corruptions (17 kinds, severity 1..5, 20% clean), "
                                   "computed at load and cached under root: 3000/1000/1000")
def mnist5k_c(*, root: str | os.PathLike = "data", seed: int = 0, sizes: tuple[int, int, int] = (3000, 1000, 1000),
              clean_fraction: float = 0.2) -> Splits:
    """MNIST-5k's splits for ``seed`` (same samples and labels as ``mnist5k``) with corrupted pixels; per-sample
    corruption and severity in :func:`corruption_table`."""
    seed, clean_fraction = _check_seed(seed), _check_fraction(clean_fraction)
    _, y = mnist5k_arrays()
    sizes = _check_sizes(sizes, len(y))
    xc, _, _ = load_corrupted(root=root, seed=seed, clean_fraction=clean_fraction)
    x = torch.from_numpy(xc.reshape(-1, 1, IMAGE_H, IMAGE_W).copy())
    yt = torch.from_numpy(y.copy())
    idx = stratified_split(y, sizes, seed)
    parts = {s: (x[i], yt[i]) for s, i in zip(SPLITS, idx)}
    return build_splits("mnist5k-c", 10, parts, mean=(0.1307,), std=(0.3081,))


def corruption_table(seed: int = 0, clean_fraction: float = 0.2, sizes=(3000, 1000, 1000)):
    """One row per sample of ``mnist5k-c``'s splits, in the splits' order: ``split``, ``index`` (position in
    the split), ``corruption`` (name, ``clean``), ``severity`` (0 clean, 1..5), ``label``, ``source`` (row of
    MNIST-5k). Computed from the seed alone (no images, no disk)."""
    import pandas as pd

    seed, clean_fraction = _check_seed(seed), _check_fraction(clean_fraction)
    _, y = mnist5k_arrays()
    sizes = _check_sizes(sizes, len(y))
    corruption, severity = assignment(len(y), seed, clean_fraction=clean_fraction)
    names = np.array([*CORRUPTIONS, CLEAN])  # index -1 reads the last: clean
    frames = [pd.DataFrame({"split": s, "index": np.arange(len(i)), "corruption": names[corruption[i]],
                            "severity": severity[i], "label": y[i], "source": i})
              for s, i in zip(SPLITS, stratified_split(y, sizes, seed))]
    return pd.concat(frames, ignore_index=True)


__all__ = ["CORRUPTIONS", "SEVERITIES", "VERSION", "assignment", "cache_path", "content_hash", "corrupt",
           "corruption_table", "load_corrupted", "mnist5k_c"]
