"""Measure an existing cache's segment costs again, without redumping, under the cache's write lock; the old
table is kept as history."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from ..core import point, resolve_device
from ..runtime import in_context_costs, machine_state, profile_segments, runtime_overhead, sample_inputs
from ..train import load_checkpoint
from .imported import commit_costs_table
from .reader import FeatureCache
from .writer import recover_target, sibling_path, target_lock


def reprofile(path: str | os.PathLike, model=None, *, threads: int | None = None, rounds: int = 15,
              batch_size: int | None = None, min_run_time: float = 0.2, device: str = "cpu",
              backend: str = "eager", progress: bool = True) -> FeatureCache:
    """Measure an existing cache's segment costs again, without redumping, on ``backend`` (``eager``:
    ``costs.csv``, the ``measured`` profile; others: ``costs_BACKEND.csv``, profile ``measured-BACKEND``).
    The model (default: the checkpoint the manifest names) must have the cache's weights. The old table is
    kept in ``costs_history/`` with its timing record; the new one and the manifest are written atomically
    (temp + rename, manifest last).

    It holds the cache's write lock (see :func:`target_lock`) for its whole run. Costs files are hashed like
    the data files: the new table is written as ``NAME.new``, the manifest (with its size and SHA-256) is
    replaced, then ``NAME.new`` is renamed over ``NAME``; a kill in between is completed by the next writer.
    In a schema-1 cache (sizes only, no hashes) only the size is recorded, and the cache stays schema 1.
    ``progress``: a bar per timing step (segments, runtime overhead: rounds; paths: samples)."""
    from ..runtime import BACKENDS

    BACKENDS.get(backend)
    backend = backend.strip().lower()
    p = Path(path)
    if not p.is_dir() and not sibling_path(p, ".old").is_dir():
        FeatureCache.open(p)  # no cache there: say so without creating a lock file
    with target_lock(p, "reprofile"):
        recover_target(p)
        return _reprofile(p, model, threads=threads, rounds=rounds, batch_size=batch_size,
                          min_run_time=min_run_time, device=device, backend=backend, progress=progress)


def _reprofile(p: Path, model, *, threads: int | None, rounds: int, batch_size: int | None, min_run_time: float,
               device: str, backend: str, progress: bool = True) -> FeatureCache:
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
                             backend=backend, progress=progress)
    overhead = runtime_overhead(model, rounds=rounds, min_run_time=2 * min_run_time, backend=backend,
                                progress=progress) if dev.type == "cpu" else None
    in_context = None
    if overhead is not None:  # the costs corrected to what the runtime pays along its paths
        costs, overhead, in_context = in_context_costs(model, costs, overhead, backend=backend,
                                                        inputs=_test_images(m), progress=progress)
    name = "costs.csv" if backend == "eager" else f"costs_{backend}.csv"
    stamp = time.strftime("%Y%m%dT%H%M%S") + f"{time.time() % 1:.6f}"[1:].replace(".", "_")
    if (p / name).exists():
        hist = p / "costs_history"
        hist.mkdir(exist_ok=True)
        shutil.copy2(p / name, hist / f"{name[:-4]}_{stamp}.csv")
        old = m if backend == "eager" else (m.get("backends") or {}).get(backend, {})
        (hist / f"timing_{backend}_{stamp}.json").write_text(json.dumps(
            {k: old.get(k) for k in ("timing", "threads", "device", "overhead", "in_context")}, indent=2, default=str))
    record = {"threads": torch.get_num_threads(), "device": str(dev), "timing": timing, "overhead": overhead,
              "in_context": in_context, "profiled": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if backend == "eager":
        m.update(record)
    else:
        m["backends"] = dict(m.get("backends") or {}, **{backend: {"costs": name, **record}})
    commit_costs_table(p, m, name, costs, mark=lambda step: point(f"reprofile:{step}"))
    return FeatureCache.open(p)


def _test_images(manifest: dict, n: int = 8):
    """A few test images of the dataset the cache was dumped from, when it loads without a download (else None:
    random images)."""
    from ..data import DataConfig

    name = (manifest.get("dataset") or {}).get("name")
    try:
        return sample_inputs(DataConfig(name).load(), n) if name else None
    except Exception:  # noqa: BLE001 - a dataset that needs a download or a root: random images do
        return None


__all__ = ["reprofile"]
