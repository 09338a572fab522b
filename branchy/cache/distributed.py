"""A dump shared by several processes under ``torchrun`` (``torch.distributed``): each rank runs its own rows of
every split through the frozen net and writes them into one preallocated, memory-mapped cache.

    torchrun --standalone --nproc-per-node 2 --no-python branchy dump --distributed --checkpoint M --out C

* **Rows.** :func:`shard_rows` gives rank r a contiguous run of whole batches of the single-process dump, in
  order, no padding and no duplicates (unlike ``DistributedSampler``, which pads to equal shards). The batches
  are the single-process dump's own, so on a CPU every row is computed exactly as there: the cache equals a
  single-process dump byte for byte (tested with 2 ranks on ``gloo``).
* **Files.** Rank 0 takes the cache's lock, repairs what killed writers left, makes its own ``.partial-*``
  folder and preallocates every ``.npy`` at full size; the ranks write disjoint rows through memory maps.
* **Last.** After every rank reports (a gather of errors, never a silent hang on a rank that failed in Python),
  rank 0 writes labels, hashes, the cost table (measured on rank 0 alone, the others idle) and the manifest,
  and renames the folder into place. A rank that dies (kill -9) leaves only the ``.partial-*`` folder, which
  never opens as a cache and which the next writer removes.
* **Backends.** ``gloo`` on CPU; ``nccl`` on GPUs, each rank on ``cuda:LOCAL_RANK`` (control messages always go
  over a ``gloo`` group, so they work beside NCCL).
"""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..core import SetupError, check_writable, resolve_device, show_progress
from ..data import SPLITS, DataConfig, Splits
from ..models import BranchyNet
from .dumping import (DumpConfig, check_input_shape, feature_dims, finish_dump, load_for_dump, open_writers,
                      parse_pooling, write_rows)
from .reader import FeatureCache
from .writer import NpyWriter, writing_target


def shard_rows(n: int, batch_size: int, world: int, rank: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank`` of ``world``: whole batches of ``batch_size`` (the last may be
    short), contiguous and in order, the batch counts differing by at most one between ranks."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not one of 0..{world - 1}")
    nb = -(-n // batch_size)
    b0, b1 = rank * nb // world, (rank + 1) * nb // world
    return min(b0 * batch_size, n), min(b1 * batch_size, n)


def _preallocate(path: Path, shape, dtype) -> None:
    """A ``.npy`` of its full size (sparse where the file system allows), its rows to be written by the ranks."""
    np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=tuple(shape)).flush()


def _setup(backend: str | None, device: str, timeout_s: float):
    """Join (or start, from torchrun's environment) the process group; the rank's device and a gloo group for
    control messages. Returns ``(rank, world, device, control group, started here)``."""
    started = False
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise ValueError("a distributed dump runs under torchrun (RANK and WORLD_SIZE are not set): "
                               "torchrun --standalone --nproc-per-node N --no-python branchy dump --distributed ...")
        backend = backend or ("nccl" if torch.cuda.is_available() and device != "cpu" else "gloo")
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        started = True
    rank, world = dist.get_rank(), dist.get_world_size()
    if dist.get_backend() == "nccl":
        local = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = resolve_device(device)
    ctl = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    return rank, world, dev, ctl, started


def _bcast(obj, ctl):
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=ctl)
    return box[0]


@torch.no_grad()
def _write_shard(model, splits: Splits, partial: Path, cfg: DumpConfig, dev, dims, rank: int, world: int,
                 progress: bool) -> str | None:
    """This rank's rows of every split into the preallocated files; the error, in words, instead of raising."""
    try:
        s = parse_pooling(cfg.pooling)
        spans = {sp: shard_rows(len(splits[sp]), cfg.batch_size, world, rank) for sp in SPLITS}
        bar = tqdm(total=sum(b - a for a, b in spans.values()), desc=f"dump rank {rank}", unit="img",
                   disable=not show_progress(progress), position=rank)
        for sp in SPLITS:
            a, b = spans[sp]
            if a == b:
                continue
            writers = open_writers(partial / sp, len(splits[sp]), model, dims, cfg.feature_dtype,
                                   lambda p, shape, dtype, a=a, b=b: NpyWriter(p, shape, dtype, rows=(a, b)))
            write_rows(writers, model, splits[sp], a, b, cfg.batch_size, dev, s, bar)
        bar.close()
        return None
    except Exception as e:  # noqa: BLE001 - reported to every rank, then raised
        return f"rank {rank}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"


