"""Commands on a whole study: ``validate`` (the real runtime against the simulator), ``demo``, ``run``, ``suite`` and
``report``."""
from __future__ import annotations

from .base import POS_INT, backend_names, command, run_or_steps


# ----------------------------------------------------------------------------- validate
def _validate_args(p):
    p.add_argument("--run", help="study folder (branchy run / branchy demo output); or the step-by-step outputs:")
    p.add_argument("--checkpoint", help="model.pt written by branchy train (with --cache)")
    p.add_argument("--cache", help="the cache branchy dump wrote from that checkpoint")
    p.add_argument("--predictors", help="folder of fitted predictors (branchy fit-predictors)")
    p.add_argument("--placement", action="append", default=[],
                   help="placement.json written by branchy place (repeat for several)")
    p.add_argument("--thresholds", help="exit rule file (a study's simulate/thresholds.json); default: calibrated "
                                        "on calib")
    p.add_argument("--out", help="folder for validate*.csv and .png (default: RUN/validate, or validate/ beside "
                                 "the cache)")
    p.add_argument("--n", type=POS_INT, default=300, help="test samples, run one at a time (default 300)")
    p.add_argument("--reps", type=POS_INT, default=3, help="timed repetitions per sample and policy (median)")
    p.add_argument("--batch-size", type=POS_INT, default=64, help="batch for the batched run")
    p.add_argument("--backend", default="eager", type=str.lower, choices=backend_names(),
                   help="eager, compiled or onnxruntime (its costs must have been "
                   "measured: branchy profile --backend)")


def _validate_run(a) -> int:
    from pathlib import Path

    from ..study.validate_files import validate_files, validate_run
    from ..study.validate_lines import drift_line, fit_line, format_validate, pairs_line, recheck_line, validate_line

    run_or_steps(a)
    if a.run:
        if a.out:
            raise ValueError("--out goes with the step-by-step outputs; with --run the results go to RUN/validate")
        df, out = validate_run(a.run, n=a.n, reps=a.reps, batch_size=a.batch_size, backend=a.backend)
    elif a.checkpoint and a.cache:
        df, out = validate_files(a.checkpoint, a.cache, out=a.out or Path(a.cache).parent / "validate",
                                 predictors=a.predictors, placements=a.placement, rule=a.thresholds, n=a.n,
                                 reps=a.reps, batch_size=a.batch_size, backend=a.backend)
    else:
        raise ValueError("give --run DIR (a study folder), or --checkpoint M --cache C [--predictors P] "
                         "[--placement PL.json ...] for step-by-step outputs")
    print(f"real runtime vs simulator on {int(df.n.iloc[0])} test samples; ms per sample at batch 1, "
          f"{int(df.threads.iloc[0])} threads; simulated from the cache's measured costs and runtime overhead")
    print(format_validate(df))
    print(f"wrote {out}/validate*.csv and validate*.png")
    for line in (pairs_line(df), recheck_line(df), fit_line(df), drift_line(df)):
        if line:
            print(line)
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
    from ..study.pipeline import run_demo

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

    from ..study.pipeline import run_study
    from ..study.config import load_study

    cfg = load_study(a.config)  # validated before any work starts
    if a.out:
        cfg = replace(cfg, out=a.out)
    run_study(cfg, redo=a.redo)
    return 0


command("run", "run a whole study from a YAML config (train, dump, predictors, simulate, placement, report)")(
    (_run_args, _run_run))



def _suite_args(p):
    p.add_argument("config", help="suite config (YAML), e.g. configs/suites/backbones.yaml")
    p.add_argument("--redo", action="store_true", help="recompute every study instead of reusing what is there")
    p.add_argument("--out", default=None, help="override the suite config's output folder")


def _suite_run(a) -> int:
    from dataclasses import replace

    from ..study.suite import load_suite, real_line, run_suite, suite_line

    suite = load_suite(a.config)  # every study config checked before any work
    if a.out:
        suite = replace(suite, out=a.out)
    df = run_suite(suite, redo=a.redo)
    print(f"wrote {suite.out}/comparison.csv ({len(df)} rows)")
    if real_line(df):
        print(real_line(df))
    print(suite_line(df))
    return 0


command("suite", "run a suite of studies (e.g. five backbones, clean and corrupted) and compare them in one table")(
    (_suite_args, _suite_run))


# ----------------------------------------------------------------------------- report
def _report_args(p):
    p.add_argument("--run", required=True, help="study folder (branchy run / branchy demo output)")
    p.add_argument("--out", default=None, help="HTML file to write (default RUN/report.html)")


def _report_run(a) -> int:
    from pathlib import Path

    from ..study.load_run import load_run
    from ..study.report import write_report

    path = write_report(load_run(a.run), Path(a.out) if a.out else Path(a.run) / "report.html")
    print(f"wrote {path}")
    return 0


command("report", "render a study's HTML report again from its run folder (verdict first; nothing recomputed)")(
    (_report_args, _report_run))
