"""MNIST-5k corrupted in the style of MNIST-C, so that early exits see a mix of easy and hard samples.

Reference: N. Mu and J. Gilmer (2019), "MNIST-C: A Robustness Benchmark for Computer Vision",
arXiv:1906.02337. The corruptions here are short numpy/scipy re-implementations in that spirit (not the
paper's exact code or parameters), each with five severities.

Units: images are uint8 0..255, ``[N, 28, 28]`` (``[N, 1, 28, 28]`` also accepted by :func:`corrupt`);
severity is an integer 1 (mild) .. 5 (strong); 0 marks a clean sample. Corruption index ``-1`` is clean,
otherwise the position in :data:`CORRUPTIONS`. Distances are in pixels, angles in degrees.

The dataset ``mnist5k-c`` (registered on import) corrupts all 5,000 MNIST-5k digits at load time (nothing is
stored in the repository), caches them under ``root/mnist5k-c/``, and splits them exactly as ``mnist5k`` does
for the same seed: same samples, same labels, only the pixels differ.
"""
from __future__ import annotations

import os
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import ndimage

from .loaders import _mnist5k_arrays
from .splits import SPLITS, Splits, _make_splits, _stratified_split, register_dataset

VERSION = 1  # bump whenever a corruption or the assignment changes: old caches are then ignored
SEVERITIES = (1, 2, 3, 4, 5)
_H = _W = 28
_C = (_H - 1) / 2  # image centre, pixels


# ----------------------------------------------------------------------------- helpers (float images in [0, 1])
def _f(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) / 255.0


def _u8(f: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8)


def _pick(table, severity: int):
    return table[int(severity) - 1]


