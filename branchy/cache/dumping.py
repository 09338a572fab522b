"""Dump a frozen branchy net once: logits, pooled features and labels of every split, the cost table and,
last, the manifest (with every file's size and SHA-256); also caches from arrays and re-profiling an existing
cache. Every writer goes through :mod:`branchy.cache.writer` (lock, own partial folder, recovery, final
swap), so an interrupted dump never leaves a directory that opens as a cache."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core import check_device, check_int, check_number, check_writable, resolve_device, setting, show_progress
from ..data import SPLITS, DataConfig, Splits
from ..models import BranchyNet, parse_pooling, pool_features
from ..runtime import in_context_costs, machine_state, profile_segments, runtime_overhead, sample_inputs
from ..train import data_config_of, load_checkpoint
from .files import file_entry
from .reader import SCHEMA_VERSION, FeatureCache
from .writer import NpyWriter, finish_cache, record_files, versions, writing_target

FEATURE_DTYPES = ("float16", "float32", "float64")


@dataclass(frozen=True)
class DumpConfig:
    """How a net is dumped: batch size (images per forward pass), device, pooling of each branch point's
    activation into features, their dtype, and the seconds of timing per segment and batch size."""

    batch_size: int = setting(256, "images per forward pass while dumping (also the batched-latency batch)")
    device: str = setting("auto", "auto (cuda when present, else cpu), cpu, cuda, cuda:1")
    pooling: str = setting("grid:3", "features: 'avg' (global average), 'grid:S' (adaptive SxS average) or "
                                      "'grid:S1,S2' (every scale, concatenated: a spatial pyramid)")
    feature_dtype: str = setting("float16", "dtype of the stored features", choices=lambda: list(FEATURE_DTYPES))
    profile_time: float = setting(0.2, "seconds of timing per segment and batch size")

    def __post_init__(self) -> None:
        check_int("batch_size", self.batch_size, 1)
        check_number("profile_time", self.profile_time, "of seconds > 0", lambda v: v > 0, "e.g. 0.2")
        check_device("device", self.device)
        parse_pooling(self.pooling)
        object.__setattr__(self, "feature_dtype", _feature_dtype(self.feature_dtype))


@torch.no_grad()
def dump(model: BranchyNet, splits: Splits, path: str | os.PathLike, config: DumpConfig | None = None, *,
         overwrite: bool = False, profile: bool = True, progress: bool = True, checkpoint: str | None = None,
         **settings) -> FeatureCache:
    """Run every split through the frozen ``model`` once and write a feature cache at ``path``. Several processes
    share the work with :func:`branchy.cache.dump_distributed` (``torchrun``).

    Args:
        model: the trained branchy net (frozen: eval mode, no gradients).
        splits: train / calib / test, as :func:`branchy.data.load_dataset` gives them.
        path: the cache folder; it appears whole or not at all (written beside it, swapped in last).
        config: batch size, device, pooling, feature dtype, timing budget (default :class:`DumpConfig`).
        overwrite: replace a cache already at ``path``.
        profile: time every segment (ms at batch 1 and per batch; else costs are MACs only).
        progress: show a progress bar.
        checkpoint: the checkpoint path to record in the manifest (how to redump it).
        **settings: any field of :class:`DumpConfig` (``pooling="avg"``, ``profile_time=0.05``).

    Returns:
        The :class:`~branchy.cache.FeatureCache` just written.
    """
    out = check_writable(path, what="cache")
    cfg = replace(config or DumpConfig(), **settings)
    s = parse_pooling(cfg.pooling)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    check_input_shape(model, splits)
    dev = resolve_device(cfg.device)
    with writing_target(out, overwrite) as partial:
        model = model.to(dev).eval()
        dims = feature_dims(model, s)
        bar = tqdm(total=sum(len(splits[sp]) for sp in SPLITS), desc="dump", unit="img",
                   disable=not show_progress(progress))
        t0 = time.perf_counter()
        for sp in SPLITS:
            n = len(splits[sp])
            (partial / sp).mkdir()
            writers = open_writers(partial / sp, n, model, dims, cfg.feature_dtype, NpyWriter)
            write_rows(writers, model, splits[sp], 0, n, cfg.batch_size, dev, s, bar)
        bar.close()
        return finish_dump(partial, out, model, splits, cfg, dev, dims, time.perf_counter() - t0, profile=profile,
                           checkpoint=checkpoint, progress=progress)


def check_input_shape(model: BranchyNet, splits: Splits) -> None:
    if tuple(splits.info.input_shape) != (model.config.in_channels, *model.config.image_size):
        raise ValueError(f"the model takes {model.config.in_channels}x{model.config.image_size[0]}x"
                         f"{model.config.image_size[1]} inputs, the dataset {splits.info.name} has "
                         f"{'x'.join(map(str, splits.info.input_shape))}")


def feature_dims(model: BranchyNet, s: tuple[int, ...]) -> list[int]:
    """Per branch point, the length of its pooled feature vector."""
    return [pool_features(torch.zeros(1, *shp), s).shape[1] for shp in model.branch_shapes]


def open_writers(d, n: int, model: BranchyNet, dims: list[int], feature_dtype: str, opener):
    """``(logits, [features per exit])`` writers of split folder ``d`` with ``n`` rows: ``opener(path, shape,
    dtype)`` is :class:`NpyWriter` (sequential) or a memory map of a preallocated file (a rank's rows)."""
    k, c = model.num_exits, model.config.num_classes
    return (opener(d / "logits.npy", (n, k, c), np.float32),
            [opener(d / f"feat_{i}.npy", (n, dims[i]), feature_dtype) for i in range(k)])


def forward_rows(model: BranchyNet, ds, start: int, stop: int, batch_size: int, dev, s: tuple[int, ...]):
    """``(logits [B, K, C] float32, pooled features per exit [B, D_i])`` of rows ``start..stop-1`` in
    batches of ``batch_size`` starting at ``start``: the batches of a single-process dump whenever ``start`` is
    a multiple of ``batch_size``, so each row sees the same computation."""
    for b in range(start, stop, batch_size):
        xb, _ = ds.batch(torch.arange(b, min(b + batch_size, stop)))
        logits, feats = model.forward_exits(xb.to(dev, non_blocking=True), return_features=True)
        yield torch.stack(logits, 1).float().cpu().numpy(), [pool_features(h, s).float().cpu().numpy() for h in feats]


def write_rows(writers, model: BranchyNet, ds, start: int, stop: int, batch_size: int, dev, s: tuple[int, ...],
               bar=None) -> None:
    """Rows ``start..stop-1`` of ``ds`` through the net (:func:`forward_rows`) into ``writers`` (from
    :func:`open_writers`), which are closed at the end."""
    w_logits, w_feats = writers
    for logits, feats in forward_rows(model, ds, start, stop, batch_size, dev, s):
        w_logits.write(logits)
        for w, f in zip(w_feats, feats):
            w.write(f)
        if bar is not None:
            bar.update(len(logits))
    for w in [w_logits, *w_feats]:
        w.close()


def finish_dump(partial, out, model: BranchyNet, splits: Splits, cfg: DumpConfig, dev, dims: list[int],
                dump_seconds: float, *, profile: bool, checkpoint: str | None, extra: dict | None = None,
                progress: bool = True) -> FeatureCache:
    """Once every row is written into ``partial``: the labels, every file's size and SHA-256, the cost table
    (measured when ``profile``; ``progress``: a bar per timing step, over its rounds or samples), then the manifest
    last, and the folder renamed to ``out``."""
    files: dict[str, dict] = {}
    for sp in SPLITS:
        np.save(partial / sp / "labels.npy", splits[sp].y.numpy().astype(np.int64))
        record_files(files, partial / sp, partial)
    timing = machine_state(torch.get_num_threads()) if profile else None
    costs = profile_segments(model, batch_size=cfg.batch_size, device=dev, min_run_time=cfg.profile_time,
                             measure_latency=profile, progress=progress)
    overhead = runtime_overhead(model, min_run_time=2 * cfg.profile_time, progress=progress) \
        if profile and dev.type == "cpu" else None
    in_context = None
    if overhead is not None:  # the costs corrected to what the runtime pays along its paths
        costs, overhead, in_context = in_context_costs(model, costs, overhead, inputs=sample_inputs(splits),
                                                        progress=progress)
    model.to(dev)
    costs.to_csv(partial / "costs.csv", index=False)
    files["costs.csv"] = file_entry(partial / "costs.csv")
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "model": {"name": model.config.name, "fingerprint": model.fingerprint(), "config": model.config.to_dict(),
                  "checkpoint": str(checkpoint) if checkpoint else None},
        "dataset": {"name": splits.info.name, "fingerprint": splits.fingerprint(), "info": splits.info.to_dict()},
        "splits": {sp: len(splits[sp]) for sp in SPLITS},
        "num_exits": model.num_exits, "num_classes": model.config.num_classes,
        "exits": list(model.config.exits),
        "branch_shapes": [list(b) for b in model.branch_shapes],
        "feature_dims": dims, "feature_dtype": str(np.dtype(cfg.feature_dtype)), "pooling": cfg.pooling,
        "batch_size": cfg.batch_size, "device": str(dev), "threads": torch.get_num_threads(),
        "dump_seconds": dump_seconds, "timing": timing, "overhead": overhead, "in_context": in_context,
        "versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
        "files": files,
    }
    return finish_cache(partial, out, manifest)


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


