"""A cache from arrays you already have (your own model's outputs, or synthetic data): checked, then written
through :mod:`branchy.cache.writer` like a dump. Arrays are read in chunks of rows (:data:`CHUNK`), so memory
maps larger than memory (``np.load(..., mmap_mode="r")``) go through with flat memory."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..core import check_writable
from ..data import SPLITS
from .files import file_entry, row_slices
from .reader import SCHEMA_VERSION, FeatureCache
from .writer import NpyWriter, finish_cache, record_files, versions, writing_target


CHUNK = 1 << 16  # rows per chunk when checking, hashing and writing


def _nonfinite(a: np.ndarray) -> int:
    """How many entries of ``a`` are NaN or infinite, a chunk of rows at a time."""
    return sum(int((~np.isfinite(np.asarray(a[sl]))).sum()) for sl in row_slices(len(a), CHUNK))


def _check_arrays(data: dict) -> tuple[int, int]:
    """Refuse ``cache_from_arrays`` input that would make a wrong cache, naming the split; return ``(K, C)``."""
    if not isinstance(data, dict):
        raise ValueError(f"cache_from_arrays wants data[split] = (labels, logits, features) for {SPLITS}, "
                         f"got {type(data).__name__}")
    missing = set(SPLITS) - set(data)
    if missing:
        raise ValueError(f"cache_from_arrays needs every split {SPLITS}; missing {sorted(missing)}")
    k = c = dims = None
    for sp in SPLITS:
        try:
            y, z, feats = data[sp]
        except (TypeError, ValueError):
            raise ValueError(f"{sp}: want a tuple (labels [N], logits [N, K, C], [features_k [N, D_k]]), got "
                             f"{type(data[sp]).__name__}") from None
        y, z = np.asarray(y), np.asarray(z)
        feats = list(feats)
        if y.ndim != 1 or z.ndim != 3 or len(z) != len(y) or len(feats) != z.shape[1]:
            raise ValueError(f"{sp}: want labels [N], logits [N, K, C] and K feature arrays; got {y.shape}, "
                             f"{z.shape}, {len(feats)} feature arrays")
        if len(y) == 0:
            raise ValueError(f"{sp}: no samples; every split needs at least one")
        if k is not None and z.shape[1:] != (k, c):
            raise ValueError(f"{sp}: logits {z.shape} disagree with the other splits' K={k}, C={c}")
        k, c = z.shape[1:]
        if y.dtype.kind not in "iu":
            raise ValueError(f"{sp}: labels must be integer class indices 0..{c - 1}, got dtype {y.dtype}; "
                             f"convert them with labels.astype(int)")
        bad = np.concatenate([(y[sl] < 0) | (y[sl] >= c) for sl in row_slices(len(y), CHUNK)])
        if bad.any():
            raise ValueError(f"{sp}: {int(bad.sum())} labels are outside 0..{c - 1} (C={c} from the logits' last "
                             f"dimension), e.g. {int(y[bad][0])}: labels must index the logits' classes")
        if z.dtype.kind not in "fiu":
            raise ValueError(f"{sp}: logits must be numbers, got dtype {z.dtype}")
        if nz := _nonfinite(z):
            raise ValueError(f"{sp}: {nz} logits are NaN or infinite; give finite logits "
                             f"(replace -inf masks by a large negative number)")
        for i, f in enumerate(feats):
            f = np.asarray(f)
            if f.ndim != 2 or len(f) != len(y):
                raise ValueError(f"{sp}: features of exit {i} must be [N, D] with N={len(y)}, got {f.shape}")
            if f.dtype.kind not in "fiu":
                raise ValueError(f"{sp}: features of exit {i} must be numbers, got dtype {f.dtype}")
            if nf := _nonfinite(f):
                raise ValueError(f"{sp}: features of exit {i} hold {nf} NaN or infinite "
                                 f"values; give finite features")
            if dims is not None and f.shape[1] != dims[i]:
                raise ValueError(f"{sp}: features of exit {i} have D={f.shape[1]}, the train split's D={dims[i]}; "
                                 f"every split needs the same feature size per exit")
        if dims is None:
            dims = [np.shape(f)[1] for f in feats]
    return int(k), int(c)


def cache_from_arrays(path: str | os.PathLike, data: dict, *, costs=None, model_name: str = "arrays",
                      dataset_name: str = "arrays", overwrite: bool = False, chain: str = "none") -> FeatureCache:
    """Write a cache from arrays you already have (your own model's outputs, or synthetic data).

    ``data[split] = (labels [N], logits [N, K, C], [features_k [N, D_k] for each exit])`` for train,
    calib and test. ``costs`` is a cost table as :func:`branchy.runtime.profile_segments` makes, or as
    :func:`cost_table` builds from per-segment ms or MACs. Without it the cache holds no costs: accuracy,
    predictors and thresholds work, and simulating latency is refused with a message that says how to give them. ``chain`` says whether exit k's logits
    were computed with the earlier heads run (``boost``, ``cascade``, ``ensemble``; see FeatureCache.chain).
    """
    import hashlib

    out = check_writable(path, what="cache")
    k, c = _check_arrays(data)
    h = hashlib.sha256()
    for sp in SPLITS:
        y, z, feats = data[sp]
        y, z = np.asarray(y), np.asarray(z)
        for sl in row_slices(len(y), CHUNK):
            h.update(np.ascontiguousarray(y[sl]).tobytes())
        for sl in row_slices(len(z), CHUNK):
            h.update(np.ascontiguousarray(z[sl], dtype=np.float32).tobytes())
    with writing_target(out, overwrite) as partial:
        files = _write_arrays(partial, data)
        return finish_cache(partial, out, _arrays_manifest(partial, files, data, costs, fp=h.hexdigest()[:16], k=k, c=c,
                                                      model_name=model_name, dataset_name=dataset_name, chain=chain))


def _write_arrays(partial: Path, data: dict) -> dict:
    """Each split's labels, logits and features into ``partial``; return their ``files`` entries."""
    files: dict[str, dict] = {}
    for sp in SPLITS:
        y, z, feats = data[sp]
        d = partial / sp
        d.mkdir()
        _save(d / "labels.npy", np.asarray(y), np.int64)
        _save(d / "logits.npy", np.asarray(z), np.float32)
        for i, f in enumerate(feats):
            f = np.asarray(f)
            if f.ndim != 2 or len(f) != len(y):
                raise ValueError(f"{sp}: features of exit {i} must be [N, D] with N={len(y)}, got {f.shape}")
            _save(d / f"feat_{i}.npy", f, np.float32)
        record_files(files, d, partial)
    return files


def _save(path: Path, a: np.ndarray, dtype) -> None:
    """``np.save(path, a.astype(dtype))`` a chunk of rows at a time."""
    w = NpyWriter(path, a.shape, dtype)
    for sl in row_slices(len(a), CHUNK):
        w.write(np.asarray(a[sl]))
    w.close()


def _arrays_manifest(partial: Path, files: dict, data: dict, costs, *, fp: str, k: int, c: int, model_name: str,
                     dataset_name: str, chain: str) -> dict:
    """Write ``costs`` (default: an empty table, see :func:`cost_table`) into ``partial``; return the manifest of a
    cache_from_arrays cache (``costs_source``: ``given`` or ``none``)."""
    import pandas as pd

    from ..runtime import COST_COLUMNS

    costs_source = "given"
    if costs is None:
        costs, costs_source = cost_table(k), "none"  # no latency and no MACs: simulating is refused
    costs = pd.DataFrame(costs)
    missing = [c for c in ("segment", "k", "macs", "act_bytes", "ms_b1") if c not in costs.columns]
    if missing:
        raise ValueError(f"costs: a cost table needs the columns {', '.join(missing)} (build one with "
                         f"branchy.cache.cost_table)")
    costs = costs.reindex(columns=COST_COLUMNS)
    costs.to_csv(partial / "costs.csv", index=False)
    files["costs.csv"] = file_entry(partial / "costs.csv")
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {"name": model_name, "fingerprint": fp, "config": None, "checkpoint": None},
        "dataset": {"name": dataset_name, "fingerprint": fp, "info": None},
        "splits": {sp: int(len(data[sp][0])) for sp in SPLITS},
        "num_exits": int(k), "num_classes": int(c), "exits": list(range(k - 1)),
        "branch_shapes": None, "feature_dims": [int(np.shape(f)[1]) for f in data["train"][2]],
        "feature_dtype": "float32", "pooling": "given", "batch_size": None, "device": None, "threads": None,
        "dump_seconds": 0.0, "versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": files, "chain": str(chain), "costs_source": costs_source,
    }



