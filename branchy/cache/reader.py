"""Reading a feature cache (numpy + pandas only): docs/semantics.md §3.2.

Layout of a cache directory::

    manifest.json          written last; a directory without it is not a cache
    costs.csv              per-segment costs (see branchy.runtime.profile)
    {split}/labels.npy     [N] int64
    {split}/logits.npy     [N, K, C] float32
    {split}/feat_{k}.npy   [N, D_k] pooled branch-point features (float16 by default)

The manifest's ``files`` maps every data and costs file to ``{"size": bytes, "sha256": hex}`` (schema 2;
schema-1 caches hold sizes only). :meth:`FeatureCache.open` checks sizes; ``verify=True`` checks hashes.

The module is a little over 300 lines on purpose: it is the one class a user of the cache meets, with the
manifest checks it runs on open; the file helpers live in :mod:`branchy.cache.files`.
"""
from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import check_version, read_json_object
from ..exits import all_confidences, entropy
from .files import file_sha256

SCHEMA_VERSION = 2  # 2: ``files`` entries carry a sha256 (1: sizes only; still read)
MANIFEST = "manifest.json"
REQUIRED = ("schema_version", "model", "dataset", "splits", "num_exits", "num_classes", "pooling", "files")


class CacheError(ValueError):
    """A directory that is not a (complete, current, matching) feature cache."""


def _size(entry) -> int | None:
    """The size a ``files`` entry records (schema 1: the int itself)."""
    return entry.get("size") if isinstance(entry, dict) else entry


def _fix(p: Path, manifest: dict | None = None) -> str:
    """How to rebuild the cache at ``p``."""
    model = manifest.get("model") if isinstance(manifest, dict) else None
    ckpt = model.get("checkpoint") if isinstance(model, dict) else None
    return f"redump it: `branchy dump --checkpoint {ckpt or 'CKPT'} --out {p} --overwrite`"


def _interrupted_hint(p: Path) -> str:
    """What an interrupted dump left next to the missing cache ``p``, if anything."""
    if Path(str(p) + ".old").is_dir():
        return (f" (an interrupted --overwrite left {p}.old: run the dump again, which completes or rolls back the "
                f"swap, or rename {p}.old back)")
    if any(p.parent.glob(p.name + ".partial*")):
        return " (a .partial folder is there: a dump is running, or an interrupted dump left it: run the dump again)"
    return ""


def _read_manifest(p: Path) -> dict:
    """Parse and shape-check ``p/manifest.json``; :class:`CacheError` naming the file and the fix."""
    mf = p / MANIFEST
    if not mf.is_file():
        raise CacheError(f"{p} is not a feature cache: it has no {MANIFEST} (incomplete or interrupted "
                         f"dump?); run `branchy dump ... --out {p} --overwrite`")
    manifest = read_json_object(mf, what="a cache manifest", fix=_fix(p), error=CacheError)
    check_version(str(mf), "cache schema", manifest.get("schema_version"), reads=range(1, SCHEMA_VERSION + 1),
                  fix=_fix(p, manifest), error=CacheError)
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise CacheError(f"{mf} is missing keys {', '.join(missing)}: not a complete cache manifest; "
                         f"{_fix(p, manifest)}")
    bad = [k for k in ("model", "dataset", "splits", "files") if not isinstance(manifest[k], dict)]
    bad += [f"{k}.{f}" for k in ("model", "dataset") if k not in bad for f in ("name", "fingerprint")
            if f not in manifest[k]]
    if bad:
        raise CacheError(f"{mf} has malformed entries {', '.join(bad)}: not a complete cache manifest; "
                         f"{_fix(p, manifest)}")
    return manifest


AUTO_VERIFY_BYTES = 64 * 2**20  # caches up to this size are hashed in full on every open (about 0.1 s)


