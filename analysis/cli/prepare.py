"""Commands that make and inspect what every later step reads: ``train``, ``dump``, ``cache-info``, ``profile``."""
from __future__ import annotations

import argparse
import os

from branchy.core import DEVICES, add_arguments, check_device, check_writable, from_arguments

from .base import POS, POS_INT, backend_names, command, number_type


def _configs():
    """The config classes these commands' options come from (imported when a command is built: they bring torch)."""
    from branchy.cache import DumpConfig
    from branchy.data import DataConfig
    from branchy.models import BackboneConfig
    from branchy.train import TrainConfig

    return DataConfig, BackboneConfig, TrainConfig, DumpConfig


# ----------------------------------------------------------------------------- train
def _train_args(p):
    DataConfig, BackboneConfig, TrainConfig, _ = _configs()
    add_arguments(p, DataConfig, title="data")
    add_arguments(p, BackboneConfig, title="model")
    add_arguments(p, TrainConfig, title="training")
    p.add_argument("--out", required=True, help="output folder for model.pt and history.csv")


def _train_run(a) -> int:
    from branchy.train import evaluate, train

    DataConfig, BackboneConfig, TrainConfig, _ = _configs()
    res = train(from_arguments(TrainConfig, a), from_arguments(BackboneConfig, a), from_arguments(DataConfig, a),
                out_dir=a.out)
    ev = evaluate(res.model, res.splits.test, device=next(res.model.parameters()).device)
    print(f"checkpoint: {res.checkpoint}")
    print("test accuracy per exit (%):")
    print((ev.assign(accuracy=100 * ev.accuracy)).to_string(index=False, float_format="%.2f"))
    return 0


command("train", "train a branchy net (BranchyNet joint loss) and write a checkpoint")((_train_args, _train_run))


# ----------------------------------------------------------------------------- dump / cache-info
def _dump_args(p):
    DataConfig, _, _, DumpConfig = _configs()
    p.add_argument("--checkpoint", required=True, help="model.pt written by `branchy train`")
    p.add_argument("--out", required=True, help="cache directory to write")
    add_arguments(p, DataConfig, title="data (default: what the checkpoint was trained on)")
    add_arguments(p, DumpConfig, title="dump")
    p.add_argument("--no-latency", action="store_true", help="skip latency measurement (MACs and bytes only)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache")
    p.add_argument("--distributed", action="store_true",
                   help="share the rows among the processes of a torchrun job: torchrun --standalone "
                        "--nproc-per-node N --no-python branchy dump --distributed ...")
    p.add_argument("--dist-backend", default=None, choices=["gloo", "nccl"],
                   help="torch.distributed backend with --distributed (default: nccl on GPUs, else gloo)")


def _dump_run(a) -> int:
    from branchy.train import data_config_of, read_checkpoint

    from ..present.tables import print_cache_info

    DataConfig, _, _, DumpConfig = _configs()
    config = from_arguments(DumpConfig, a)
    trained_on = data_config_of(read_checkpoint(a.checkpoint))
    data = from_arguments(DataConfig, a, base=trained_on) if trained_on else from_arguments(DataConfig, a)
    kw = dict(data=data, config=config, overwrite=a.overwrite, profile=not a.no_latency)
    if a.distributed:
        from branchy.cache import dump_checkpoint_distributed

        rank = int(os.environ.get("RANK", "0"))
        cache = dump_checkpoint_distributed(a.checkpoint, a.out, backend=a.dist_backend, progress=rank == 0, **kw)
        if rank != 0:
            return 0
    else:
        if a.dist_backend:
            raise ValueError("--dist-backend goes with --distributed")
        from branchy.cache import dump_checkpoint

        cache = dump_checkpoint(a.checkpoint, a.out, **kw)
    print(f"cache written: {cache.path}")
    print_cache_info(cache)
    return 0


command("dump", "run a trained net once over every split and write the feature cache")((_dump_args, _dump_run))