def cost_table(k: int, *, stage_ms=None, exit_ms=None, buffer_ms=None, stage_macs=None, exit_macs=None,
               act_bytes=None, threads: int = 1, device: str = "given"):
    """A cost table for :func:`cache_from_arrays` from figures you have, per segment of a net with ``k`` exits.

    Args:
        k: the exits (stages) of the net.
        stage_ms, exit_ms, buffer_ms: ms at batch 1 of each stage, exit head (confidence included) and buffer
            (a copy of the branch-point activation), one number for all or one per exit; what is not given has
            no latency (NaN), so the ``measured`` profile is refused on it.
        stage_macs, exit_macs: multiply-accumulates per sample (FLOPs / 2), one or one per exit; not given: NaN,
            so the modelled device profiles (MACs / throughput) are refused on it.
        act_bytes: bytes of each branch point's activation per sample (what a buffer holds; default 0).
        threads, device: where the ms were measured, for the record.

    >>> t = cost_table(2, stage_ms=[1.0, 2.0], exit_ms=0.1, buffer_ms=0.01, stage_macs=1000, exit_macs=100)
    >>> t[t.segment == "stage"][["k", "macs", "ms_b1"]].to_dict("records")
    [{'k': 0, 'macs': 1000.0, 'ms_b1': 1.0}, {'k': 1, 'macs': 1000.0, 'ms_b1': 2.0}]
    """
    import pandas as pd

    from ..runtime import COST_COLUMNS

    def per_exit(name, v, default=float("nan")):
        if v is None:
            return np.full(k, default, dtype=float)
        a = np.asarray(v, dtype=float)
        if a.size == 1:
            a = np.full(k, a.item())  # one number for every exit
        if a.shape != (k,) or not (np.isfinite(a).all() and (a >= 0).all()):
            raise ValueError(f"{name}: give one number >= 0 or {k} (one per exit), got {v!r}")
        return a

    cols = {"stage": (per_exit("stage_ms", stage_ms), per_exit("stage_macs", stage_macs)),
            "exit": (per_exit("exit_ms", exit_ms), per_exit("exit_macs", exit_macs)),
            "buffer": (per_exit("buffer_ms", buffer_ms), np.zeros(k))}
    act = per_exit("act_bytes", act_bytes, 0.0)
    rows = [{"segment": seg, "k": i, "macs": cols[seg][1][i], "params": 0, "act_bytes": int(act[i]),
             "ms_b1": cols[seg][0][i], "ms_b1_iqr": 0.0, "ms_batch": cols[seg][0][i], "ms_batch_iqr": 0.0,
             "batch_size": 1, "threads": int(threads), "device": device, "ms_b1_spread": 0.0,
             "ms_batch_spread": 0.0, "rounds": 0, "unstable": False}
            for i in range(k) for seg in ("stage", "exit", "buffer")]
    return pd.DataFrame(rows, columns=COST_COLUMNS)


__all__ = ["CHUNK", "cache_from_arrays", "cost_table"]
