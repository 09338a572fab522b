"""MNIST-C style corruptions of uint8 digit images (N. Mu and J. Gilmer (2019), "MNIST-C: A Robustness Benchmark
for Computer Vision", arXiv:1906.02337): short numpy/scipy re-implementations in that spirit (not the paper's
exact code or parameters), each ``f(x [N, 28, 28] uint8, severity 1..5, rng) -> uint8``, listed in
:data:`CORRUPTIONS`. Distances are in pixels, angles in degrees. Used by :mod:`branchy.data.mnist_c`."""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

IMAGE_H = IMAGE_W = 28
_C = (IMAGE_H - 1) / 2  # image centre, pixels


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
    r, c = np.meshgrid(np.arange(IMAGE_H) - _C, np.arange(IMAGE_W) - _C, indexing="ij")
    p = np.stack([r, c])  # [2, H, W]
    src = np.einsum("nij,jhw->nihw", a, p) + _C
    if t is not None:
        src = src + t[:, :, None, None]
    idx = np.broadcast_to(np.arange(n, dtype=np.float64)[:, None, None], (n, IMAGE_H, IMAGE_W))
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
    ok = (rc[..., 0] >= 0) & (rc[..., 0] < IMAGE_H) & (rc[..., 1] >= 0) & (rc[..., 1] < IMAGE_W)
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
    d = rng.integers(-delta, delta + 1, size=(2, n, IMAGE_H, IMAGE_W))
    r = np.clip(np.arange(IMAGE_H)[None, :, None] + d[0], 0, IMAGE_H - 1)
    c = np.clip(np.arange(IMAGE_W)[None, None, :] + d[1], 0, IMAGE_W - 1)
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
    haze = _blur(rng.normal(size=(n, IMAGE_H, IMAGE_W)), 3.0)
    lo, hi = haze.min(axis=(1, 2), keepdims=True), haze.max(axis=(1, 2), keepdims=True)
    haze = (haze - lo) / np.maximum(hi - lo, 1e-12)
    return _u8((_f(x) + a * haze) / (1 + a))


def spatter(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """White blobs (thresholded smooth noise) covering a fraction of the image."""
    cover = _pick((0.03, 0.06, 0.10, 0.15, 0.21), severity)
    n = len(x)
    blobs = _blur(rng.normal(size=(n, IMAGE_H, IMAGE_W)), 1.2)
    thr = np.quantile(blobs.reshape(n, -1), 1 - cover, axis=1)[:, None, None]
    return _u8(np.maximum(_f(x), (blobs > thr).astype(np.float64)))


def stripe(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A vertical band ``w`` pixels wide, at a random column in the middle half, inverted."""
    w = _pick((2, 4, 6, 8, 10), severity)
    n = len(x)
    left = rng.integers(IMAGE_W // 4 - w // 2, 3 * IMAGE_W // 4 - w // 2 + 1, n)
    cols = np.arange(IMAGE_W)[None, :]
    band = ((cols >= left[:, None]) & (cols < left[:, None] + w))[:, None, :]
    f = _f(x)
    return _u8(np.where(band, 1.0 - f, f))


def zigzag(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` random zigzag lines (polylines of 5 vertices) drawn in white over the digit."""
    k = _pick((1, 2, 3, 4, 5), severity)
    n = len(x)
    start = rng.uniform(2, IMAGE_H - 3, size=(n, k, 1, 2))
    steps = rng.normal(0, 6.0, size=(n, k, 4, 2))
    v = np.clip(np.concatenate([start, start + np.cumsum(steps, axis=2)], axis=2), 0, IMAGE_H - 1)
    return _u8(_draw(_f(x), _polyline(v)))


def dotted_line(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` straight lines across the image, drawn as white dots every 2 pixels."""
    k = _pick((1, 2, 3, 4, 5), severity)
    n = len(x)
    a = rng.uniform(0, IMAGE_H - 1, size=(n, k, 2))
    b = rng.uniform(0, IMAGE_H - 1, size=(n, k, 2))
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


__all__ = ["CLEAN", "CORRUPTIONS", "Corruption", "IMAGE_H", "IMAGE_W", "brightness", "canny_edges", "contrast",
           "dotted_line", "fog", "gaussian_blur", "glass_blur", "impulse_noise", "motion_blur", "rotate", "scale",
           "shear", "shot_noise", "spatter", "stripe", "translate", "zigzag"]
