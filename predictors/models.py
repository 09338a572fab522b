"""Predictor models by name. Each entry builds a classifier (gates, target exit) or a regressor
(entropy) following scikit-learn's estimator contract."""
from __future__ import annotations

from typing import Callable

import numpy as np

from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import (LogisticRegression, LogisticRegressionCV, Ridge, RidgeCV, SGDClassifier,
                                  SGDRegressor)
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from branchy.core import Registry

from .torch_mlp import TorchMLPClassifier, TorchMLPRegressor

PREDICTOR_MODELS: Registry[Callable[..., object]] = Registry("predictor model", plugins="branchy.predictor_models")


_CONTROLLER = None


def one_thread():
    """Context: one OpenMP thread for fitting and running a predictor. These are small models on a few
    thousand rows; several OpenMP threads spin and stall on a busy 2-core machine (a gradient-boosted fit
    took 17 s instead of 0.06 s). The thread pools are looked up once per process: a fresh
    ``threadpool_limits`` scans every loaded library (4-7 ms), which would dwarf a predictor's own batch-1
    latency when it runs in front of every sample."""
    global _CONTROLLER
    from threadpoolctl import ThreadpoolController

    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="openmp")


def list_predictor_models() -> list[str]:
    return PREDICTOR_MODELS.names()


def make_estimator(name: str, task: str, *, class_weight=None, random_state: int = 0, **params):
    """A fresh estimator: ``task`` is ``'classification'`` or ``'regression'``."""
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    return PREDICTOR_MODELS.get(name)(task=task, class_weight=class_weight, random_state=random_state, **params)


@PREDICTOR_MODELS.register("linear", doc="logistic regression / ridge regression on standardised inputs")
def _linear(*, task, class_weight=None, random_state=0, C: float = 1.0, alpha: float = 1.0):
    if task == "classification":
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, class_weight=class_weight,
                                                                  random_state=random_state))
    return make_pipeline(StandardScaler(), Ridge(alpha=alpha))


@PREDICTOR_MODELS.register("linear-cv", doc="logistic / ridge regression on standardised inputs, the L2 strength chosen "
                                            "by an inner 3-fold cross-validation (ROC AUC, one-vs-rest; C in 1e-4..1)")
def _linear_cv(*, task, class_weight=None, random_state=0, Cs: tuple = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)):
    """With hundreds of pooled features and a thousand calib samples a fixed C=1 ranks worse than the entropy it
    is given (demo exit 0: ROC AUC 0.785 at C=1, 0.904 with C chosen, the entropy alone 0.919)."""
    if task == "classification":
        import inspect

        quiet = ({"l1_ratios": (0.0,), "use_legacy_attributes": False}  # scikit-learn >= 1.9's coming defaults
                 if "use_legacy_attributes" in inspect.signature(LogisticRegressionCV).parameters else {})
        return make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=list(Cs), cv=3, scoring="roc_auc_ovr",
                                                                    max_iter=2000, class_weight=class_weight,
                                                                    random_state=random_state, **quiet))
    return make_pipeline(StandardScaler(), RidgeCV(alphas=[1 / c for c in Cs]))


@PREDICTOR_MODELS.register("sgd", doc="logistic / squared-loss regression by SGD on standardised inputs; learns "
                                      "incrementally (partial_fit) from features read on demand")
def _sgd(*, task, class_weight=None, random_state=0, alpha: float = 1e-4, max_epochs: int = 5):
    if task == "classification":
        return make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss", alpha=alpha, max_iter=max_epochs,
                                                             tol=None, class_weight=class_weight,
                                                             random_state=random_state))
    return make_pipeline(StandardScaler(), SGDRegressor(alpha=alpha, max_iter=max_epochs, tol=None,
                                                        random_state=random_state))


def fit_incremental(est, rows, y: np.ndarray, *, seed: int = 0):
    """Fit a :func:`_sgd` pipeline on :class:`~predictors.torch_mlp.Rows` a chunk at a time: the scaler's
    moments over every chunk, then ``max_iter`` passes of ``partial_fit`` over the chunks in a seeded order
    (class weights computed from ``y`` up front, as ``partial_fit`` takes no ``'balanced'``)."""
    scaler, model = est.steps[0][1], est.steps[-1][1]
    parts = rows.chunk_index()
    for i in parts:
        scaler.partial_fit(rows.take(i))
    kw = {}
    if isinstance(model, SGDClassifier):
        kw["classes"] = np.unique(y)
        if model.class_weight == "balanced":
            from sklearn.utils.class_weight import compute_class_weight

            w = compute_class_weight("balanced", classes=kw["classes"], y=y)
            model.set_params(class_weight=dict(zip(kw["classes"].tolist(), w.tolist())))
    rng = np.random.default_rng(seed)
    for _ in range(model.max_iter):
        for k in rng.permutation(len(parts)):
            model.partial_fit(scaler.transform(rows.take(parts[k])), y[parts[k]], **kw)
    return est


@PREDICTOR_MODELS.register("hgb", doc="histogram gradient-boosted trees (scikit-learn)")
def _hgb(*, task, class_weight=None, random_state=0, max_iter: int = 100, max_depth: int | None = 4,
         learning_rate: float = 0.1):
    if task == "classification":
        return HistGradientBoostingClassifier(max_iter=max_iter, max_depth=max_depth, learning_rate=learning_rate,
                                              class_weight=class_weight, random_state=random_state)
    return HistGradientBoostingRegressor(max_iter=max_iter, max_depth=max_depth, learning_rate=learning_rate,
                                         random_state=random_state)


@PREDICTOR_MODELS.register("mlp", doc="scikit-learn MLP (64 hidden, Adam, L2) on standardised inputs")
def _mlp(*, task, class_weight=None, random_state=0, hidden: tuple[int, ...] = (64,), alpha: float = 1e-3,
         max_iter: int = 300):
    kw = dict(alpha=alpha, max_iter=max_iter, learning_rate_init=3e-3, random_state=random_state)
    if task == "classification":  # scikit-learn's MLP has no class weights
        return make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=hidden, **kw))
    return make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=hidden, **kw))


@PREDICTOR_MODELS.register("nn", doc="torch MLP: the thesis's NN-based exit / entropy predictor")
def _nn(*, task, class_weight=None, random_state=0, hidden: tuple[int, ...] = (64,), max_epochs: int = 200,
        lr: float = 3e-3, batch_size: int = 128):
    if task == "classification":
        return TorchMLPClassifier(hidden=hidden, max_epochs=max_epochs, lr=lr, class_weight=class_weight,
                                  random_state=random_state, batch_size=batch_size)
    return TorchMLPRegressor(hidden=hidden, max_epochs=max_epochs, lr=lr, random_state=random_state,
                             batch_size=batch_size)


@PREDICTOR_MODELS.register("dummy", doc="baseline: the majority class / the mean (no input used)")
def _dummy(*, task, class_weight=None, random_state=0):
    return DummyClassifier(strategy="prior") if task == "classification" else DummyRegressor()


__all__ = ["PREDICTOR_MODELS", "fit_incremental", "list_predictor_models", "make_estimator", "one_thread"]
