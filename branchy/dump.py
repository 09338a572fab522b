"""Dump a frozen branchy net once: logits, pooled features and labels of every split, the cost table and,
last, the manifest (with every file's size and SHA-256); also caches from arrays and re-profiling an existing
cache. Every writer goes through :mod:`branchy.cache_writer` (lock, own partial folder, recovery, final
swap), so an interrupted dump never leaves a directory that opens as a cache."""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .cache import MANIFEST, SCHEMA_VERSION, FeatureCache, file_entry
from .cache_writer import NpyWriter, _add_files, _finish, _recover, _sibling, _writing, target_lock
from .checkpoint import load_checkpoint
from .data import SPLITS, Splits, load_dataset
from .models import BranchyNet
from .paths import check_writable
from .profile import profile_segments, runtime_overhead
from .rule import json_safe
from .timing import machine_state
from .train import resolve_device


def parse_pooling(pooling: str) -> int:
    """``'avg'`` → 1 (global average), ``'grid:S'`` → S (adaptive S×S average)."""
    if pooling == "avg":
        return 1
    if pooling.startswith("grid:") and pooling[5:].isdigit() and int(pooling[5:]) >= 1:
        return int(pooling[5:])
    raise ValueError(f"unknown pooling {pooling!r}; use 'avg' or 'grid:S' (e.g. grid:2)")


