"""``branchy export``: what a study decided, as a self-contained package that runs without torch.

The package holds every stage and exit head of the net (a head outputs its logits and its confidence, in float64
as the simulator computes it) and every gate and jump predictor of the placement (pooling included) as ONNX files,
a learned policy's leave predictors (their pooling as ONNX, their logistic model's numbers in the plan; the runner
computes the confidences so far and the score in numpy), the single graph with ``If`` nodes
(:mod:`analysis.deploy.graph`; not for a learned policy), ``plan.json`` (standard JSON: the input and its
normalisation, the exit rule, kept exits, gates with positions and cuts, the jump, the SHA-256 of every file and
the toolkit's version) and ``runner.py`` (numpy + onnxruntime: :mod:`analysis.deploy.runner`)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from branchy.cache import file_sha256
from branchy.exits import confidence_torch
from branchy.runtime import example_inputs, onnx_model
from placement import Placement

from ..core.evidence import Evidence
from ..core.policies import PolicyConfig
from ..study.plan import decide, decision_plan
from . import runner as runner_module
from .graph import build_graph

__all__ = ["ExportError", "export_package", "simulated"]


class ExportError(ValueError):
    """What cannot be exported (chained exits, a predictor with no ONNX form), with what to do instead."""


class _Head(torch.nn.Module):
    """An exit head and its confidence (float64, as :func:`branchy.exits.confidence_torch` computes it)."""

    def __init__(self, head: torch.nn.Module, measure: str) -> None:
        super().__init__()
        self.head, self.measure = head, measure

    def forward(self, h):
        z = self.head(h)
        return z, confidence_torch(z, self.measure)


def _onnx(mod: torch.nn.Module, example: torch.Tensor, path: Path, outputs: list[str]) -> None:
    """``mod`` exported with a dynamic batch dimension, input named ``x`` and outputs ``outputs``."""
    import onnx

    m = onnx_model(mod, example)
    rename = {m.graph.input[0].name: "x", **{o.name: n for o, n in zip(m.graph.output, outputs)}}
    for v in list(m.graph.input) + list(m.graph.output):
        v.name = rename.get(v.name, v.name)
    for node in m.graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        node.output[:] = [rename.get(o, o) for o in node.output]
    onnx.save_model(m, str(path))


def simulated(cache, predictors: dict, placement: Placement, rule, cfg: PolicyConfig | None = None,
              split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """The simulator's predictions and exits ``[N]`` of ``placement`` on ``split`` (decided on calib)."""
    from ..core.evidence import outcome

    r, cuts, _ = decide(cache, predictors, placement, rule, cfg)
    ev = Evidence.build(cache, split, measure=r.measure, predictors=predictors or None)
    o = outcome(ev, placement, r, cuts=cuts, name="placement")
    logits = cache.logits(split)
    return logits[np.arange(len(o.exit)), o.exit].argmax(-1), o.exit  # logits [N, K, C]


def _predictor_module(pred, pooling: str, what: str) -> torch.nn.Module:
    """A gate's score or a jump's target as a torch module (pooling included; torch MLP predictors only)."""
    from predictors.deploy import jump_callable, score_callable

    fn = jump_callable(pred, pooling) if what == "jump" else score_callable(pred, pooling)
    if not isinstance(fn, torch.nn.Module):
        raise ExportError(f"{pred.spec.name} is a {pred.spec.model} predictor, which has no ONNX form here: export "
                          f"runs torch predictors (fit them with --predictor-model nn)")
    return fn


class _PoolRound(torch.nn.Module):
    """A leave predictor's input features from the branch activation: pooled as the cache pooled them and rounded to
    the cache's feature dtype (as the scores were computed from them), as float32."""

    def __init__(self, pooling: str, feature_dtype: str) -> None:
        super().__init__()
        from branchy.models import Pool, parse_pooling

        self.pool, self.dt = Pool(parse_pooling(pooling)), getattr(torch, str(feature_dtype))

    def forward(self, h):
        return self.pool(h).to(self.dt).float()


def _leave_entry(pred, leave: dict, pooling: str, feature_dtype: str, example: torch.Tensor, tmp: Path) -> None:
    """A leave predictor as the runner computes it: its pooling as ONNX, its logistic model's numbers in the plan."""
    from predictors.deploy import linear_form

    lin = linear_form(pred.estimator)
    if lin is None:
        raise ExportError(f"{pred.spec.name} is a {pred.spec.model} leave predictor; export carries logistic ones "
                          f"(fit leave predictors with --predictor-model linear-cv or linear)")
    mean, scale, coef, b = lin
    leave["file"] = f"leave_{leave['exit']}.onnx"
    _onnx(_PoolRound(pooling, feature_dtype), example, tmp / leave["file"], ["features"])
    leave.update({"n_conf": int(pred.spec.n_conf), "mean": [float(v) for v in mean],
                  "scale": [float(v) for v in scale], "coef": [float(v) for v in coef], "intercept": float(b)})


