"""The steps of a study (:func:`analysis.study.pipeline.run_study`): each reuses what a previous run already
wrote (checked by fingerprints and configs) unless ``redo`` is set, and logs what it does."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from branchy.core import to_plain

from ..core.logs import log_to_stderr
from .config import StudyConfig

_T0 = [time.perf_counter()]


LOG = logging.getLogger("branchy.study")


def start_clock() -> None:
    """Count the log's seconds from now (a study's start), and make sure the log is seen: when nothing has
    configured :mod:`logging` (no handler on ``branchy`` or the root logger), the ``branchy`` logger writes its
    INFO lines to stderr; configure logging yourself (or ``branchy -q``) to change that."""
    _T0[0] = time.perf_counter()
    log_to_stderr(only_if_unconfigured=True)


def log(msg: str) -> None:
    """``[study +S s] msg`` at INFO on the ``branchy.study`` logger: S seconds since the study started, so each
    step's cost shows in the log."""
    LOG.info(f"[study +{time.perf_counter() - _T0[0]:.0f} s] {msg}")


def _jsonable(d):
    return json.loads(json.dumps(d, default=list))


def step_train(cfg: StudyConfig, splits, out: Path, redo: bool):
    from branchy.train import evaluate, load_checkpoint, read_checkpoint, train

    ckpt = out / "model" / "model.pt"
    if not redo and ckpt.exists():
        meta = read_checkpoint(ckpt)
        same = all(_jsonable(meta.get(k)) == _jsonable(to_plain(v)) for k, v in
                   (("train_config", cfg.train), ("backbone_config", cfg.model), ("data_config", cfg.data)))
        if same and meta.get("dataset_fingerprint") == splits.fingerprint():
            model, _ = load_checkpoint(ckpt)
            log(f"reusing {ckpt} (same config and data; --redo to retrain)")
            return model, evaluate(model, splits.test)
        log(f"{ckpt} was trained with another config or data: retraining")
    log(f"training {cfg.model.name} on {cfg.data.dataset} for {cfg.train.epochs} epochs")
    res = train(cfg.train, cfg.model, cfg.data, splits=splits, out_dir=ckpt.parent)
    dev = next(res.model.parameters()).device
    return res.model.cpu(), evaluate(res.model, splits.test, device=dev)


def step_dump(cfg: StudyConfig, model, splits, out: Path, redo: bool):
    from branchy.cache import CacheError, FeatureCache, dump

    d = out / "cache"
    if not redo:
        try:
            cache = FeatureCache.open(d, model=model, dataset=splits)
            if cache.manifest["pooling"] == cfg.dump.pooling:
                log(f"reusing cache {d}")
                return refresh_drifted(cfg, cache, model)
        except CacheError:
            pass
    log(f"dumping features, logits and costs to {d}")
    return dump(model, splits, d, cfg.dump, overwrite=True, checkpoint=str(out / "model" / "model.pt"))


def refresh_drifted(cfg: StudyConfig, cache, model):
    """A reused cache whose measured costs were profiled while the machine ran the speed probe more than
    :data:`branchy.runtime.DRIFT_LIMIT` times slower or faster than now is re-profiled (every backend it holds),
    instead of letting stale costs decide the study."""
    import torch

    from branchy.cache import reprofile
    from branchy.runtime import DRIFT_LIMIT, drift

    rec = cache.manifest.get("timing")
    if cache.manifest.get("device") != "cpu" or not rec or np.isnan(cache.cost_vector("stage", "ms_b1")).any():
        return cache
    threads = torch.get_num_threads()
    torch.set_num_threads(int(rec.get("threads") or threads))
    try:
        d = drift(rec)
    finally:
        torch.set_num_threads(threads)
    if d is None or 1 / DRIFT_LIMIT <= d <= DRIFT_LIMIT:
        return cache
    log(f"the machine runs the speed probe {d:.2f}x {'slower' if d > 1 else 'faster'} than when {cache.path}'s "
        f"costs were profiled (limit {DRIFT_LIMIT:g}x): re-profiling them")
    for b in cache.backends:
        cache = reprofile(cache.path, model, backend=b, min_run_time=cfg.dump.profile_time)
    return cache


