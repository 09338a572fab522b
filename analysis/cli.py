"""The ``branchy`` console script: one subcommand per step of the study."""
from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, Sequence

from branchy.paths import SetupError, check_writable
from branchy.registry import UnknownNameError

from branchy.config import add_arguments, from_arguments
from branchy.data import DataConfig
from branchy.dump import DumpConfig
from branchy.models import BackboneConfig
from branchy.train import TrainConfig
from predictors.grid import PredictorsConfig

from .study.placement_study import PlacementConfig
from .present.tables import format_compare, format_eval, print_cache_info
from .study.policies import PolicyConfig

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str):
    """Register ``(add_arguments, run)`` for a subcommand."""

    def deco(fn_pair):
        COMMANDS[name] = fn_pair + (help,)
        return fn_pair

    return deco


def _number(kind=float, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
            what: str = ""):
    """An argparse ``type``: a finite ``kind`` (int or float) in [lo, hi] (``lo_open``: lo excluded); a bad value
    is a one-line usage error naming the range."""
    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not {'an integer' if kind is int else 'a number'}") from None
        bad = not math.isfinite(v) or (lo is not None and (v < lo or (lo_open and v == lo))) or \
            (hi is not None and v > hi)
        if bad:
            lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
            hi_s = "" if hi is None else f"<= {hi:g}"
            rng = " and ".join(x for x in (lo_s, hi_s) if x) or "finite"
            raise argparse.ArgumentTypeError(f"{s} is out of range: must be {rng}{what}")
        return v
    parse.__name__ = "integer" if kind is int else "number"
    return parse


POS_INT = _number(int, 1)
POS = _number(float, 0, lo_open=True)