def load_for_dump(checkpoint: str | os.PathLike, *, splits: Splits | None = None,
                  data: DataConfig | None = None) -> tuple[BranchyNet, Splits]:
    """The net of ``checkpoint`` and the splits to dump it on: ``splits``, or ``data`` (default: the data it was
    trained on, checked against the fingerprint it recorded)."""
    model, meta = load_checkpoint(checkpoint)
    if splits is None:
        trained_on = data_config_of(meta)
        data = data or trained_on
        if data is None:
            raise ValueError(f"{checkpoint} does not record its dataset; name one (CLI: --dataset)")
        splits = data.load()
        want = meta.get("dataset_fingerprint")
        if want and data == trained_on and splits.fingerprint() != want:
            raise ValueError(f"the dataset {data.dataset} on disk differs from the one {checkpoint} was trained on "
                             f"(fingerprint {splits.fingerprint()} vs {want})")
    return model, splits


def dump_checkpoint(checkpoint: str | os.PathLike, path: str | os.PathLike, *, splits: Splits | None = None,
                    data: DataConfig | None = None, **kw) -> FeatureCache:
    """Load ``checkpoint`` and dump it (:func:`load_for_dump`); ``kw`` go to :func:`dump`. A target another process
    is writing is refused before the checkpoint and the data are loaded."""
    from .writer import check_unlocked

    check_unlocked(path)
    model, splits = load_for_dump(checkpoint, splits=splits, data=data)
    return dump(model, splits, path, checkpoint=str(checkpoint), **kw)


__all__ = ["DumpConfig", "FEATURE_DTYPES", "check_input_shape", "dump", "dump_checkpoint", "feature_dims",
           "finish_dump", "forward_rows", "load_for_dump", "open_writers", "write_rows"]
