"""Commands that take a study's decision off the machine: ``export`` (a torch-free ONNX package of a placement)."""
from __future__ import annotations

from .base import command, run_or_steps


def _export_args(p):
    p.add_argument("--run", help="study folder (branchy run / branchy demo output); or the step-by-step outputs:")
    p.add_argument("--strategy", default=None, help="with --run: whose chosen placement (default: the study's first "
                                                     "strategy)")
    p.add_argument("--checkpoint", help="model.pt written by branchy train (with --cache and --placement)")
    p.add_argument("--cache", help="the cache branchy dump wrote from that checkpoint")
    p.add_argument("--predictors", help="folder of fitted predictors the placement's gates name")
    p.add_argument("--placement", help="placement.json written by branchy place")
    p.add_argument("--thresholds", help="exit rule file (a study's simulate/thresholds.json; default: calibrated on "
                                        "calib)")
    p.add_argument("--out", required=True, help="the package folder to write (new, or empty)")


def _export_run(a) -> int:
    from ..deploy.files import export_files, export_run

    run_or_steps(a)
    if a.run:
        out, plan = export_run(a.run, a.out, strategy=a.strategy)
    elif a.checkpoint and a.cache and a.placement:
        out, plan = export_files(a.checkpoint, a.cache, a.placement, a.out, predictors=a.predictors,
                                 rule=a.thresholds)
    else:
        raise ValueError("give --run DIR (a study folder), or --checkpoint M --cache C --placement PL.json "
                         "[--predictors P] [--thresholds T.json]")
    print(f"exported {plan['describe']} ({plan['rule']['measure']} thresholds {plan['rule']['thresholds']}) to {out}: "
          f"{len(plan['files'])} files; on the device: python {out}/runner.py {out} --input x.npy "
          f"(or profile --out costs.json)")
    return 0


command("export", "write a placement as a torch-free package: ONNX segments and gates, one graph with If nodes, "
                  "plan.json and runner.py")((_export_args, _export_run))