def step_predictors(cfg: StudyConfig, cache, out: Path, redo: bool):
    from predictors.fit import evaluation_table, fit_predictors
    from predictors.store import load_predictors, save_predictors

    from ..core.policies import calibrate

    pc = cfg.predictors
    rule = calibrate(cache, cfg.policies)
    if cache.chained:  # no policy can gate or jump over an exit here, so no predictor can be used
        log(f"predictors skipped: the cache's exits are chained ({cache.chain}), so no exit can be gated or jumped "
            f"over without changing the later exits' answers")
        import pandas as pd

        return {}, pd.DataFrame(), rule
    specs = pc.specs(cache.num_exits, rule)
    d = out / "predictors"
    fitted = None
    if not redo and d.exists():
        try:
            have = load_predictors(d, cache)
            if all(s.name in have and have[s.name].spec == s and have[s.name].folds == pc.folds for s in specs):
                fitted = [have[s.name] for s in specs]
                log(f"reusing predictors in {d}")
        except (ValueError, FileNotFoundError):
            fitted = None
    if fitted is None:
        models = ", ".join(dict.fromkeys((pc.model, *pc.baselines)))
        log(f"cross-fitting {len(specs)} predictors ({models}) on calib ({pc.folds} folds, then refit on all)")
        fitted = fit_predictors(cache, specs, folds=pc.folds)
        save_predictors(fitted, d)
    backends = [b for b in cfg.backends if b != "eager" and b in cache.backends]
    for b in backends:  # the predictors' latency on every backend the segments were measured on
        todo = [p for p in fitted if b not in (p.cost.get("backends") or {})]
        if todo:
            log(f"measuring {len(todo)} predictors' latency on the {b} backend")
            from predictors.cost import remeasure

            remeasure(todo, cache, backend=b, min_run_time=cfg.dump.profile_time * len(todo) / 2)
            save_predictors(todo, d)
    table = evaluation_table(fitted, cache)
    table.to_csv(d / "evaluation.csv", index=False)
    return {p.spec.name: p for p in fitted}, table, rule


def step_backends(cfg: StudyConfig, cache, model, redo: bool):
    """Measure the segment costs on every extra runtime backend (profile ``measured-BACKEND``)."""
    from branchy.cache import reprofile

    if cache.manifest.get("device") != "cpu" or np.isnan(cache.cost_vector("stage", "ms_b1")).any():
        return cache
    for b in cfg.backends:
        if b == "eager" or (b in cache.backends and not redo):
            continue
        if cache.chained:  # its heads read earlier heads' outputs: only eager runs them (branchy.runtime.prepare)
            log(f"the {b} backend skipped: the cache's exits are chained ({cache.chain}), only eager runs them")
            continue
        log(f"measuring segment costs on the {b} backend (profile measured-{b})")
        cache = reprofile(cache.path, model, backend=b, min_run_time=cfg.dump.profile_time)
    return cache


def step_references(cfg: StudyConfig, cache, preds: dict, rule, profiles: list, out: Path, *, model=None,
                    splits=None):
    """Do predictors pay here? Per profile the best predictor-free policy and the best placement with a predictor,
    decided on calib under the placement constraint, compared on test (:func:`analysis.study.baselines.
    compare_references`); with ``cfg.realrun`` samples, a measured profile's decided policies also run for real on
    its backend (:func:`analysis.study.realrun.compare_for_real`). Written to ``simulate/references.csv`` and said in
    words."""
    import pandas as pd
    import torch

    from ..core.costs import get_profile
    from .realrun import compare_for_real

    n = min(cfg.realrun, cache.size("test")) if model is not None and splits is not None else 0
    x = splits.test.batch(torch.arange(n))[0] if n else torch.empty(0)
    rows = []
    for prof in profiles:
        log(f"references ({prof}): best predictor-free policy vs best placement with a predictor, decided on calib"
            + (f", then run for real on {n} test samples" if n and get_profile(prof).measured else ""))
        rows.append(compare_for_real(cache, preds, rule=rule, cfg=cfg.policies, constraint=cfg.placement.constraint,
                                     profile=prof, model=model, test_x=x,
                                     n_boot=cfg.policies.bootstrap, n_jobs=cfg.placement.n_jobs,
                                     seed=cfg.placement.seed))
        print(f"  {rows[-1]['verdict']}")
    df = pd.DataFrame(rows)
    (out / "simulate").mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "simulate" / "references.csv", index=False)
    return df


def step_profilings(cfg: StudyConfig, cache, model):
    """Re-profile the measured costs until the cache holds ``cfg.profilings`` independent profilings of every
    backend (the current table and those kept in ``costs_history/``), each in interleaved rounds as ``branchy
    profile`` does; the comparison's CIs resample them (:func:`analysis.core.costs.measured_cost_models`)."""
    from branchy.cache import reprofile

    from ..core.costs import measured_cost_models

    if cfg.profilings <= 1 or cache.manifest.get("device") != "cpu" \
            or np.isnan(cache.cost_vector("stage", "ms_b1")).any():
        return cache
    for b in [b for b in cfg.backends if b in cache.backends]:
        prof = "measured" if b == "eager" else f"measured-{b}"
        have = len(measured_cost_models(cache, prof))
        for i in range(have, cfg.profilings):
            log(f"re-profiling the {b} segment costs ({i + 1} of {cfg.profilings} independent profilings)")
            cache = reprofile(cache.path, model, backend=b, min_run_time=cfg.dump.profile_time)
    return cache