def pool_features(h: torch.Tensor, s: int) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, C·s·s]`` by adaptive average pooling (``[B, D]`` passes through)."""
    if h.ndim == 2:
        return h
    return F.adaptive_avg_pool2d(h, s).flatten(1)


def _versions() -> dict:
    import pandas
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "pandas": pandas.__version__}


@torch.no_grad()
def dump(model: BranchyNet, splits: Splits, path: str | os.PathLike, *, batch_size: int = 256,
         device: str = "auto", pooling: str = "avg", feature_dtype: str = "float16", overwrite: bool = False,
         profile: bool = True, profile_time: float = 0.2, progress: bool = True,
         checkpoint: str | None = None) -> FeatureCache:
    """Run every split through the frozen ``model`` once and write a feature cache at ``path``."""
    out = check_writable(path, what="cache")
    s = parse_pooling(pooling)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if isinstance(profile_time, bool) or not isinstance(profile_time, (int, float, np.integer, np.floating)) \
            or not np.isfinite(profile_time) or profile_time < 0:
        raise ValueError(f"profile_time must be a finite number of seconds >= 0, got {profile_time!r}; e.g. 0.2")
    feature_dtype = _feature_dtype(feature_dtype)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if tuple(splits.info.input_shape) != (model.config.in_channels, *model.config.image_size):
        raise ValueError(f"the model takes {model.config.in_channels}x{model.config.image_size[0]}x"
                         f"{model.config.image_size[1]} inputs, the dataset {splits.info.name} has "
                         f"{'x'.join(map(str, splits.info.input_shape))}")
    dev = resolve_device(device)
    with _writing(out, overwrite) as partial:
        model = model.to(dev).eval()
        k = model.num_exits
        c = model.config.num_classes
        dims = [pool_features(torch.zeros(1, *shp), s).shape[1] for shp in model.branch_shapes]
        files: dict[str, dict] = {}
        total = sum(len(splits[sp]) for sp in SPLITS)
        bar = tqdm(total=total, desc="dump", unit="img", disable=not progress)
        t0 = time.perf_counter()
        for sp in SPLITS:
            ds = splits[sp]
            n = len(ds)
            d = partial / sp
            d.mkdir()
            w_logits = NpyWriter(d / "logits.npy", (n, k, c), np.float32)
            w_feats = [NpyWriter(d / f"feat_{i}.npy", (n, dims[i]), feature_dtype) for i in range(k)]
            for xb, _ in ds.iter_batches(batch_size):
                logits, feats = model.forward_exits(xb.to(dev, non_blocking=True), return_features=True)
                w_logits.write(torch.stack(logits, 1).float().cpu().numpy())
                for i, h in enumerate(feats):
                    w_feats[i].write(pool_features(h, s).float().cpu().numpy())
                bar.update(len(xb))
            for w in [w_logits, *w_feats]:
                w.close()
            np.save(d / "labels.npy", ds.y.numpy().astype(np.int64))
            _add_files(files, d, partial)
        bar.close()
        dump_seconds = time.perf_counter() - t0
        timing = machine_state(torch.get_num_threads()) if profile else None
        costs = profile_segments(model, batch_size=batch_size, device=dev, min_run_time=profile_time,
                                 measure_latency=profile)
        overhead = runtime_overhead(model, min_run_time=2 * profile_time) if profile and dev.type == "cpu" else None
        model.to(dev)
        costs.to_csv(partial / "costs.csv", index=False)
        files["costs.csv"] = file_entry(partial / "costs.csv")
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "model": {"name": model.config.name, "fingerprint": model.fingerprint(), "config": model.config.to_dict(),
                      "checkpoint": str(checkpoint) if checkpoint else None},
            "dataset": {"name": splits.info.name, "fingerprint": splits.fingerprint(), "info": splits.info.to_dict()},
            "splits": {sp: len(splits[sp]) for sp in SPLITS},
            "num_exits": k, "num_classes": c,
            "exits": list(model.config.exits),
            "branch_shapes": [list(b) for b in model.branch_shapes],
            "feature_dims": dims, "feature_dtype": str(np.dtype(feature_dtype)), "pooling": pooling,
            "batch_size": batch_size, "device": str(dev), "threads": torch.get_num_threads(),
            "dump_seconds": dump_seconds, "timing": timing, "overhead": overhead,
            "versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": files,
        }
        return _finish(partial, out, manifest)


FEATURE_DTYPES = ("float16", "float32", "float64")


def _feature_dtype(dtype) -> str:
    """``dtype`` as one of :data:`FEATURE_DTYPES`; an integer type (which would truncate) is refused."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in FEATURE_DTYPES:
        raise ValueError(f"feature_dtype must be one of {', '.join(FEATURE_DTYPES)}, got {str(dtype)!r} "
                         f"(other types would truncate or garble the features): use float16 or float32")
    return name


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
        bad = (y < 0) | (y >= c)
        if bad.any():
            raise ValueError(f"{sp}: {int(bad.sum())} labels are outside 0..{c - 1} (C={c} from the logits' last "
                             f"dimension), e.g. {int(y[bad][0])}: labels must index the logits' classes")
        if z.dtype.kind not in "fiu":
            raise ValueError(f"{sp}: logits must be numbers, got dtype {z.dtype}")
        if not np.isfinite(z).all():
            raise ValueError(f"{sp}: {int((~np.isfinite(z)).sum())} logits are NaN or infinite; give finite logits "
                             f"(replace -inf masks by a large negative number)")
        for i, f in enumerate(feats):
            f = np.asarray(f)
            if f.ndim != 2 or len(f) != len(y):
                raise ValueError(f"{sp}: features of exit {i} must be [N, D] with N={len(y)}, got {f.shape}")
            if f.dtype.kind not in "fiu":
                raise ValueError(f"{sp}: features of exit {i} must be numbers, got dtype {f.dtype}")
            if not np.isfinite(f).all():
                raise ValueError(f"{sp}: features of exit {i} hold {int((~np.isfinite(f)).sum())} NaN or infinite "
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
    calib and test. ``costs`` is a cost table as :func:`branchy.profile.profile_segments` makes (default:
    unit costs: every stage 1 ms / 1 MAC, exits 0.1, buffers 0.01). ``chain`` says whether exit k's logits
    were computed with the earlier heads run (``boost``, ``cascade``, ``ensemble``; see FeatureCache.chain).
    """
    import hashlib

    out = check_writable(path, what="cache")
    k, c = _check_arrays(data)
    h = hashlib.sha256()
    for sp in SPLITS:
        y, z, feats = data[sp]
        z = np.asarray(z)
        h.update(np.ascontiguousarray(y).tobytes() + np.ascontiguousarray(z, dtype=np.float32).tobytes())
    with _writing(out, overwrite) as partial:
        files = _write_arrays(partial, data)
        return _finish(partial, out, _arrays_manifest(partial, files, data, costs, fp=h.hexdigest()[:16], k=k, c=c,
                                                      model_name=model_name, dataset_name=dataset_name, chain=chain))


def _write_arrays(partial: Path, data: dict) -> dict:
    """Each split's labels, logits and features into ``partial``; return their ``files`` entries."""
    files: dict[str, dict] = {}
    for sp in SPLITS:
        y, z, feats = data[sp]
        d = partial / sp
        d.mkdir()
        np.save(d / "labels.npy", np.asarray(y, dtype=np.int64))
        np.save(d / "logits.npy", np.asarray(z, dtype=np.float32))
        for i, f in enumerate(feats):
            f = np.asarray(f)
            if f.ndim != 2 or len(f) != len(y):
                raise ValueError(f"{sp}: features of exit {i} must be [N, D] with N={len(y)}, got {f.shape}")
            np.save(d / f"feat_{i}.npy", f.astype(np.float32))
        _add_files(files, d, partial)
    return files


def _arrays_manifest(partial: Path, files: dict, data: dict, costs, *, fp: str, k: int, c: int, model_name: str,
                     dataset_name: str, chain: str) -> dict:
    """Write ``costs`` (default: unit costs) into ``partial``; return the manifest of a cache_from_arrays cache."""
    import pandas as pd

    from .profile import COST_COLUMNS

    if costs is None:
        rows = []
        for i in range(k):
            for seg, ms in (("stage", 1.0), ("exit", 0.1), ("buffer", 0.01)):
                rows.append({"segment": seg, "k": i, "macs": int(ms * 1000) if seg != "buffer" else 0, "params": 0,
                             "act_bytes": 1024, "ms_b1": ms, "ms_b1_iqr": 0.0, "ms_batch": ms, "ms_batch_iqr": 0.0,
                             "batch_size": 1, "threads": 1, "device": "none", "ms_b1_spread": 0.0,
                             "ms_batch_spread": 0.0, "rounds": 0, "unstable": False})
        costs = pd.DataFrame(rows, columns=COST_COLUMNS)
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
        "dump_seconds": 0.0, "versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": files, "chain": str(chain),
    }