class FeatureCache:
    """A dumped, frozen branchy net on disk. Open with :meth:`open`."""

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = path
        self.manifest = manifest
        self.verified = False  # whether every file's SHA-256 was checked when it was opened

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike, *, model=None, dataset=None, verify: bool | None = None) -> "FeatureCache":
        """Open and validate a cache (manifest shape, every file's size); with ``model`` (a BranchyNet) or
        ``dataset`` (Splits) also check that the cache was made from them (fingerprints) and refuse a stale
        one. ``verify=True`` also checks every file's SHA-256 (reads the whole cache; see :meth:`verify`);
        ``None`` (default) does so when the cache records hashes and holds at most :data:`AUTO_VERIFY_BYTES`
        (tens of ms), so a same-size damaged file of a small cache is caught on open; a larger one gets sizes
        only (``verified`` says which; CLI: ``--verify``); ``False``: sizes only."""
        p = Path(path)
        if not p.is_dir():
            raise CacheError(f"no feature cache at {str(p)!r}{_interrupted_hint(p)}; make one with `branchy dump`")
        manifest = _read_manifest(p)
        for rel, entry in manifest["files"].items():
            f = p / rel
            new = p / (rel + ".new")  # a cost table `branchy profile` was committing when it was killed
            if new.is_file() and new.stat().st_size == _size(entry) and \
                    (not isinstance(entry, dict) or file_sha256(new) == entry.get("sha256")):
                raise CacheError(f"{p}: a re-profile was interrupted while committing {rel} (the manifest names "
                                 f"{rel}.new): run `branchy profile --cache {p}` again, which completes it first")
            if not f.is_file() or f.stat().st_size != _size(entry):
                raise CacheError(f"{p} is incomplete: {rel} is missing or has the wrong size; {_fix(p, manifest)}")
        cache = cls(p, manifest)
        if verify is None:
            files = manifest["files"].values()
            verify = all(isinstance(e, dict) and e.get("sha256") for e in files) and \
                sum(_size(e) for e in files) <= AUTO_VERIFY_BYTES
        if verify:
            cache.verify()
        cache.verified = bool(verify)
        cache.check(model=model, dataset=dataset)
        return cache

    def verify(self) -> int:
        """Check every file against the SHA-256 the manifest records; return how many were checked.
        Raises :class:`CacheError` naming the corrupt files, or saying the cache records no hashes."""
        files = self.manifest["files"]
        unhashed = [rel for rel, e in files.items() if not (isinstance(e, dict) and e.get("sha256"))]
        if unhashed:
            which = "hashes" if len(unhashed) == len(files) else f"for {', '.join(unhashed)}"
            raise CacheError(f"{self.path} records no SHA-256 {which} (written before caches carried them): it "
                             f"cannot be verified; {_fix(self.path, self.manifest)}")
        bad = [rel for rel, e in files.items()
               if not (self.path / rel).is_file() or file_sha256(self.path / rel) != e["sha256"]]
        if bad:
            raise CacheError(f"{self.path} is corrupt: {', '.join(bad)} "
                             f"{'does' if len(bad) == 1 else 'do'} not match the SHA-256 in its manifest "
                             f"(disk error or modified file); {_fix(self.path, self.manifest)}")
        return len(files)

    def check(self, *, model=None, dataset=None) -> None:
        """Raise :class:`CacheError` naming what differs when ``model`` / ``dataset`` is not the one dumped."""
        m = self.manifest
        if model is not None:
            fp = model.fingerprint()
            if fp != m["model"]["fingerprint"]:
                raise CacheError(f"stale cache {self.path}: it was dumped from {m['model']['name']} weights "
                                 f"{m['model']['fingerprint']}, the model given has weights {fp}; "
                                 f"re-run `branchy dump --overwrite`")
        if dataset is not None:
            fp = dataset if isinstance(dataset, str) else dataset.fingerprint()
            if fp != m["dataset"]["fingerprint"]:
                raise CacheError(f"stale cache {self.path}: it was dumped from dataset {m['dataset']['name']} "
                                 f"with fingerprint {m['dataset']['fingerprint']}, the data given has {fp}; "
                                 f"re-run `branchy dump --overwrite`")

    # ------------------------------------------------------------------ contents
    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    @property
    def num_exits(self) -> int:
        return int(self.manifest["num_exits"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def chain(self) -> str:
        """How the exits are chained: ``none`` (independent heads), or ``boost`` / ``cascade`` /
        ``ensemble`` / ``cascade+ensemble`` (BoostNet, Zero Time Waste): exit k's logits were computed with
        every earlier head run, so a policy must charge those heads and cannot skip them."""
        if self.manifest.get("chain"):
            return str(self.manifest["chain"])
        cfg = (self.manifest.get("model") or {}).get("config") or {}
        parts = [c for c in (cfg.get("chain", "none"),) if c != "none"] + (["ensemble"] if cfg.get("ensemble") else [])
        return "+".join(parts) or "none"

    @property
    def chained(self) -> bool:
        return self.chain != "none"

    @property
    def fingerprint(self) -> str:
        """Identity of the cache: model weights, data and pooling."""
        m = self.manifest
        key = f"{m['model']['fingerprint']}|{m['dataset']['fingerprint']}|{m['pooling']}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def size(self, split: str) -> int:
        return int(self.manifest["splits"][self._split(split)])

    def _split(self, split: str) -> str:
        if split not in self.manifest["splits"]:
            raise KeyError(f"cache {self.path} has no split {split!r}; it has {', '.join(self.splits)}")
        return split

    def _npy(self, split: str, name: str, mmap: bool) -> np.ndarray:
        """Load ``split/name`` (never as pickle); a damaged file is a :class:`CacheError` naming it."""
        f = self.path / self._split(split) / name
        try:
            a = np.load(f, mmap_mode="r" if mmap else None, allow_pickle=False)
        except Exception as e:  # numpy raises ValueError, EOFError, OSError, tokenize errors on garbage
            raise CacheError(f"{f} is not a readable .npy array ({type(e).__name__}): the cache is corrupt; "
                             f"{_fix(self.path, self.manifest)}") from None
        if a.ndim < 1 or len(a) != self.size(split):
            raise CacheError(f"{f} holds {a.shape[0] if a.ndim else 0} rows, the manifest says {self.size(split)}: "
                             f"the cache is corrupt; {_fix(self.path, self.manifest)}")
        return a

    def rows(self, split: str, name: str, rows: slice) -> np.ndarray:
        """Rows ``rows`` (a slice, step 1) of ``split/name`` read from the file into memory, no memory map kept: a
        chunk of a split larger than memory, with nothing of the rest resident (the page cache's pages are
        never mapped into the process)."""
        m = self._npy(split, name, mmap=True)  # checked; maps the file without touching its pages
        start, stop, step = rows.indices(len(m))
        if step != 1:
            raise ValueError(f"rows must be a contiguous slice, got step {step}")
        if not m.flags.c_contiguous:  # a Fortran-ordered file: its rows are not contiguous on disk
            return np.array(m[start:stop])
        shape, dtype, offset = m.shape, m.dtype, m.offset
        del m
        row = int(np.prod(shape[1:], dtype=np.int64))
        n = max(stop - start, 0)
        out = np.fromfile(self.path / split / name, dtype=dtype, count=n * row,
                          offset=offset + start * row * dtype.itemsize)
        if out.size != n * row:
            raise CacheError(f"{self.path / split / name} is shorter than its header says: the cache is corrupt; "
                             f"{_fix(self.path, self.manifest)}")
        return out.reshape((n, *shape[1:]))

    def labels(self, split: str, *, rows: slice | None = None) -> np.ndarray:
        """``[N]`` int64 class labels (``rows``: only that slice, see :meth:`rows`)."""
        return self._npy(split, "labels.npy", False) if rows is None else self.rows(split, "labels.npy", rows)

    def logits(self, split: str, *, mmap: bool = True, rows: slice | None = None) -> np.ndarray:
        """``[N, K, C]`` float32 (memory-mapped unless ``mmap=False``; ``rows``: only that slice, read)."""
        return self._npy(split, "logits.npy", mmap) if rows is None else self.rows(split, "logits.npy", rows)

    def features(self, split: str, k: int, *, mmap: bool = True, rows: slice | None = None) -> np.ndarray:
        """Pooled features at branch point ``k`` (0-based), ``[N, D_k]``, memory-mapped (``rows``: only that
        slice, read)."""
        if not 0 <= k < self.num_exits:
            raise IndexError(f"exit {k} out of range: the cache has exits 0..{self.num_exits - 1}")
        name = f"feat_{k}.npy"
        return self._npy(split, name, mmap) if rows is None else self.rows(split, name, rows)

    @cached_property
    def costs(self) -> pd.DataFrame:
        """Per-segment cost table (units: MACs per sample, bytes, ms)."""
        return pd.read_csv(self.path / "costs.csv")

    @property
    def backends(self) -> list[str]:
        """Backends whose measured costs the cache holds (``eager``: ``costs.csv``)."""
        return ["eager"] + sorted((self.manifest.get("backends") or {}))

    def costs_for(self, backend: str = "eager") -> pd.DataFrame:
        """The cost table measured on ``backend`` (``branchy profile --backend``)."""
        if backend == "eager":
            return self.costs
        entry = (self.manifest.get("backends") or {}).get(backend)
        if entry is None:
            raise CacheError(f"{self.path} holds no costs measured on {backend!r} (it has: "
                             f"{', '.join(self.backends)}); measure them with `branchy profile --cache {self.path} "
                             f"--backend {backend}`")
        return pd.read_csv(self.path / entry["costs"])

    def cost_vector(self, segment: str, column: str, backend: str = "eager") -> np.ndarray:
        """``[K]`` values of ``column`` for ``segment`` rows (stage / exit / buffer), ordered by k."""
        c = self.costs_for(backend)
        return c[c.segment == segment].sort_values("k")[column].to_numpy(dtype=float)

    def overhead(self, backend: str = "eager") -> dict:
        """The runtime's own measured overhead on ``backend`` (``sample_ms``, ``decision_ms``; {} if none)."""
        if backend == "eager":
            return self.manifest.get("overhead") or {}
        return ((self.manifest.get("backends") or {}).get(backend) or {}).get("overhead") or {}

    def table(self, split: str) -> pd.DataFrame:
        """One row per sample and exit: label, prediction, correct, entropy (nats), norm_entropy
        (entropy / ln C), max_prob, margin."""
        z = np.asarray(self.logits(split))
        y = self.labels(split)
        n, k, _ = z.shape
        pred = z.argmax(-1)
        conf = all_confidences(z)
        return pd.DataFrame({
            "sample": np.repeat(np.arange(n), k), "exit": np.tile(np.arange(k), n),
            "label": np.repeat(y, k), "prediction": pred.ravel(), "correct": (pred == y[:, None]).ravel(),
            **{m: v.ravel() for m, v in conf.items()},
        })

    def summary(self) -> pd.DataFrame:
        """Per exit: accuracy (%) and mean entropy (nats) per split, and the cumulative cost of leaving
        there: MACs (stages 1..k + exit k, per sample) and ms at batch 1 (same path, measured)."""
        rows = {"exit": np.arange(self.num_exits)}
        for sp in self.splits:
            z = np.asarray(self.logits(sp))
            rows[f"{sp}_acc_%"] = 100 * (z.argmax(-1) == self.labels(sp)[:, None]).mean(0)
            rows[f"{sp}_entropy"] = entropy(z).mean(0)
        stage_macs, exit_macs = self.cost_vector("stage", "macs"), self.cost_vector("exit", "macs")
        rows["cum_MACs"] = np.cumsum(stage_macs) + exit_macs
        stage_ms, exit_ms = self.cost_vector("stage", "ms_b1"), self.cost_vector("exit", "ms_b1")
        rows["cum_ms_b1"] = np.cumsum(stage_ms) + exit_ms
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        m = self.manifest
        return (f"FeatureCache({str(self.path)!r}, model={m['model']['name']}, dataset={m['dataset']['name']}, "
                f"exits={self.num_exits}, splits={m['splits']})")


__all__ = ["FeatureCache", "CacheError", "MANIFEST", "SCHEMA_VERSION"]