def _float_list(s: str) -> list[float]:
    try:
        v = [float(x) for x in s.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a list of numbers (e.g. 0.5,0.3)") from None
    if any(math.isnan(x) for x in v):
        raise argparse.ArgumentTypeError(f"{s!r} holds NaN")
    return v


# ----------------------------------------------------------------------------- listings
def _no_args(p):
    pass


def _lister(get_registry):
    """A ``run`` that prints ``name  description`` for every entry of a registry."""

    def run(a) -> int:
        for name, doc in get_registry().describe().items():
            print(f"{name:16s} {doc}")
        return 0

    return run


def _backends() -> list[str]:
    from branchy.backends import list_backends

    return list_backends()


def _backbones():
    from branchy.models import BACKBONES

    return BACKBONES


def _datasets():
    from branchy.data import DATASETS

    return DATASETS


def _strategies():
    from placement.search import STRATEGIES

    return STRATEGIES


command("models", "list the registered backbones")((_no_args, _lister(_backbones)))
command("datasets", "list the registered datasets")((_no_args, _lister(_datasets)))
command("strategies", "list the placement strategies")((_no_args, _lister(_strategies)))


# ----------------------------------------------------------------------------- train
def _train_args(p):
    add_arguments(p, DataConfig, title="data")
    add_arguments(p, BackboneConfig, title="model")
    add_arguments(p, TrainConfig, title="training")
    p.add_argument("--out", required=True, help="output folder for model.pt and history.csv")


def _train_run(a) -> int:
    from branchy.train import evaluate, train

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
    p.add_argument("--checkpoint", required=True, help="model.pt written by `branchy train`")
    p.add_argument("--out", required=True, help="cache directory to write")
    add_arguments(p, DataConfig, title="data (default: what the checkpoint was trained on)")
    add_arguments(p, DumpConfig, title="dump")
    p.add_argument("--no-latency", action="store_true", help="skip latency measurement (MACs and bytes only)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache")


def _dump_run(a) -> int:
    from branchy.checkpoint import data_config_of, read_checkpoint
    from branchy.dump import dump_checkpoint

    config = from_arguments(DumpConfig, a)
    trained_on = data_config_of(read_checkpoint(a.checkpoint))
    data = from_arguments(DataConfig, a, base=trained_on) if trained_on else from_arguments(DataConfig, a)
    cache = dump_checkpoint(a.checkpoint, a.out, data=data, config=config, overwrite=a.overwrite,
                            profile=not a.no_latency)
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

    given = {x for x in (a.path, a.cache) if x}
    if len(given) != 1:
        raise ValueError("name one cache: `branchy cache-info DIR` or `branchy cache-info --cache DIR`")
    path = given.pop()
    cache = FeatureCache.open(path, verify=a.verify)
    if a.verify:
        print(f"verified: all {len(cache.manifest['files'])} files of {path} match their SHA-256")
    print_cache_info(cache)
    return 0


command("cache-info", "splits, exits, per-exit accuracy, entropy and cumulative cost of a cache")(
    (_cache_info_args, _cache_info_run))


def _profile_args(p):
    p.add_argument("--cache", required=True, help="cache directory whose segment costs to measure again")
    p.add_argument("--checkpoint", default=None, help="the model (default: the checkpoint the manifest names)")
    p.add_argument("--threads", type=POS_INT, default=None, help="torch threads to time with (default: torch's)")
    p.add_argument("--rounds", type=_number(int, 3), default=15, help="interleaved timing rounds (default 15)")
    p.add_argument("--batch-size", type=POS_INT, default=None, help="the larger batch (default: the dump's)")
    p.add_argument("--profile-time", type=POS, default=0.2,
                   help="seconds of timing per segment and batch size, over all rounds (default 0.2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="eager", type=str.lower, choices=_backends(),
                   help="what runs the segments: eager (profile 'measured'), compiled or onnxruntime (profile "
                        "'measured-BACKEND'); see branchy.backends")
    p.add_argument("--predictors", default=None,
                   help="a predictors folder fitted on this cache: measure their latency (pooling included) on the "
                        "same backend too, all in interleaved rounds; the old figures are kept as history")


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


def _profile_run(a) -> int:
    from branchy.cache import FeatureCache
    from branchy.dump import reprofile

    model = None
    if a.checkpoint:
        from branchy.checkpoint import load_checkpoint

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
    show = new[["segment", "k", "ms_b1", "ms_b1_spread", "ms_batch", "ms_batch_spread", "unstable"]].copy()
    if old is not None:
        show.insert(3, "old_ms_b1", old["ms_b1"].to_numpy())
    ov = cache.overhead(a.backend)
    print(f"re-measured {a.cache} on {a.backend}: ms at batch 1 and per batch of {int(new['batch_size'].iloc[0])}, medians over "
          f"{int(new['rounds'].iloc[0])} rounds; spread = IQR / median; the old table is in costs_history/")
    print(show.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if ov:
        print(f"runtime overhead ({a.backend}): {ov['sample_ms']:.4f} ms per sample + {ov['decision_ms']:.4f} ms per "
              f"side exit entered")
    if a.predictors:
        _profile_predictors(a, cache, preds)
    print_cache_info(cache)
    return 0


command("profile", "measure a cache's segment costs again (interleaved rounds), keeping the old as history")(
    (_profile_args, _profile_run))


# ----------------------------------------------------------------------------- predictors
def _fit_args(p):
    p.add_argument("--cache", required=True, help="feature cache directory (branchy dump)")
    add_arguments(p, PredictorsConfig, title="predictors")
    g = p.add_argument_group("exit rule (defines the gate and exit targets)")
    add_arguments(g, PolicyConfig, only=("measure", "target_acc"))
    g.add_argument("--thresholds", type=_float_list, default=None,
                   help="exit thresholds T, one per side exit (default: calibrated on calib, see --target-acc)")
    p.add_argument("--fit-split", default="calib", choices=["calib", "train", "test"],
                   help="split to fit on (calib; train warns; test is refused)")
    p.add_argument("--out", required=True, help="folder for the fitted predictors")


def _fit_run(a) -> int:
    from branchy.cache import FeatureCache
    from predictors.fit import evaluation_table, fit_predictor
    from predictors.store import save_predictors

    from .core.calibrate import resolve_rule

    pc, pol = from_arguments(PredictorsConfig, a), from_arguments(PolicyConfig, a)
    check_writable(a.out, folder=True, what="predictors folder")
    cache = FeatureCache.open(a.cache)
    rule = resolve_rule(cache, a.thresholds, pol.target_acc, pol.measure)
    print(f"exit rule: {rule.describe()}")
    fitted = [fit_predictor(cache, s, split=a.fit_split, folds=pc.folds) for s in pc.specs(cache.num_exits, rule)]
    save_predictors(fitted, a.out)
    print(f"saved {len(fitted)} predictor(s) to {a.out}")
    print(format_eval(evaluation_table(fitted, cache)))
    return 0


command("fit-predictors", "fit gate / exit / entropy predictors on a cache and print their evaluation")(
    (_fit_args, _fit_run))


# ----------------------------------------------------------------------------- simulate
def _simulate_args(p):
    p.add_argument("--cache", required=True, help="feature cache directory")
    p.add_argument("--predictors", default=None, help="folder of fitted predictors (enables gated and jump)")
    p.add_argument("--profile", action="append", default=None,
                   help="device profile name or JSON/YAML file (repeatable; default: measured). "
                        "See `branchy profiles`")
    add_arguments(p, PolicyConfig, title="policies")
    p.add_argument("--out", required=True, help="folder for summary.csv, pareto.csv, gates.csv and the plots")


def _simulate_run(a) -> int:
    from branchy.cache import FeatureCache

    from .study.outputs import simulate_to

    cfg = from_arguments(PolicyConfig, a)
    check_writable(a.out, folder=True, what="simulation folder")
    cache = FeatureCache.open(a.cache)
    preds = None
    if a.predictors:
        from predictors.store import load_predictors

        preds = load_predictors(a.predictors, cache)
    simulate_to(cache, a.out, predictors=preds, profiles=a.profile or ["measured"], cfg=cfg)
    print(f"\nwrote {a.out}/summary.csv, pareto.csv, gates.csv, thresholds.json and plots")
    return 0


command("simulate", "simulate latency vs accuracy of every policy on a cache (tables + plots)")(
    (_simulate_args, _simulate_run))


def _profiles_run(a) -> int:
    from .core.costs import PROFILES

    for name in PROFILES.names():
        p = PROFILES.get(name)
        figs = "" if p.measured else (f"  [{p.macs_per_s:.3g} MAC/s, {p.bytes_per_s:.3g} B/s, "
                                      f"{p.overhead_ms} ms/segment]")
        print(f"{name:15s} {p.description}{figs}")
    return 0


command("profiles", "list the registered device profiles")((_no_args, _profiles_run))


# ----------------------------------------------------------------------------- place
def _place_args(p):
    p.add_argument("--cache", required=True, help="feature cache directory")
    p.add_argument("--predictors", required=True, help="folder of fitted predictors")
    add_arguments(p, PlacementConfig, title="placement")
    add_arguments(p, PolicyConfig, only=("measure", "target_acc", "gate_max_drop", "risk"),
                  title="exit rule and gates (with --risk, --max-acc-drop is also the guaranteed drop)")
    p.add_argument("--out", required=True, help="folder for candidates.csv, placement.json and plots "
                                                "(one subfolder per strategy when several are given)")


def _place_run(a) -> int:
    from pathlib import Path

    from branchy.cache import FeatureCache
    from predictors.store import load_predictors

    from .core.costs import get_profile
    from .study.placement_study import run_placement, write_placement
    from .study.policies import calibrate

    pl = from_arguments(PlacementConfig, a)
    risk = getattr(a, "PolicyConfig.risk", None)
    if risk is not None and pl.latency_budget is not None:
        raise ValueError("--risk guarantees an accuracy drop: give it with --max-acc-drop EPS, not --latency-budget")
    cfg = from_arguments(PolicyConfig, a, max_acc_drop=pl.max_acc_drop if risk is not None else None)
    check_writable(a.out, folder=True, what="placement folder")
    prof = get_profile(pl.profile)
    cache = FeatureCache.open(a.cache)
    preds = load_predictors(a.predictors, cache)
    con = pl.constraint
    if cfg.risk is None:
        rule = calibrate(cache, cfg)
        print(f"exit rule: {rule.describe()}")
    else:
        rule = None
        print(f"risk control: rule and placement searched on half of calib, the choice certified by "
              f"Learn-then-Test on the other half (eps {cfg.max_acc_drop} pt, delta {cfg.risk})")
    for strategy in pl.strategies:
        out = Path(a.out) if len(pl.strategies) == 1 else Path(a.out) / strategy
        res, compare = run_placement(cache, preds, strategy, constraint=con, profile=prof, n_jobs=pl.n_jobs,
                                     seed=pl.seed, rule=rule, cfg=cfg)
        write_placement(res, compare, out, profile_name=prof.name)
        print(f"strategy {strategy}: {len(res.table)} placements scored on calib ({prof.name}); {con.describe()}")
        print(f"chosen: {res.chosen.describe()}")
        print(format_compare(compare))
        print(f"wrote {out}/placement.json, candidates.csv, comparison.csv, placement_map.png, placement_front.png")
    return 0


command("place", "search where exits and predictor gates go (scored on calib, chosen re-evaluated on test)")(
    (_place_args, _place_run))


# ----------------------------------------------------------------------------- validate
def _validate_args(p):
    p.add_argument("--run", required=True, help="study folder (branchy run / branchy demo output)")
    p.add_argument("--n", type=POS_INT, default=300, help="test samples, run one at a time (default 300)")
    p.add_argument("--reps", type=POS_INT, default=3, help="timed repetitions per sample and policy (median)")
    p.add_argument("--batch-size", type=POS_INT, default=64, help="batch for the batched run")
    p.add_argument("--backend", default="eager", type=str.lower, choices=_backends(),
                   help="eager, compiled or onnxruntime (its costs must have been "
                   "measured: branchy profile --backend)")


def _validate_run(a) -> int:
    from .study.validate import format_validate, recheck_line, validate_line, validate_run

    df, out = validate_run(a.run, n=a.n, reps=a.reps, batch_size=a.batch_size, backend=a.backend)
    print(f"real runtime vs simulator on {int(df.n.iloc[0])} test samples; ms per sample at batch 1, "
          f"{int(df.threads.iloc[0])} threads; simulated from the cache's measured costs and runtime overhead")
    print(format_validate(df))
    print(f"wrote {out}/validate*.csv and validate*.png")
    if recheck_line(df):
        print(recheck_line(df))
    print(validate_line(df))
    return 0


command("validate", "run the real runtime on test samples and compare measured with simulated latency")(
    (_validate_args, _validate_run))


# ----------------------------------------------------------------------------- demo
def _demo_args(p):
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--redo", action="store_true", help="recompute every step instead of reusing what is there")
    p.add_argument("--epochs", type=POS_INT, default=None, help="training epochs (default 30)")


def _demo_run(a) -> int:
    from .study.pipeline import run_demo

    run_demo(out=a.out, redo=a.redo, epochs=a.epochs)
    return 0


command("demo", "the main job on the embedded mnist5k: train, dump, predictors, placement, simulate, report")(
    (_demo_args, _demo_run))


def _run_args(p):
    p.add_argument("config", help="study config (YAML); see configs/")
    p.add_argument("--redo", action="store_true", help="recompute every step instead of reusing what is there")
    p.add_argument("--out", default=None, help="override the config's output folder")


def _run_run(a) -> int:
    from dataclasses import replace

    from .study.pipeline import run_study
    from .study.config import load_study

    cfg = load_study(a.config)  # validated before any work starts
    if a.out:
        cfg = replace(cfg, out=a.out)
    run_study(cfg, redo=a.redo)
    return 0


command("run", "run a whole study from a YAML config (train, dump, predictors, simulate, placement, report)")(
    (_run_args, _run_run))


# ----------------------------------------------------------------------------- entry
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="branchy", description="Early-exit networks, exit predictors and their "
                                     "placement: cache features once, fit predictors, search placements, simulate.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (anywhere on the "
                        "command line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add, _run, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add(p)
    return parser


EXPECTED_ERRORS = (UnknownNameError, ValueError, OSError, SetupError)  # OSError: missing, unwritable, full


def _one_line(e: BaseException) -> str:
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(msg.split()) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """The ``branchy`` command. Expected errors (bad input, missing or stale files, unknown names) print one
    line and exit 2; Ctrl-C prints one line and exits 130; anything else prints one line that says it is a
    bug and exits 1. ``--debug`` shows the traceback instead."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [v for v in argv if v != "--debug"]
    a = parser.parse_args(argv)
    if not a.command:
        parser.print_help()
        return 2
    try:
        return int(COMMANDS[a.command][1](a) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"branchy {a.command}: interrupted (nothing half-written is left as complete)", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as e:
        if debug:
            raise
        print(f"branchy {a.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback with --debug
        if debug:
            raise
        print(f"branchy {a.command}: internal error ({type(e).__name__}: {_one_line(e)}); this is a bug: rerun with "
              f"--debug for the traceback and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