def _cache_info_args(p):
    p.add_argument("path", nargs="?", default=None, help="cache directory (or --cache)")
    p.add_argument("--cache", default=None, help="cache directory")
    p.add_argument("--verify", action="store_true",
                   help="check every file against the SHA-256 in the manifest (reads the whole cache)")


def _cache_info_run(a) -> int:
    from branchy.cache import FeatureCache

    from ..present.tables import print_cache_info

    given = {x for x in (a.path, a.cache) if x}
    if len(given) != 1:
        raise ValueError("name one cache: `branchy cache-info DIR` or `branchy cache-info --cache DIR`")
    path = given.pop()
    cache = FeatureCache.open(path, verify=a.verify or None)
    if cache.verified:
        print(f"verified: all {len(cache.manifest['files'])} files of {path} match their SHA-256")
    else:
        print(f"{path}: file sizes checked; a cache this large is hashed only on request (--verify)")
    print_cache_info(cache)
    return 0


command("cache-info", "splits, exits, per-exit accuracy, entropy and cumulative cost of a cache")(
    (_cache_info_args, _cache_info_run))


def _device(s: str) -> str:
    """An argparse ``type``: a device :func:`branchy.train.resolve_device` accepts."""
    try:
        check_device("device", s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return s


def _profile_args(p):
    p.add_argument("--cache", required=True, help="cache directory whose segment costs to measure again")
    p.add_argument("--checkpoint", default=None, help="the model (default: the checkpoint the manifest names)")
    p.add_argument("--threads", type=POS_INT, default=None, help="torch threads to time with (default: torch's)")
    p.add_argument("--rounds", type=number_type(int, 3), default=15, help="interleaved timing rounds (default 15)")
    p.add_argument("--batch-size", type=POS_INT, default=None, help="the larger batch (default: the dump's)")
    p.add_argument("--profile-time", type=POS, default=0.2,
                   help="seconds of timing per segment and batch size, over all rounds (default 0.2)")
    p.add_argument("--device", default="cpu", type=_device, help=f"where eager segments run: {DEVICES} (default cpu)")
    p.add_argument("--backend", default="eager", type=str.lower, choices=backend_names(),
                   help="what runs the segments: eager (profile 'measured'), compiled or onnxruntime (profile "
                        "'measured-BACKEND'); see branchy.runtime.backends")
    p.add_argument("--predictors", default=None,
                   help="a predictors folder fitted on this cache: measure their latency (pooling included) on the "
                        "same backend too, all in interleaved rounds; the old figures are kept as history")
    p.add_argument("--import", dest="import_costs", default=None, metavar="COSTS.json",
                   help="instead of timing here: the costs file an exported package's runner.py profile wrote on a "
                        "device, added as profile measured-NAME (with --name)")
    p.add_argument("--name", default=None, help="with --import: the device's name (profile measured-NAME); with "
                                                 "--predictors the gates' timings go to those predictors too")


def _profile_predictors(a, cache, preds: dict) -> None:
    import torch

    from predictors.cost import remeasure
    from predictors.store import save_predictors

    threads = torch.get_num_threads()
    torch.set_num_threads(a.threads or threads)
    try:
        old = {n: (p.cost.get("backends") or {}).get(a.backend) for n, p in preds.items()}
        new = remeasure(list(preds.values()), cache, backend=a.backend, rounds=a.rounds,
                        min_run_time=a.profile_time * max(1, len(preds)) / 2)
    finally:
        torch.set_num_threads(threads)
    save_predictors(list(preds.values()), a.predictors)
    import pandas as pd

    t = pd.DataFrame([{"predictor": n, "old_ms_b1": (old[n] or {}).get("ms_b1", float("nan")), "ms_b1": m["ms_b1"],
                       "pool_ms": m["pool_ms"], "spread": m["ms_b1_spread"], "unstable": m["unstable"]}
                      for n, m in new.items()])
    print(f"re-measured {len(preds)} predictors in {a.predictors} on {a.backend} (ms at batch 1, pooling included; "
          f"medians over interleaved rounds):")
    print(t.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def _import_run(a) -> int:
    from branchy.cache import import_costs

    if not a.name:
        raise ValueError("--import needs --name NAME: the profile becomes measured-NAME")
    cache = import_costs(a.cache, a.import_costs, a.name)
    if a.predictors:  # the gates' and jump's timings on the device, as the predictors' latency there
        import json

        from predictors.cost import import_latency
        from predictors.store import load_predictors, save_predictors

        preds = load_predictors(a.predictors, cache)
        done = import_latency(preds, json.loads(open(a.import_costs).read()), a.name)
        save_predictors(list(preds.values()), a.predictors)
        print(f"recorded the device's latency of {', '.join(done) or 'no predictor'} in {a.predictors}")
    t = cache.costs_for(a.name)
    print(f"imported {a.import_costs} into {a.cache} as profile measured-{a.name} (ms per call at batch 1, medians on "
          f"the device; spread = IQR / median); use it with --device-profile measured-{a.name}")
    print(t[[c for c in ("segment", "k", "ms_b1", "ms_b1_spread", "macs") if c in t]].to_string(
        index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def _profile_run(a) -> int:
    from branchy.cache import FeatureCache, reprofile

    from ..present.tables import print_cache_info

    if a.import_costs or a.name:
        return _import_run(a)
    model = None
    if a.checkpoint:
        from branchy.train import load_checkpoint

        model, _ = load_checkpoint(a.checkpoint)
    before = FeatureCache.open(a.cache)
    if a.predictors:  # a bad predictors folder fails before any timing
        from predictors.store import load_predictors

        check_writable(a.predictors, folder=True, what="predictors folder")
        preds = load_predictors(a.predictors, before)
    old = before.costs_for(a.backend).copy() if a.backend in before.backends else None
    cache = reprofile(a.cache, model, threads=a.threads, rounds=a.rounds, batch_size=a.batch_size,
                      min_run_time=a.profile_time, device=a.device, backend=a.backend)
    new = cache.costs_for(a.backend)
    cols = ["segment", "k", "ms_b1"] + [c for c in ("ms_b1_alone", "ms_b1_read") if c in new.columns]
    show = new[cols + ["ms_b1_spread", "ms_batch", "ms_batch_spread", "unstable"]].copy()
    if old is not None:
        show.insert(3, "old_ms_b1", old["ms_b1"].to_numpy())
    ov = cache.overhead(a.backend)
    print(f"re-measured {a.cache} on {a.backend}: ms at batch 1 and per batch of {int(new['batch_size'].iloc[0])}, medians over "
          f"{int(new['rounds'].iloc[0])} rounds; spread = IQR / median; the old table is in costs_history/")
    print(show.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if ov:
        print(f"runtime overhead ({a.backend}): {ov['sample_ms']:.4f} ms per sample + {ov['decision_ms']:.4f} ms per "
              f"side exit entered" + (" (in context; the decision is folded into each side exit's head)"
                                      if "decision_ms_alone" in ov else ""))
    rec = (cache.manifest if a.backend == "eager" else (cache.manifest.get("backends") or {}).get(a.backend, {}))
    ic = rec.get("in_context") or {}
    if ic:
        print(f"in context: the runtime timed along {len(ic['paths'])} forced paths; the segments timed alone were up "
              f"to {100 * ic['alone_vs_paths']:.1f} % off those path times, ms_b1 (corrected) reproduces them within "
              f"{100 * ic['worst_rel_residual']:.1f} % (ms_b1_alone: the segments alone)")
    if a.predictors:
        _profile_predictors(a, cache, preds)
    print_cache_info(cache)
    return 0


command("profile", "measure a cache's segment costs again (interleaved rounds), keeping the old as history")(
    (_profile_args, _profile_run))

