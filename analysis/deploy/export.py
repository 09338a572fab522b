"""``branchy export``: what a study decided, as a self-contained package that runs without torch.

The package holds every stage and exit head of the net (a head outputs its logits and its confidence, in float64
as the simulator computes it) and every gate and jump predictor of the placement (pooling included) as ONNX files,
the single graph with ``If`` nodes (:mod:`analysis.deploy.graph`), ``plan.json`` (standard JSON: the input and its
normalisation, the exit rule, kept exits, gates with positions and cuts, the jump, the SHA-256 of every file and
the toolkit's version) and ``runner.py`` (numpy + onnxruntime: :mod:`analysis.deploy.runner`)."""
from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from branchy.core import json_safe
from branchy.exits import confidence_torch
from branchy.runtime import example_inputs
from placement import Placement

from ..core.evidence import Evidence, can_pass
from ..core.policies import PolicyConfig
from . import runner as runner_module
from .graph import build_graph

__all__ = ["ExportError", "decide", "export_package", "simulated"]


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

    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(mod.eval(), (example,), dynamo=True, dynamic_shapes=({0: batch},), verbose=False)
    m = prog.model_proto
    rename = {m.graph.input[0].name: "x", **{o.name: n for o, n in zip(m.graph.output, outputs)}}
    for v in list(m.graph.input) + list(m.graph.output):
        v.name = rename.get(v.name, v.name)
    for node in m.graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        node.output[:] = [rename.get(o, o) for o in node.output]
    onnx.save_model(m, str(path))


def decide(cache, predictors: dict, placement: Placement, rule, cfg: PolicyConfig | None = None) -> tuple:
    """The placement as the evaluator scores it: ``(rule, cuts, kept)`` with the rule it runs under (its own
    thresholds, or the default recalibrated for its kept exits), the gates' cuts tuned on calib out of fold, and
    the exits kept that some confidence can pass."""
    from ..study.placement_study import PlacementObjective

    obj = PlacementObjective(cache, predictors or {}, rule=rule, cfg=cfg or PolicyConfig())
    r = obj.rule_for(placement)
    kept = [bool(a and b) for a, b in zip(placement.kept, can_pass(r))]
    return r, obj.cuts(placement), kept


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


def _normalise(splits) -> dict:
    """How raw images become the net's input: ``(x * scale - mean) / std`` per channel."""
    d = splits.test
    return {"scale": 1 / 255 if d.x.dtype == torch.uint8 else 1.0, "mean": d._mean.flatten().tolist(),
            "std": d._std.flatten().tolist(), "raw_dtype": str(d.x.dtype).replace("torch.", "")}


def _thresholds(r) -> list:
    """Per exit the threshold, ``None`` where nothing passes (standard JSON has no infinity)."""
    return [None if not np.isfinite(v) else float(v) for v in r.thresholds]


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
    r, cuts, kept = decide(cache, predictors, placement, rule, cfg)
    pooling = cache.manifest.get("pooling", "avg")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model = model.cpu().eval()
    xs = example_inputs(model, 2)
    k = model.num_exits
    for i in range(k):
        _onnx(model.stages[i], xs[i], tmp / f"stage_{i}.onnx", ["h"])
        _onnx(_Head(model.exits[i], r.measure), xs[i + 1], tmp / f"exit_{i}.onnx", ["logits", "confidence"])
    gates = []
    for e, g in enumerate(placement.gates):
        if g is not None and kept[e]:
            mod = _predictor_module(predictors[g.predictor], pooling, "gate")
            _onnx(mod, xs[g.at + 1], tmp / f"gate_{e}.onnx", ["score"])
            cut = float(cuts.get(e, -np.inf))
            gates.append({"exit": e, "at": g.at, "predictor": g.predictor, "file": f"gate_{e}.onnx",
                          "cut": cut if np.isfinite(cut) else None})  # None: always enter (no JSON infinity)
    jump = None
    if placement.jump is not None:
        j = placement.jump
        _onnx(_predictor_module(predictors[j.predictor], pooling, "jump"), xs[j.at + 1], tmp / "jump.onnx", ["target"])
        jump = {"at": j.at, "predictor": j.predictor, "file": "jump.onnx"}
    c = model.config
    plan = {"format": runner_module.FORMAT, "format_version": runner_module.FORMAT_VERSION,
            "name": name or placement.describe(), "toolkit": f"branchy {__version__}",
            "model": {"name": c.name, "fingerprint": model.fingerprint(), "num_classes": c.num_classes},
            "input": {"shape": [1, c.in_channels, *c.image_size], "dtype": "float32", "normalise": _normalise(splits)},
            "activations": [list(x.shape[1:]) for x in xs],
            "rule": {"measure": r.measure, "thresholds": _thresholds(r), "lower_is_confident": r.lower_is_confident,
                     "tuned_by": r.tuned_by, "tuned_on": r.tuned_on},
            "placement": json_safe(placement.to_dict()), "describe": placement.describe(), "kept": kept,
            "stages": [f"stage_{i}.onnx" for i in range(k)], "heads": [f"exit_{i}.onnx" for i in range(k)],
            "gates": gates, "jump": jump, "pooling": pooling, "gate_rule": "enter the exit when score >= cut"}
    plan["graph"] = build_graph(plan, tmp)
    shutil.copyfile(runner_module.__file__, tmp / "runner.py")
    plan["files"] = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(tmp.iterdir())}
    (tmp / "plan.json").write_text(json.dumps(plan, indent=1, allow_nan=False))
    if out.exists():
        out.rmdir()
    tmp.rename(out)  # the package appears complete or not at all
    return out