def reprofile(path: str | os.PathLike, model=None, *, threads: int | None = None, rounds: int = 15,
              batch_size: int | None = None, min_run_time: float = 0.2, device: str = "cpu",
              backend: str = "eager") -> FeatureCache:
    """Measure an existing cache's segment costs again, without redumping, on ``backend`` (``eager``:
    ``costs.csv``, the ``measured`` profile; others: ``costs_BACKEND.csv``, profile ``measured-BACKEND``).
    The model (default: the checkpoint the manifest names) must have the cache's weights. The old table is
    kept in ``costs_history/`` with its timing record; the new one and the manifest are written atomically
    (temp + rename, manifest last).

    It holds the cache's write lock (see :func:`target_lock`) for its whole run. Costs files are hashed like
    the data files: the new table is written as ``NAME.new``, the manifest (with its size and SHA-256) is
    replaced, then ``NAME.new`` is renamed over ``NAME``; a kill in between is completed by the next writer.
    In a schema-1 cache (sizes only, no hashes) only the size is recorded, and the cache stays schema 1."""
    from .backends import BACKENDS

    BACKENDS.get(backend)
    backend = backend.strip().lower()
    p = Path(path)
    if not p.is_dir() and not _sibling(p, ".old").is_dir():
        FeatureCache.open(p)  # no cache there: say so without creating a lock file
    with target_lock(p, "reprofile"):
        _recover(p)
        return _reprofile(p, model, threads=threads, rounds=rounds, batch_size=batch_size,
                          min_run_time=min_run_time, device=device, backend=backend)