def _normalise(splits) -> dict:
    """How raw images become the net's input: ``(x * scale - mean) / std`` per channel."""
    x = getattr(splits.test, "x", None)  # in-memory images; image files are decoded to uint8
    raw = "uint8" if x is None or x.dtype == torch.uint8 else str(x.dtype).replace("torch.", "")
    return {"scale": 1 / 255 if raw == "uint8" else 1.0, "mean": [float(v) for v in splits.info.mean],
            "std": [float(v) for v in splits.info.std], "raw_dtype": raw}


def _write_segments(model, plan: dict, predictors: dict, tmp: Path) -> list[torch.Tensor]:
    """Every stage and exit head, and the plan's gates and jump, as ONNX files in ``tmp`` (the plan's gates and jump
    get their ``file``); returns the example activations (``xs[k]``: stage k's input)."""
    xs = example_inputs(model, 2)
    for i in range(model.num_exits):
        _onnx(model.stages[i], xs[i], tmp / f"stage_{i}.onnx", ["h"])
        _onnx(_Head(model.exits[i], plan["rule"]["measure"]), xs[i + 1], tmp / f"exit_{i}.onnx",
              ["logits", "confidence"])
    for g in plan["gates"]:
        g["file"] = f"gate_{g['exit']}.onnx"
        _onnx(_predictor_module(predictors[g["predictor"]], plan["pooling"], "gate"), xs[g["at"] + 1], tmp / g["file"],
              ["score"])
    for lv in plan.get("leaves") or ():
        _leave_entry(predictors[lv["predictor"]], lv, plan["pooling"], plan["feature_dtype"], xs[lv["exit"] + 1], tmp)
    if plan["jump"] is not None:
        j = plan["jump"]
        j["file"] = "jump.onnx"
        _onnx(_predictor_module(predictors[j["predictor"]], plan["pooling"], "jump"), xs[j["at"] + 1],
              tmp / j["file"], ["target"])
    return xs


def export_package(model, cache, predictors: dict, placement: Placement, rule, out: str | Path, *,
                   splits, cfg: PolicyConfig | None = None, name: str = "") -> Path:
    """Write the package of ``placement`` (decided on calib as the evaluator scores it) to folder ``out`` (created;
    refused if it exists and is not empty). ``splits``: the dataset (its normalisation goes into the plan)."""
    from branchy import __version__

    if model.chained:
        raise ExportError(f"{model.config.name} has chained exits ({model.config.chain}): a head reads earlier heads' "
                          f"outputs, which the exported runner does not carry; export a net trained without chaining")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty: give a new folder (an export never overwrites)")
    if placement.jump_leave:
        raise ExportError("jump-and-leave has no exported form yet (its jump would also need the predictor's "
                          "probability): export the plain jump, or run it with the toolkit's runtime")
    plan = decision_plan(cache, predictors, placement, rule, cfg)
    plan["feature_dtype"] = cache.manifest.get("feature_dtype", "float32")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model = model.cpu().eval()
        xs = _write_segments(model, plan, predictors, tmp)
        c = model.config
        plan = {"format": runner_module.FORMAT, "format_version": runner_module.FORMAT_VERSION,
                "name": name or placement.describe(), "toolkit": f"branchy {__version__}",
                "model": {"name": c.name, "fingerprint": model.fingerprint(), "num_classes": c.num_classes},
                "input": {"shape": [1, c.in_channels, *c.image_size], "dtype": "float32",
                          "normalise": _normalise(splits)},
                "activations": [list(x.shape[1:]) for x in xs], **plan,
                "stages": [f"stage_{i}.onnx" for i in range(len(xs) - 1)],
                "heads": [f"exit_{i}.onnx" for i in range(len(xs) - 1)]}
        # a learned exit decision runs segment by segment (its confidences and logistic score in numpy)
        plan["graph"] = None if plan.get("leaves") else build_graph(plan, tmp)
        shutil.copyfile(runner_module.__file__, tmp / "runner.py")
        plan["files"] = {f.name: file_sha256(f) for f in sorted(tmp.iterdir())}
        (tmp / "plan.json").write_text(json.dumps(plan, indent=1, allow_nan=False))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left that looks like a package
        raise
    if out.exists():
        out.rmdir()
    tmp.rename(out)  # the package appears complete or not at all
    return out
