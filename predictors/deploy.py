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


def leave_callable(pred, cut: float, pooling: str, *, feature_dtype: str = "float32") -> Callable:
    """``(h, [logits of the kept exits so far]) -> bool [B]`` of a leave predictor (the runtime's ``leave``): the
    activation pooled as the cache pooled it and rounded to its ``feature_dtype`` (as the scores were computed from
    it), the confidences of the exits so far (entropy, max-probability, margin, computed in numpy from the logits
    as :func:`predictors.inputs.make_inputs` does), the predictor's score, ``>= cut``."""
    from branchy.exits import confidence

    from .inputs import CONFIDENCES

    if pred.spec.target != "leave":
        raise ValueError(f"{pred.spec.name} predicts {pred.spec.target}, not a leave decision")
    s, dt = parse_pooling(pooling), getattr(torch, str(feature_dtype))
    n = pred.spec.n_conf
    score = leave_scorer(pred)

    def fn(h, zs):
        x = pool_features(h, s).to(dt).float().numpy()
        if n:
            z = torch.stack([zz.float() for zz in zs[:n]], 1).numpy()
            x = np.concatenate([x, *[confidence(z, m).astype(np.float32) for m in CONFIDENCES]], 1)
        return torch.from_numpy(np.asarray(score(x) >= cut))
    return fn


def leave_scorer(pred) -> Callable[[np.ndarray], np.ndarray]:
    """``x [B, D] -> score [B]`` of a leave predictor as the runtime computes it, its scores the model's own without
    scikit-learn's input checks per sample: a binary logistic model on standardised inputs in numpy, in
    scikit-learn's own order and precision (the float32 inputs standardised in float32, the dot product with the
    float64 weights, the logistic function); a torch MLP as its ``predict_proba`` computes (standardised in float32,
    the float64 network, the softmax in numpy); any other model through
    :meth:`~predictors.fitted.FittedPredictor.score_inputs`."""
    est = pred.estimator
    if isinstance(est, TorchMLPClassifier) and _fitted_torch(est) and list(np.asarray(est.classes_)) == [0, 1]:
        return _torch_mlp_scorer(est)
    lin = linear_form(est)
    if lin is None:
        return pred.score_inputs
    from scipy.special import expit

    mean, scale, coef, b = lin

    mean32, scale32, coef_t = mean.astype(np.float32), scale.astype(np.float32), coef.reshape(-1, 1)

    def score(x):
        xs = np.array(x, dtype=np.float32)
        xs -= mean32
        xs /= scale32
        return expit((xs @ coef_t + b).reshape(-1))
    return score


def _torch_mlp_scorer(est) -> Callable[[np.ndarray], np.ndarray]:
    """A fitted binary :class:`TorchMLPClassifier`'s probability of class 1, computed as its ``predict_proba``."""
    mean, scale, net = est.mean_, est.scale_, est.net_

    def score(x):
        xt = torch.from_numpy(np.ascontiguousarray((np.asarray(x, dtype=np.float32) - mean) / scale, dtype=np.float64))
        with torch.no_grad():
            z = net(xt).numpy()
        z = z - z.max(1, keepdims=True)
        p = np.exp(z)
        return (p / p.sum(1, keepdims=True))[:, 1]
    return score


def linear_form(est) -> tuple[np.ndarray, np.ndarray, np.ndarray, float] | None:
    """``(mean, scale, coef, intercept)`` with P(class 1) = expit(((x - mean) / scale) @ coef + intercept) of a binary
    logistic model on standardised inputs (``StandardScaler`` then ``LogisticRegression[CV]`` whose classes are 0 and
    1); None for any other model."""
    from sklearn.pipeline import Pipeline

    if not isinstance(est, Pipeline) or len(est.steps) != 2:
        return None
    sc, lr = est.steps[0][1], est.steps[1][1]
    if type(sc).__name__ != "StandardScaler" or type(lr).__name__ not in ("LogisticRegression", "LogisticRegressionCV"):
        return None
    if list(np.asarray(lr.classes_)) != [0, 1] or not (sc.with_mean and sc.with_std):
        return None
    coef = np.asarray(lr.coef_, dtype=np.float64)[0]
    return (np.asarray(sc.mean_), np.asarray(sc.scale_), coef, float(np.asarray(lr.intercept_).ravel()[0]))


def jump_leave_callable(pred, cut: float, pooling: str, *, feature_dtype: str = "float32") -> Callable:
    """``h -> (target exit [B], sure [B])`` of an exit predictor for jump-and-leave: the exit it names and whether
    its probability of that exit reaches ``cut`` (a sure row leaves there without the confidence check)."""
    _activation_only(pred, "jump")
    if pred.spec.target not in ("exit", "oracle"):
        raise ValueError(f"{pred.spec.name} predicts {pred.spec.target}, not an exit: it cannot jump")
    s, dt = parse_pooling(pooling), getattr(torch, str(feature_dtype))

    def fn(h):
        r = pred.raw_inputs(pool_features(h, s).to(dt).float().numpy())
        return (torch.from_numpy(np.asarray(pred._predict(r), dtype=np.int64)), torch.from_numpy(r.max(1) >= cut))
    return fn


def runtime_callable(pred, pooling: str, *, backend: str = "eager",
                     example: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the runtime calls for ``pred`` at its branch point: the score of a gate or entropy predictor,
    the target of an exit predictor."""
    if pred.spec.target in ("exit", "oracle"):
        return jump_callable(pred, pooling, backend=backend, example=example)
    return score_callable(pred, pooling, backend=backend, example=example)


__all__ = ["TorchGate", "TorchJump", "gate_callable", "jump_callable", "jump_leave_callable", "leave_callable",
           "leave_scorer", "linear_form", "runtime_callable", "score_callable"]
