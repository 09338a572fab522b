"""Reading a feature cache (numpy + pandas only): DESIGN.md §3.2.

Layout of a cache directory::

    manifest.json          written last; a directory without it is not a cache
    costs.csv              per-segment costs (see branchy.profile)
    {split}/labels.npy     [N] int64
    {split}/logits.npy     [N, K, C] float32
    {split}/feat_{k}.npy   [N, D_k] pooled branch-point features (float16 by default)
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from .measures import entropy, margin, softmax

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class CacheError(ValueError):
    """A directory that is not a (complete, current, matching) feature cache."""


class FeatureCache:
    """A dumped, frozen branchy net on disk. Open with :meth:`open`."""

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = path
        self.manifest = manifest

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike, *, model=None, dataset=None) -> "FeatureCache":
        """Open and validate a cache; with ``model`` (a BranchyNet) or ``dataset`` (Splits) also check
        that the cache was made from them (fingerprints) and refuse a stale one."""
        p = Path(path)
        if not p.is_dir():
            hint = " (an interrupted dump leaves only a .partial folder: run the dump again)" \
                if Path(str(p) + ".partial").exists() else ""
            raise CacheError(f"no feature cache at {str(p)!r}{hint}; make one with `branchy dump`")
        mf = p / MANIFEST
        if not mf.is_file():
            raise CacheError(f"{p} is not a feature cache: it has no {MANIFEST} (incomplete or interrupted "
                             f"dump?); run `branchy dump ... --out {p} --overwrite`")
        try:
            manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as e:
            raise CacheError(f"{mf} is not valid JSON ({e}); re-run the dump with --overwrite") from e
        version = manifest.get("schema_version")
        if not isinstance(version, int):
            raise CacheError(f"{mf} has no schema_version: not a branchy feature cache")
        if version > SCHEMA_VERSION:
            raise CacheError(f"{p} was written with cache schema {version}, newer than this toolkit's "
                             f"{SCHEMA_VERSION}: upgrade branchy-study to read it")
        for rel, size in manifest.get("files", {}).items():
            f = p / rel
            if not f.is_file() or f.stat().st_size != size:
                raise CacheError(f"{p} is incomplete: {rel} is missing or has the wrong size; re-run the dump "
                                 f"with --overwrite")
        cache = cls(p, manifest)
        cache.check(model=model, dataset=dataset)
        return cache

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

    def labels(self, split: str) -> np.ndarray:
        return np.load(self.path / self._split(split) / "labels.npy")

    def logits(self, split: str, *, mmap: bool = True) -> np.ndarray:
        """``[N, K, C]`` float32 (memory-mapped unless ``mmap=False``)."""
        return np.load(self.path / self._split(split) / "logits.npy", mmap_mode="r" if mmap else None)

    def features(self, split: str, k: int, *, mmap: bool = True) -> np.ndarray:
        """Pooled features at branch point ``k`` (0-based), ``[N, D_k]``, memory-mapped."""
        if not 0 <= k < self.num_exits:
            raise IndexError(f"exit {k} out of range: the cache has exits 0..{self.num_exits - 1}")
        return np.load(self.path / self._split(split) / f"feat_{k}.npy", mmap_mode="r" if mmap else None)

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
        n, k, c = z.shape
        p = softmax(z)
        pred = p.argmax(-1)
        ps = np.sort(p, axis=-1)
        ent = entropy(z)
        return pd.DataFrame({
            "sample": np.repeat(np.arange(n), k), "exit": np.tile(np.arange(k), n),
            "label": np.repeat(y, k), "prediction": pred.ravel(), "correct": (pred == y[:, None]).ravel(),
            "entropy": ent.ravel(), "norm_entropy": (ent / np.log(c)).ravel(),
            "max_prob": ps[..., -1].ravel(), "margin": (ps[..., -1] - ps[..., -2]).ravel(),
        })

    def exit_accuracy(self, split: str) -> np.ndarray:
        z = self.logits(split)
        return (np.asarray(z).argmax(-1) == self.labels(split)[:, None]).mean(0)

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


__all__ = ["FeatureCache", "CacheError", "SCHEMA_VERSION", "margin"]
