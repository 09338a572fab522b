"""The main job, end to end (the composition root): train → dump → predictors → simulate → placement →
report. Every step reuses what a previous run already wrote (checked by fingerprints and configs)
unless ``redo`` is set."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from branchy.data import DataConfig
from branchy.models import BackboneConfig
from branchy.train import TrainConfig

from .config import StudyConfig
from .result import StudyResult
from .steps import (log, print_simulation, start_clock, step_backends, step_dump, step_placements, step_predictors,
                    step_profilings, step_references, step_train, step_validate)


DEMO = StudyConfig(
    name="demo: B-LeNet on the embedded MNIST-5k",
    out="runs/demo",
    data=DataConfig("mnist5k"),
    model=BackboneConfig("b-lenet", exits=(0, 1)),
    train=TrainConfig(epochs=30, batch_size=64, lr=3e-3, augment_shift=2),
    backends=("eager", "onnxruntime"),
    realrun=100,
)


def run_study(cfg: StudyConfig, *, redo: bool = False) -> StudyResult:
    """Run the whole study; returns the tables and paths (and writes them under ``cfg.out``)."""
    from ..present.tables import format_eval, print_cache_info
    from .outputs import simulate_to

    start_clock()
    if cfg.placement.scheduler is not None:  # a wrong scheduler fails in one line now, not after training
        from placement.evaluator import connect_scheduler

        connect_scheduler(cfg.placement.scheduler).close()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "study.yaml")
    splits = cfg.data.load()
    model, test_eval = step_train(cfg, splits, out, redo)
    log("test accuracy per exit (%):")
    print(test_eval.assign(accuracy=100 * test_eval.accuracy).to_string(index=False, float_format="%.2f"))
    cache = step_dump(cfg, model, splits, out, redo)
    cache = step_backends(cfg, cache, model, redo)
    cache = step_profilings(cfg, cache, model)
    print_cache_info(cache)
    preds, pred_table, rule = step_predictors(cfg, cache, out, redo)
    log(f"exit rule: {rule.describe()}")
    if len(pred_table):
        log("predictor quality (cross-fitted on calib: calib rows are out of fold; rates are fractions of the "
            "samples that reach the predictor's exit):")
        print(format_eval(pred_table))
    pcfg = cfg.policies
    log("simulating every policy with buffering costs (decided on calib, reported on test)")
    profiles = list(cfg.profiles) + ([f"measured-{b}" for b in cfg.backends if b != "eager" and b in cache.backends]
                                     if "measured" in cfg.profiles and cache.manifest.get("device") == "cpu" else [])
    sim = simulate_to(cache, out / "simulate", predictors=preds, profiles=profiles, cfg=pcfg, verbose=False)
    placements = step_placements(cfg, cache, preds, rule, pcfg, out)
    print_simulation(sim, profiles)
    refs = step_references(cfg, cache, preds, rule, profiles, out, model=model, splits=splits)
    val = step_validate(cfg, cache, model, splits, preds, pcfg, rule, placements, out)
    result = StudyResult(out=out, cache=cache, test_eval=test_eval, predictors=preds, predictor_table=pred_table,
                         rule=rule, simulation=sim, placements=placements, config=cfg, validate=val, references=refs)
    if cfg.report:
        from .report import write_report

        result.report = write_report(result, out / "report.html")
        log(f"report: {result.report}")
    return result


def run_demo(out: str = "runs/demo", redo: bool = False, epochs: int | None = None) -> StudyResult:
    cfg = replace(DEMO, out=out)
    if epochs is not None:
        cfg = replace(cfg, train=replace(cfg.train, epochs=epochs))
    return run_study(cfg, redo=redo)


__all__ = ["DEMO", "run_demo", "run_study"]