def _signs(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice((-1.0, 1.0), size=n)


def _warp(f: np.ndarray, a: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
    """Bilinear warp of every image: output pixel p (centred, row/col) reads input ``a[n] @ p + t[n]``.
    ``a`` [N, 2, 2], ``t`` [N, 2] in pixels; outside the image reads 0."""
    n = len(f)
    r, c = np.meshgrid(np.arange(_H) - _C, np.arange(_W) - _C, indexing="ij")
    p = np.stack([r, c])  # [2, H, W]
    src = np.einsum("nij,jhw->nihw", a, p) + _C
    if t is not None:
        src = src + t[:, :, None, None]
    idx = np.broadcast_to(np.arange(n, dtype=np.float64)[:, None, None], (n, _H, _W))
    coords = np.stack([idx, src[:, 0], src[:, 1]])
    return ndimage.map_coordinates(f, coords, order=1, mode="constant", cval=0.0)


def _eye(n: int) -> np.ndarray:
    return np.broadcast_to(np.eye(2), (n, 2, 2)).copy()


def _blur(f: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(f, sigma=(0, sigma, sigma), mode="constant")


def _draw(f: np.ndarray, pts: np.ndarray, value: float = 1.0) -> np.ndarray:
    """Paint points ``pts`` [N, P, 2] (row, col, pixels) with ``value`` (brightest wins); off-image ones skipped."""
    out = f.copy()
    rc = np.rint(pts).astype(np.int64)
    ok = (rc[..., 0] >= 0) & (rc[..., 0] < _H) & (rc[..., 1] >= 0) & (rc[..., 1] < _W)
    n = np.broadcast_to(np.arange(len(f))[:, None], ok.shape)
    n, r, c = n[ok], rc[..., 0][ok], rc[..., 1][ok]
    out[n, r, c] = np.maximum(out[n, r, c], value)
    return out


def _polyline(v: np.ndarray, step: float = 0.25) -> np.ndarray:
    """Points every ``step`` of a segment length along polylines ``v`` [N, L, V, 2] -> [N, L*(V-1)*K, 2]."""
    k = int(round(1 / step * 40))  # a segment is at most ~40 px across the image
    t = np.linspace(0.0, 1.0, k)[:, None]
    a, b = v[:, :, :-1, None, :], v[:, :, 1:, None, :]
    return (a + t * (b - a)).reshape(len(v), -1, 2)


# ----------------------------------------------------------------------------- the corruptions
def shot_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson photon noise: ``lam`` photons at full intensity (fewer = noisier)."""
    lam = _pick((60, 25, 12, 5, 3), severity)
    return _u8(rng.poisson(_f(x) * lam) / lam)


def impulse_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt-and-pepper: a fraction of pixels set to 0 or 255."""
    amount = _pick((0.03, 0.06, 0.10, 0.17, 0.27), severity)
    f = _f(x)
    hit = rng.random(f.shape) < amount
    return _u8(np.where(hit, (rng.random(f.shape) < 0.5).astype(np.float64), f))


def gaussian_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur of standard deviation sigma (pixels)."""
    return _u8(_blur(_f(x), _pick((0.6, 1.0, 1.4, 1.9, 2.5), severity)))


def glass_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blur, then every pixel replaced by a random neighbour up to ``delta`` pixels away, then blur again."""
    sigma, delta = _pick(((0.4, 1), (0.6, 1), (0.7, 2), (0.9, 2), (1.1, 3)), severity)
    f = _blur(_f(x), sigma)
    n = len(f)
    d = rng.integers(-delta, delta + 1, size=(2, n, _H, _W))
    r = np.clip(np.arange(_H)[None, :, None] + d[0], 0, _H - 1)
    c = np.clip(np.arange(_W)[None, None, :] + d[1], 0, _W - 1)
    f = f[np.arange(n)[:, None, None], r, c]
    return _u8(_blur(f, sigma / 2))


def motion_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Mean of the image shifted along a random direction over ``length`` pixels."""
    length = _pick((3, 5, 7, 9, 11), severity)
    f = _f(x)
    ang = rng.uniform(0, np.pi, len(f))
    u = np.stack([np.sin(ang), np.cos(ang)], 1)
    a = _eye(len(f))
    acc = sum(_warp(f, a, k * u) for k in np.arange(length) - (length - 1) / 2)
    return _u8(acc / length)


def shear(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Horizontal shear by a factor ``s`` (random sign, +-10 % jitter)."""
    s = _pick((0.2, 0.4, 0.6, 0.8, 1.0), severity)
    n = len(x)
    a = _eye(n)
    a[:, 1, 0] = s * _signs(rng, n) * rng.uniform(0.9, 1.1, n)
    return _u8(_warp(_f(x), a))


def scale(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Zoom out about the centre by a factor (0.9 .. 0.45, +-5 % jitter)."""
    z = _pick((0.9, 0.8, 0.7, 0.58, 0.45), severity)
    n = len(x)
    a = _eye(n) / (z * rng.uniform(0.95, 1.05, n))[:, None, None]
    return _u8(_warp(_f(x), a))


def rotate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Rotation about the centre by an angle in degrees (random sign, +-10 % jitter)."""
    deg = _pick((10, 20, 30, 40, 50), severity)
    n = len(x)
    th = np.deg2rad(deg * _signs(rng, n) * rng.uniform(0.9, 1.1, n))
    co, si = np.cos(th), np.sin(th)
    a = np.stack([np.stack([co, -si], 1), np.stack([si, co], 1)], 1)
    return _u8(_warp(_f(x), a))


def translate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Shift by ``d`` pixels (rounded to whole pixels) in a random direction."""
    d = _pick((2, 3, 4, 5, 6), severity)
    n = len(x)
    ang = rng.uniform(0, 2 * np.pi, n)
    t = np.rint(d * np.stack([np.sin(ang), np.cos(ang)], 1))
    return _u8(_warp(_f(x), _eye(n), t))


def brightness(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add a constant (fraction of full scale) to every pixel, clipped at 255."""
    return _u8(_f(x) + _pick((0.1, 0.2, 0.3, 0.4, 0.5), severity))


def contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Pull every pixel towards the image mean: contrast kept at a factor 0.6 .. 0.1."""
    c = _pick((0.6, 0.45, 0.3, 0.2, 0.1), severity)
    f = _f(x)
    m = f.mean(axis=(1, 2), keepdims=True)
    return _u8((f - m) * c + m)


def fog(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add a smooth random haze of strength ``a`` and rescale: ``(x + a * haze) / (1 + a)``."""
    a = _pick((0.3, 0.5, 0.8, 1.1, 1.5), severity)
    n = len(x)
    haze = _blur(rng.normal(size=(n, _H, _W)), 3.0)
    lo, hi = haze.min(axis=(1, 2), keepdims=True), haze.max(axis=(1, 2), keepdims=True)
    haze = (haze - lo) / np.maximum(hi - lo, 1e-12)
    return _u8((_f(x) + a * haze) / (1 + a))


def spatter(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """White blobs (thresholded smooth noise) covering a fraction of the image."""
    cover = _pick((0.03, 0.06, 0.10, 0.15, 0.21), severity)
    n = len(x)
    blobs = _blur(rng.normal(size=(n, _H, _W)), 1.2)
    thr = np.quantile(blobs.reshape(n, -1), 1 - cover, axis=1)[:, None, None]
    return _u8(np.maximum(_f(x), (blobs > thr).astype(np.float64)))


def stripe(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A vertical band ``w`` pixels wide, at a random column in the middle half, inverted."""
    w = _pick((2, 4, 6, 8, 10), severity)
    n = len(x)
    left = rng.integers(_W // 4 - w // 2, 3 * _W // 4 - w // 2 + 1, n)
    cols = np.arange(_W)[None, :]
    band = ((cols >= left[:, None]) & (cols < left[:, None] + w))[:, None, :]
    f = _f(x)
    return _u8(np.where(band, 1.0 - f, f))


def zigzag(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` random zigzag lines (polylines of 5 vertices) drawn in white over the digit."""
    k = _pick((1, 2, 3, 4, 5), severity)
    n = len(x)
    start = rng.uniform(2, _H - 3, size=(n, k, 1, 2))
    steps = rng.normal(0, 6.0, size=(n, k, 4, 2))
    v = np.clip(np.concatenate([start, start + np.cumsum(steps, axis=2)], axis=2), 0, _H - 1)
    return _u8(_draw(_f(x), _polyline(v)))


def dotted_line(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` straight lines across the image, drawn as white dots every 2 pixels."""
    k = _pick((1, 2, 3, 4, 5), severity)
    n = len(x)
    a = rng.uniform(0, _H - 1, size=(n, k, 2))
    b = rng.uniform(0, _H - 1, size=(n, k, 2))
    t = np.arange(0, 1, 1 / 20)[None, None, :, None]  # 20 dots; lines ~10..38 px long
    length = np.linalg.norm(b - a, axis=-1)[..., None, None]
    pts = a[:, :, None, :] + np.minimum(t * 40, length) / np.maximum(length, 1e-9) * (b - a)[:, :, None, :]
    return _u8(_draw(_f(x), pts.reshape(n, -1, 2)))


def canny_edges(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Canny-like edge map (Sobel magnitude of the blurred digit, thresholded) blended in with weight ``w``."""
    w = _pick((0.2, 0.4, 0.6, 0.8, 1.0), severity)
    f = _f(x)
    g = _blur(f, 0.7)
    mag = np.hypot(ndimage.sobel(g, axis=1), ndimage.sobel(g, axis=2))
    mag = mag / np.maximum(mag.max(axis=(1, 2), keepdims=True), 1e-12)
    return _u8((1 - w) * f + w * (mag > 0.3))


Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
CORRUPTIONS: dict[str, Corruption] = {
    fn.__name__: fn
    for fn in (shot_noise, impulse_noise, gaussian_blur, glass_blur, motion_blur, shear, scale, rotate,
               translate, brightness, contrast, fog, spatter, stripe, zigzag, dotted_line, canny_edges)
}
CLEAN = "clean"


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
    if arr.dtype != np.uint8 or arr.shape[-2:] != (_H, _W) or arr.ndim not in (3, 4) \
            or (arr.ndim == 4 and arr.shape[1] != 1):
        raise ValueError(f"x must be uint8 images [N, 28, 28] or [N, 1, 28, 28], got {arr.dtype} {arr.shape}; "
                         f"convert with x.reshape(-1, 28, 28).astype(np.uint8)")
    seed = _check_seed(seed)
    imgs = arr.reshape(-1, _H, _W)
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
    X, _ = _mnist5k_arrays()
    return corrupt(X.reshape(-1, _H, _W), seed, clean_fraction=clean_fraction)


def _read_cache(p: Path, seed: int, clean_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The cached arrays if the file is whole and matches what would be computed (shapes, dtypes, the assignment
    and the clean images); None otherwise."""
    X, _ = _mnist5k_arrays()
    n = len(X)
    try:
        with np.load(p, allow_pickle=False) as f:
            x, corruption, severity = f["x"], f["corruption"], f["severity"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    if x.dtype != np.uint8 or x.shape != (n, _H, _W) or corruption.shape != (n,) or severity.shape != (n,) \
            or corruption.dtype != np.int64 or severity.dtype != np.int64:
        return None
    want_c, want_s = assignment(n, seed, clean_fraction=clean_fraction)
    clean = want_c < 0
    if not (np.array_equal(corruption, want_c) and np.array_equal(severity, want_s)
            and np.array_equal(x[clean], X.reshape(-1, _H, _W)[clean])):
        return None
    return x, corruption, severity


def _write_cache(p: Path, x: np.ndarray, corruption: np.ndarray, severity: np.ndarray) -> None:
    """Write atomically: a temporary file in the same folder, then ``os.replace``."""
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=p.stem + ".", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, x=x, corruption=corruption, severity=severity)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_corrupted(*, root: str | os.PathLike = "data", seed: int = 0, clean_fraction: float = 0.2
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 5,000 corrupted digits (x uint8 [5000, 28, 28], corruption, severity), in MNIST-5k order: read from
    the cache under ``root`` when it is whole, else computed and cached. An unwritable ``root`` warns once and
    keeps the result in memory only."""
    seed, clean_fraction = _check_seed(seed), _check_fraction(clean_fraction)
    p = cache_path(root, seed, clean_fraction)
    if p.is_file():
        got = _read_cache(p, seed, clean_fraction)
        if got is not None:
            return got
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
def mnist5k_c(*, root: str = "data", seed: int = 0, sizes=(3000, 1000, 1000), clean_fraction: float = 0.2) -> Splits:
    """MNIST-5k's splits for ``seed`` (same samples and labels as ``mnist5k``) with corrupted pixels; per-sample
    corruption and severity in :func:`corruption_table`."""
    seed, clean_fraction = _check_seed(seed), _check_fraction(clean_fraction)
    _, y = _mnist5k_arrays()
    sizes = _check_sizes(sizes, len(y))
    xc, _, _ = load_corrupted(root=root, seed=seed, clean_fraction=clean_fraction)
    x = torch.from_numpy(xc.reshape(-1, 1, _H, _W).copy())
    yt = torch.from_numpy(y.copy())
    idx = _stratified_split(y, sizes, seed)
    parts = {s: (x[i], yt[i]) for s, i in zip(SPLITS, idx)}
    return _make_splits("mnist5k-c", 10, parts, mean=(0.1307,), std=(0.3081,))


def corruption_table(seed: int = 0, clean_fraction: float = 0.2, sizes=(3000, 1000, 1000)):
    """One row per sample of ``mnist5k-c``'s splits, in the splits' order: ``split``, ``index`` (position in
    the split), ``corruption`` (name, ``clean``), ``severity`` (0 clean, 1..5), ``label``, ``source`` (row of
    MNIST-5k). Computed from the seed alone (no images, no disk)."""
    import pandas as pd

    seed, clean_fraction = _check_seed(seed), _check_fraction(clean_fraction)
    _, y = _mnist5k_arrays()
    sizes = _check_sizes(sizes, len(y))
    corruption, severity = assignment(len(y), seed, clean_fraction=clean_fraction)
    names = np.array([*CORRUPTIONS, CLEAN])  # index -1 reads the last: clean
    frames = [pd.DataFrame({"split": s, "index": np.arange(len(i)), "corruption": names[corruption[i]],
                            "severity": severity[i], "label": y[i], "source": i})
              for s, i in zip(SPLITS, _stratified_split(y, sizes, seed))]
    return pd.concat(frames, ignore_index=True)


__all__ = ["CORRUPTIONS", "SEVERITIES", "VERSION", "assignment", "cache_path", "corrupt", "corruption_table",
           "load_corrupted", "mnist5k_c", *CORRUPTIONS]
