"""Execution backends for the runtime and the cost profiler: every stage and exit head of a branchy net
prepared once as a callable ``torch.Tensor -> torch.Tensor`` (batch dimension dynamic).

* ``eager``: the PyTorch modules as they are.
* ``compiled``: each segment traced and frozen with TorchScript (``torch.jit.trace`` + ``torch.jit.freeze``;
  ``optimize_for_inference`` is left out: its MKL-DNN pooling refuses adaptive pools of uneven sizes): a
  compilation path that needs no C++ toolchain at run time.
* ``onnxruntime``: each segment exported with torch's dynamo-based ONNX exporter (needs ``onnxscript``) and
  run with ONNX Runtime's CPU provider, the engine edge deployments use.

Chained exits (BoostNet, ZTW) read earlier heads' outputs: only ``eager`` runs them."""
from __future__ import annotations

from typing import Callable

import torch

from ..core import Registry, SetupError

Segment = Callable[[torch.Tensor], torch.Tensor]
BACKENDS: Registry[Callable] = Registry("runtime backend", plugins="branchy.backends")


def list_backends() -> list[str]:
    return BACKENDS.names()


def example_inputs(model, batch: int = 1) -> list[torch.Tensor]:
    """``xs[k]``: the input of stage k (``xs[K]``: the last stage's output), from a random image."""
    c = model.config
    h = torch.randn(batch, c.in_channels, *c.image_size)
    xs = []
    with torch.inference_mode():
        for k in range(model.num_exits):
            xs.append(h)
            h = model.run_stage(k, h)
    xs.append(h)
    return [x.clone() for x in xs]


_PREPARED: dict = {}


def prepare(model, backend: str = "eager", *, threads: int | None = None) -> tuple[list[Segment], list[Segment]]:
    """``(stages, heads)``: per exit k the stage and the exit head as callables on the named backend.
    Compiled and exported segments are kept for the same weights, backend and threads (an export takes
    seconds)."""
    build = BACKENDS.get(backend)
    model = model.cpu().eval() if backend != "eager" else model.eval()
    if backend != "eager" and model.chained:
        raise ValueError(f"{model.config.name} has chained exits ({model.config.chain}): its heads read earlier "
                         f"heads' outputs, which only the eager backend runs; use --backend eager")
    threads = threads or torch.get_num_threads()
    if backend == "eager":
        return build(model, threads=threads)
    key = (model.fingerprint(), repr(model.config), backend, threads)
    if key not in _PREPARED:
        _PREPARED[key] = build(model, threads=threads)
    return _PREPARED[key]


@BACKENDS.register("eager", doc="PyTorch modules as they are")
def _eager(model, *, threads: int):
    return [model.stages[k] for k in range(model.num_exits)], [model.exits[k] for k in range(model.num_exits)]


def compile_module(mod, x: torch.Tensor, backend: str, *, threads: int | None = None) -> Segment:
    """One module (input like ``x``, batch dimension dynamic) as a callable on ``backend``."""
    threads = threads or torch.get_num_threads()
    mod = mod.eval()
    if backend == "eager":
        return mod
    if backend == "compiled":
        with torch.inference_mode(False), torch.no_grad():
            return torch.jit.freeze(torch.jit.trace(mod, (x,), check_trace=False).eval())
    if backend == "onnxruntime":
        return _onnx_session(mod, x, threads)
    BACKENDS.get(backend)
    raise ValueError(f"backend {backend!r} cannot compile a module")


@BACKENDS.register("compiled", doc="each segment traced and frozen with TorchScript")
def _compiled(model, *, threads: int):
    xs = example_inputs(model, 2)
    stages = [compile_module(model.stages[k], xs[k], "compiled") for k in range(model.num_exits)]
    heads = [compile_module(model.exits[k], xs[k + 1], "compiled") for k in range(model.num_exits)]
    return stages, heads


def onnx_model(mod, x: torch.Tensor):
    """``mod`` (input like ``x``) as an ONNX ``ModelProto`` from torch's dynamo exporter, its batch dimension
    dynamic (needs ``onnxscript``); the exporter's warnings silenced."""
    import warnings

    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.onnx.export(mod.eval(), (x,), dynamo=True, dynamic_shapes=({0: batch},),
                                 verbose=False).model_proto


def _onnx_session(mod, x: torch.Tensor, threads: int) -> Segment:
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - installed with the project
        raise SetupError("the onnxruntime backend needs the packages onnxruntime and onnxscript "
                           "(pip install onnxruntime onnxscript)") from e
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no spin-waiting: ORT's idle threads would otherwise compete with torch's (confidence, buffers) for the
    # same cores (a gated policy ran 15x slower on 2 cores with spinning on)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    sess = ort.InferenceSession(onnx_model(mod, x).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(h: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {name: h.detach().contiguous().numpy()})[0])

    return run


@BACKENDS.register("onnxruntime", doc="each segment exported to ONNX and run with ONNX Runtime (CPU)")
def _onnxruntime(model, *, threads: int):
    xs = example_inputs(model, 2)
    stages = [_onnx_session(model.stages[k], xs[k], threads) for k in range(model.num_exits)]
    heads = [_onnx_session(model.exits[k], xs[k + 1], threads) for k in range(model.num_exits)]
    return stages, heads


__all__ = ["BACKENDS", "Segment", "compile_module", "example_inputs", "list_backends", "onnx_model", "prepare"]
