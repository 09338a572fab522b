"""A fitted predictor as the runtime runs it: the branch-point activation ``h`` ``[B, C, H, W]`` pooled as the
cache pooled it, then scored. Torch MLPs become one torch module (pooling, standardisation and the score
included) that a runtime backend can compile or export (:func:`branchy.runtime.compile_module`);
scikit-learn models run through numpy (:meth:`FittedPredictor.score_inputs`)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from branchy.runtime import compile_module
from branchy.models import Pool, parse_pooling, pool_features

from .calibration import CalibrationMap
from .torch_mlp import TorchMLPClassifier, TorchMLPRegressor


class TorchGate(torch.nn.Module):
    """Pooling + a torch MLP predictor + its enter score (a gate's probability of leaving at the exit, through
    its calibration map ``cal`` where it has one, or minus the forecast entropy), as one module."""

    def __init__(self, est, s: int | tuple[int, ...], target: str, cal: dict | None = None) -> None:
        super().__init__()
        self.pool, self.mlp, self.target, self.s = Pool(s), est.torch_module(), target, s
        self.cal = CalibrationMap(cal) if cal is not None else torch.nn.Identity()
        self.j = list(est.classes_).index(1) if target == "gate" and 1 in list(est.classes_) else -1
        self.scale, self.shift = float(getattr(est, "y_scale_", 1.0)), float(getattr(est, "y_mean_", 0.0))

    def forward(self, h):
        x = self.pool(h)
        z = self.mlp(x.float())
        if self.target == "gate":
            return self.cal(torch.softmax(z, 1)[:, self.j] if self.j >= 0 else torch.zeros_like(z[:, 0]))
        return -(z[:, 0] * self.scale + self.shift)


class TorchJump(torch.nn.Module):
    """Pooling + a torch MLP exit predictor: the exit it names (its class with the largest logit)."""

    def __init__(self, est, s: int | tuple[int, ...]) -> None:
        super().__init__()
        self.pool, self.mlp = Pool(s), est.torch_module()
        self.register_buffer("classes", torch.as_tensor(np.asarray(est.classes_), dtype=torch.long))

    def forward(self, h):
        x = self.pool(h)
        return self.classes[self.mlp(x.float()).argmax(1)]


def _fitted_torch(est) -> bool:
    return isinstance(est, (TorchMLPClassifier, TorchMLPRegressor)) and getattr(est, "net_", None) is not None


def _activation_only(pred, what: str) -> None:
    if pred.spec.with_confidences:
        raise ValueError(f"{pred.spec.name} reads earlier exits' confidences: the runtime's {what} sees the "
                         f"activation only")


def score_callable(pred, pooling: str, *, backend: str = "eager",
                   example: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``h -> score [B]`` of a gate or entropy predictor (enter when ``score >= cut``). ``example``: an
    activation like ``h`` (batch > 1), needed to compile for a backend other than eager."""
    _activation_only(pred, "gates")
    s, est = parse_pooling(pooling), pred.estimator
    if pred.spec.target not in ("gate", "entropy"):
        raise ValueError(f"{pred.spec.name} predicts an exit, not a gate decision")
    if _fitted_torch(est):
        mod = TorchGate(est, s, pred.spec.target, pred.calibration).eval()
        return compile_module(mod, example, backend) if backend != "eager" and example is not None else mod

    def fn(h):
        return torch.from_numpy(pred.score_inputs(pool_features(h, s).float().numpy()))
    return fn


def gate_callable(pred, cut: float, pooling: str, *, backend: str = "eager",
                  example: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``h -> bool [B]``: enter the exit where the predictor's score reaches ``cut``."""
    score = score_callable(pred, pooling, backend=backend, example=example)

    def fn(h):
        return score(h) >= cut
    return fn


def jump_callable(pred, pooling: str, *, backend: str = "eager",
                  example: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``h -> target exit [B]`` of an exit predictor, as the runtime's jump."""
    _activation_only(pred, "jump")
    s, est = parse_pooling(pooling), pred.estimator
    if pred.spec.target not in ("exit", "oracle"):
        raise ValueError(f"{pred.spec.name} predicts {pred.spec.target}, not an exit: it cannot jump")
    if isinstance(est, TorchMLPClassifier) and getattr(est, "net_", None) is not None:
        mod = TorchJump(est, s).eval()
        return compile_module(mod, example, backend) if backend != "eager" and example is not None else mod

    def fn(h):
        return torch.from_numpy(np.asarray(pred.predict_inputs(pool_features(h, s).float().numpy()), dtype=np.int64))
    return fn


def runtime_callable(pred, pooling: str, *, backend: str = "eager",
                     example: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the runtime calls for ``pred`` at its branch point: the score of a gate or entropy predictor,
    the target of an exit predictor."""
    if pred.spec.target in ("exit", "oracle"):
        return jump_callable(pred, pooling, backend=backend, example=example)
    return score_callable(pred, pooling, backend=backend, example=example)


__all__ = ["TorchGate", "TorchJump", "gate_callable", "jump_callable", "runtime_callable", "score_callable"]