def _reprofile(p: Path, model, *, threads: int | None, rounds: int, batch_size: int | None, min_run_time: float,
               device: str, backend: str) -> FeatureCache:
    """:func:`reprofile`'s work, under the lock."""
    cache = FeatureCache.open(p)
    m = dict(cache.manifest)
    if model is None:
        ckpt = (m.get("model") or {}).get("checkpoint")
        if not ckpt or not Path(ckpt).is_file():
            raise FileNotFoundError(f"{p}: the manifest names no readable checkpoint ({ckpt!r}); pass the model's "
                                    f"checkpoint (CLI: --checkpoint)")
        model, _ = load_checkpoint(ckpt)
    cache.check(model=model)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    bs = int(batch_size or m.get("batch_size") or 64)
    dev = resolve_device(device) if backend == "eager" else torch.device("cpu")
    timing = machine_state(torch.get_num_threads())
    costs = profile_segments(model, batch_size=bs, device=dev, min_run_time=min_run_time, rounds=rounds,
                             backend=backend)
    overhead = runtime_overhead(model, rounds=rounds, min_run_time=2 * min_run_time, backend=backend) \
        if dev.type == "cpu" else None
    name = "costs.csv" if backend == "eager" else f"costs_{backend}.csv"
    stamp = time.strftime("%Y%m%dT%H%M%S") + f"{time.time() % 1:.6f}"[1:].replace(".", "_")
    if (p / name).exists():
        hist = p / "costs_history"
        hist.mkdir(exist_ok=True)
        shutil.copy2(p / name, hist / f"{name[:-4]}_{stamp}.csv")
        old = m if backend == "eager" else (m.get("backends") or {}).get(backend, {})
        (hist / f"timing_{backend}_{stamp}.json").write_text(json.dumps(
            {k: old.get(k) for k in ("timing", "threads", "device", "overhead")}, indent=2, default=str))
    new = p / (name + ".new")
    costs.to_csv(new, index=False)
    entry = file_entry(new) if _hashed(m) else new.stat().st_size
    m["files"] = dict(m["files"], **{name: entry})
    record = {"threads": torch.get_num_threads(), "device": str(dev), "timing": timing, "overhead": overhead,
              "profiled": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if backend == "eager":
        m.update(record)
    else:
        m["backends"] = dict(m.get("backends") or {}, **{backend: {"costs": name, **record}})
    tmp = p / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(json_safe(m), indent=2, allow_nan=False))
    os.replace(tmp, p / MANIFEST)  # the commit point: from here the manifest describes NAME.new
    os.replace(new, p / name)
    return FeatureCache.open(p)


def _hashed(manifest: dict) -> bool:
    """Whether the cache records SHA-256 hashes (schema 2 and on)."""
    return manifest.get("schema_version", 1) >= 2


def dump_checkpoint(checkpoint: str | os.PathLike, path: str | os.PathLike, *, splits: Splits | None = None,
                    dataset: str | None = None, dataset_kwargs: dict | None = None, **kw) -> FeatureCache:
    """Load ``checkpoint`` and dump it on ``splits`` (default: the dataset it was trained on)."""
    model, meta = load_checkpoint(checkpoint)
    if splits is None:
        tc = meta.get("train_config") or {}
        name = dataset or tc.get("dataset")
        if not name:
            raise ValueError(f"{checkpoint} does not record its dataset; name one (CLI: --dataset)")
        args = {"root": tc.get("data_root", "data"), "download": tc.get("download", False),
                "path": tc.get("data_path"), "seed": tc.get("seed", 0)}
        args.update(dataset_kwargs or {})
        splits = load_dataset(name, **args)
        want = meta.get("dataset_fingerprint")
        if want and dataset is None and splits.fingerprint() != want:
            raise ValueError(f"the dataset {name} on disk differs from the one {checkpoint} was trained on "
                             f"(fingerprint {splits.fingerprint()} vs {want})")
    return dump(model, splits, path, checkpoint=str(checkpoint), **kw)