def step_validate(cfg: StudyConfig, cache, model, splits, preds, pcfg, rule, placements: dict, out: Path):
    """The real runtime against the simulator on ``cfg.validate`` test samples, on every backend (0: skip)."""
    import pandas as pd
    import torch

    from ..present import plots
    from ..present.plots import plot_validate
    from .validate import validate
    from .validate_lines import drift_line, fit_line, format_validate, pairs_line, recheck_line, validate_line

    if not cfg.validate:
        return None
    if np.isnan(cache.cost_vector("stage", "ms_b1")).any() or cache.manifest.get("device") != "cpu":
        log("validate skipped: the cache has no CPU latency measurement")
        return None
    n = min(cfg.validate, cache.size("test"))
    x = splits.test.batch(torch.arange(n))[0]
    pls = {f"placement ({s})": res.chosen for s, (res, _) in placements.items()}
    d = out / "validate"
    d.mkdir(exist_ok=True)
    frames = []
    for b in cfg.backends:
        if b not in cache.backends:
            continue
        log(f"validate: the real runtime ({b}) on {n} test samples at batch 1 against the simulator "
            f"(measured{'' if b == 'eager' else '-' + b} costs)")
        df = validate(cache, model, x, predictors=preds, cfg=pcfg, rule=rule, placements=pls, backend=b)
        tag = "" if b == "eager" else f"_{b}"
        df.to_csv(d / f"validate{tag}.csv", index=False)
        fig, _ = plot_validate(df, title=f"simulated vs measured ({b}, batch 1, {n} test samples)")
        plots.save(fig, d / f"validate{tag}.png")
        print(format_validate(df))
        for line in (pairs_line(df), recheck_line(df), fit_line(df), drift_line(df)):
            if line:
                print(line)
        print(validate_line(df))
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else None


def step_placements(cfg: StudyConfig, cache, preds: dict, rule, pcfg, out: Path) -> dict:
    """Every placement strategy of the study, searched on calib and written under ``out/placement``:
    ``{strategy: (SearchResult, comparison table)}`` (none on a cache with chained exits)."""
    from ..present.tables import format_compare
    from .placement_study import run_placement, write_placement
    from .plan import decision_plan

    pl = cfg.placement
    con = pl.constraint
    placements = {}
    if cache.chained:
        log(f"placement search skipped: the cache's exits are chained ({cache.chain}), no exit can be removed or "
            f"gated without changing the later exits' answers")
    for strategy in (pl.strategies if not cache.chained else ()):
        log(f"placement search '{strategy}' on calib ({pl.profile}): {con.describe()}")
        res, compare = run_placement(cache, preds, strategy, constraint=con, profile=pl.profile,
                                     n_jobs=pl.n_jobs, scheduler=pl.scheduler, seed=pl.seed, rule=rule, cfg=pcfg,
                                     **pl.options(strategy))
        write_placement(res, compare, out / "placement" / strategy, profile_name=pl.profile,
                        plan=decision_plan(cache, res.predictors or preds, res.chosen, rule, pcfg))
        placements[strategy] = (res, compare)
        log(f"chosen: {res.chosen.describe()} ({len(res.table)} candidates)")
        print(format_compare(compare))
    return placements


def print_simulation(sim: dict, profiles: list) -> None:
    """The headline of every profile, the gates' table and when a gate pays, as the study log shows them."""
    from ..core.stats import format_headline

    headline = sim["summary"]
    for prof in profiles:
        log(f"headline ({prof}): test split; latency in ms per sample at batch 1; speed-up over full; 95% CIs")
        print(format_headline(headline[headline.profile == prof]))
    if len(sim["gates"]):
        from ..present.tables import format_gates

        print(format_gates(sim["gates"]))
    for prof, lines in sim.get("explained", {}).items():
        log(f"when a gate pays ({prof}, calib; ms per sample at batch 1):")
        print("\n".join(f"  {line}" for line in lines))


__all__ = ["log", "print_simulation", "start_clock", "refresh_drifted", "step_backends", "step_dump", "step_placements",
           "step_predictors", "step_profilings", "step_references", "step_train", "step_validate"]