class RankFailedError(SetupError):
    """A rank of a distributed dump failed or refused (an existing ``--out``, a locked target, a failed rank): every
    rank reports it as a one-line error naming the rank and its reason, not as a bug."""


def dump_distributed(model: BranchyNet, splits: Splits, path: str | os.PathLike, config: DumpConfig | None = None,
                     *, overwrite: bool = False, profile: bool = True, progress: bool = True,
                     checkpoint: str | None = None, backend: str | None = None, timeout_s: float = 6 * 3600,
                     **settings) -> FeatureCache:
    """:func:`branchy.cache.dump` shared by the ranks of a ``torch.distributed`` job (every rank calls it with the
    same arguments; see the module's docstring). Returns the cache on every rank. ``timeout_s``: how long a rank
    waits for the others at a collective (the others wait while rank 0 hashes and profiles the whole cache)."""
    out = check_writable(path, what="cache")
    cfg = replace(config or DumpConfig(), **settings)
    parse_pooling(cfg.pooling)
    check_input_shape(model, splits)
    rank, world, dev, ctl, started = _setup(backend, cfg.device, timeout_s)
    try:
        model = model.to(dev).eval()
        dims = feature_dims(model, parse_pooling(cfg.pooling))
        if rank == 0:
            return _lead(model, splits, out, cfg, dev, dims, world, ctl, overwrite, profile, progress, checkpoint)
        return _follow(model, splits, cfg, dev, dims, rank, world, ctl, progress)
    finally:
        if started:
            dist.destroy_process_group()


def _lead(model, splits, out, cfg, dev, dims, world, ctl, overwrite, profile, progress, checkpoint):
    stage = "start"
    try:
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
        with writing_target(out, overwrite) as partial:
            for sp in SPLITS:
                (partial / sp).mkdir()
                open_writers(partial / sp, len(splits[sp]), model, dims, cfg.feature_dtype, _preallocate)
            _bcast(("go", str(partial)), ctl)
            stage = "rows"
            t0 = time.perf_counter()
            err = _write_shard(model, splits, partial, cfg, dev, dims, 0, world, progress)
            errs = [None] * world
            dist.all_gather_object(errs, err, group=ctl)
            stage = "finish"
            failed = [e for e in errs if e]
            if failed:
                raise RankFailedError(f"{len(failed)} of {world} ranks failed; nothing was written to {out}:\n"
                                      + "\n".join(failed))
            cache = finish_dump(partial, out, model, splits, cfg, dev, dims, time.perf_counter() - t0,
                                profile=profile, checkpoint=checkpoint, progress=progress,
                                extra={"ranks": world, "dist_backend": dist.get_backend()})
        _bcast(("done", str(out)), ctl)
        return cache
    except BaseException as e:
        try:  # the others wait for word from rank 0 (after a failed collective the group is gone: nothing to tell)
            if stage != "rows":
                _bcast(("error", f"rank 0: {type(e).__name__}: {e}"), ctl)
        except Exception:  # noqa: BLE001 - the original error says more
            pass
        raise


def _follow(model, splits, cfg, dev, dims, rank, world, ctl, progress):
    kind, what = _bcast(None, ctl)
    if kind == "error":
        raise RankFailedError(f"rank {rank}: the distributed dump did not start: {what}")
    err = _write_shard(model, splits, Path(what), cfg, dev, dims, rank, world, progress)
    errs = [None] * world
    dist.all_gather_object(errs, err, group=ctl)
    kind, what = _bcast(None, ctl)
    if kind == "error":
        raise RankFailedError(f"rank {rank}: the distributed dump failed: {what}")
    return FeatureCache.open(what)


def dump_checkpoint_distributed(checkpoint: str | os.PathLike, path: str | os.PathLike, *,
                                splits: Splits | None = None, data: DataConfig | None = None, **kw) -> FeatureCache:
    """:func:`branchy.cache.dump_checkpoint` shared by the ranks of a ``torchrun`` job."""
    model, splits = load_for_dump(checkpoint, splits=splits, data=data)
    return dump_distributed(model, splits, path, checkpoint=str(checkpoint), **kw)


__all__ = ["RankFailedError", "dump_checkpoint_distributed", "dump_distributed", "shard_rows"]
