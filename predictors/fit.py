"""Fitting predictors on a cache: cross-fitted on calib (out-of-fold scores for every choice made on calib),
refit on rows, calibrated, and evaluated on a split."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from branchy.cache import FeatureCache
from branchy.core import show_progress
from branchy.exits import ExitRule

from .calibration import fit_calibration
from .cost import predictor_cost
from .inputs import CacheRows, make_inputs
from .models import fit_incremental, make_estimator, one_thread
from .torch_mlp import Rows
from .targets import make_target


from .fitted import FittedPredictor, aligned_proba
from .spec import PredictorSpec

STREAMING = ("nn", "sgd")  # models that fit on rows read on demand (torch MLP; SGD by partial_fit)
STREAM_BYTES = 2 << 30  # inputs larger than this are read on demand by the STREAMING models (stream=None)


def _fit(est, x, y: np.ndarray, spec: PredictorSpec):
    """``est.fit(x, y)``; rows read on demand go to a torch MLP as they are and to an incremental model chunk by
    chunk (:func:`~predictors.models.fit_incremental`)."""
    if isinstance(x, Rows) and spec.model == "sgd" and hasattr(est, "steps"):
        return fit_incremental(est, x, y, seed=spec.random_state)
    return est.fit(x, y)


def _estimator(spec: PredictorSpec, y: np.ndarray):
    if spec.task == "classification" and len(np.unique(y)) < 2:
        from sklearn.dummy import DummyClassifier

        return DummyClassifier(strategy="most_frequent")
    return make_estimator(spec.model, spec.task, class_weight=spec.class_weight, random_state=spec.random_state,
                          **spec.params)


def cross_fit(spec: PredictorSpec, x: np.ndarray, y: np.ndarray, folds: int = 5, *,
              bar: tqdm | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold outputs of ``spec``'s model: each sample's output comes from a model fitted on the other
    folds (stratified for classification). Returns ``(outputs, classes)``: probabilities ``[N, C]`` over
    ``classes`` or forecasts ``[N]`` (``classes`` empty). ``bar``: a progress bar advanced by one per fold."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(y)
    if folds < 2 or folds > n:
        raise ValueError(f"cross-fitting needs 2 <= folds <= N ({n} samples), got folds={folds}")
    regression = spec.task == "regression"
    classes = np.array([]) if regression else np.unique(y)
    strat = not regression and np.bincount(np.searchsorted(classes, y)).min() >= folds
    split = (StratifiedKFold if strat else KFold)(folds, shuffle=True, random_state=spec.random_state)
    out = np.zeros(n) if regression else np.zeros((n, len(classes)))
    with one_thread():
        for tr, te in split.split(np.empty((n, 0)), y if strat else None):
            est = _fit(_estimator(spec, y[tr]), x[tr], y[tr], spec)
            out[te] = est.predict(x[te]) if regression else aligned_proba(est, x[te], classes)
            if bar is not None:
                bar.update(1)
    return out, classes


def _check_request(cache: FeatureCache, spec: PredictorSpec, split: str, folds: int) -> None:
    """Refuse a fit on test, one on calib that is not cross-fitted, an exit or a rule the cache does not have;
    warn about a fit on train."""
    if split == "test":
        raise ValueError("fitting predictors on the test split is refused: fit on calib (or train), report on test")
    if split == "train":
        warnings.warn("fitting on the train split: the exits were trained on it, so their confidences there "
                      "are over-confident and the targets will not match calib/test", stacklevel=3)
    if spec.for_exit is not None and not 0 <= spec.for_exit < cache.num_exits:
        raise ValueError(f"exit {spec.for_exit} out of range: the cache has exits 0..{cache.num_exits - 1}")
    if split == "calib" and folds < 2:
        raise ValueError(f"folds={folds}: predictors fitted on calib must be cross-fitted (folds >= 2), since every "
                         f"selection on calib uses their out-of-fold scores")
    if spec.rule is not None and spec.rule.num_exits != cache.num_exits:
        raise ValueError(f"{spec.name}: its exit rule has {spec.rule.num_exits} thresholds, the cache "
                         f"{cache.num_exits} exits")


def _streamed(cache: FeatureCache, spec: PredictorSpec, split: str, stream: bool | None, fit_rows):
    """``(rows, stream)``: the split's inputs read on demand (:class:`~predictors.inputs.CacheRows`) and whether
    :func:`fit_predictor` fits on them (``stream`` None: when in memory they would take more than
    :data:`STREAM_BYTES` and the model reads on demand); refused where the model or ``fit_rows`` cannot."""
    auto_stream = stream is None
    rows = CacheRows(cache, split, spec.at, with_confidences=spec.with_confidences, n_conf=spec.n_conf)
    big = len(rows) * rows.n_features * 4 > STREAM_BYTES
    if stream is None:
        stream = big and spec.model in STREAMING
        if big and not stream:
            warnings.warn(f"{spec.name}: {len(rows)} x {rows.n_features} inputs take "
                          f"{len(rows) * rows.n_features * 4 / 2**30:.1f} GiB in memory; the {spec.model} model needs "
                          f"them there (models {' and '.join(STREAMING)} read them on demand)", stacklevel=3)
    if stream and spec.model not in STREAMING:
        raise ValueError(f"{spec.name}: only models {', '.join(STREAMING)} read their inputs on demand; "
                         f"{spec.model} needs them in memory (stream=False)")
    if fit_rows is not None:
        n_split = cache.size(split)
        if len(fit_rows) < 2 or fit_rows[0] < 0 or fit_rows[-1] >= n_split:
            raise ValueError(f"rows: fit on at least 2 rows of {split}, each in 0..{n_split - 1}")
        if stream and not auto_stream:
            raise ValueError(f"{spec.name}: fitting on some rows (rows=) reads them in memory; stream=False")
        stream = False
    return rows, stream


def fit_predictor(cache: FeatureCache, spec: PredictorSpec, *, split: str = "calib", folds: int = 5,
                  timing: float = 0.1, stream: bool | None = None, rows=None,
                  cost: dict | None = None, bar: tqdm | None = None) -> FittedPredictor:
    """Cross-fit ``spec`` on ``split`` of ``cache``: ``folds`` out-of-fold outputs for every sample of the split,
    then the final model refitted on all of it.

    Args:
        cache: the feature cache.
        spec: what to fit (target, position, model, exit rule).
        split: ``calib`` (default) or ``train``; ``test`` is refused.
        folds: cross-fitting folds (>= 2 on calib).
        timing: seconds of latency timing for the predictor's cost.
        stream: read the features on demand from the cache (:class:`~predictors.inputs.CacheRows`; models
            ``nn`` and ``sgd`` only) instead of in memory; None: when they would take more than
            :data:`STREAM_BYTES`.
        rows: fit on those rows of the split only (indices; the others are then scored by the refitted model,
            which never saw them: a held-out part such as Learn-then-Test's certification half).
        cost: the predictor's measured cost to reuse instead of timing it again.
        bar: a progress bar advanced by one per fold, and by one once refitted and costed (:func:`fit_predictors`).

    Returns:
        :class:`~predictors.fitted.FittedPredictor` with out-of-fold scores (``.oof``) and its cost (MACs, ms).
    """
    _check_request(cache, spec, split, folds)
    fit_rows = None if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
    rows, stream = _streamed(cache, spec, split, stream, fit_rows)
    x = rows if stream else make_inputs(cache, split, spec.at, with_confidences=spec.with_confidences,
                                           n_conf=spec.n_conf)
    y = make_target(cache, split, spec.target, k=spec.for_exit, rule=spec.rule)
    if fit_rows is not None:
        x, y = x[fit_rows], y[fit_rows]
        if split == "calib" and folds > len(fit_rows):
            raise ValueError(f"folds={folds} > the {len(fit_rows)} rows to fit on")
    if spec.task == "classification" and len(np.unique(y)) < 2:
        warnings.warn(f"{spec.name}: every {split} sample has the same target ({y[0]}): the predictor is the "
                      f"constant answer (0 MACs)", stacklevel=2)
    with one_thread():
        oof, classes = cross_fit(spec, x, y, folds, bar=bar) if folds >= 2 else (None, np.unique(y))
        est = _fit(_estimator(spec, y), x, y, spec)
    if spec.task == "classification":
        classes = np.unique(y)
    fitted = FittedPredictor(spec, est, cache.fingerprint, {}, split, oof, classes, folds, fit_rows=fit_rows)
    if spec.calibration is not None:
        reached = fitted.reached(cache, split)
        fitted.calibration = _calibrate(fitted, y, reached if fit_rows is None else reached[fit_rows])
    fitted.cost = dict(cost) if cost is not None else predictor_cost(fitted, cache, min_run_time=timing)
    if bar is not None:
        bar.update(1)
    return fitted


def fit_steps(folds: int) -> int:
    """Steps of one :func:`fit_predictor` on a progress bar: ``folds`` cross-fitting fits (none below 2), then the
    refit on all rows with the cost."""
    return (folds if folds >= 2 else 0) + 1


def fit_predictors(cache: FeatureCache, specs, *, folds: int = 5, progress: bool = True,
                   **kw) -> list[FittedPredictor]:
    """:func:`fit_predictor` of every spec of ``specs`` in order (``folds`` and ``kw`` passed on), under one
    progress bar ``fit predictors`` whose total is every fit of them all (unit: fit; :func:`fit_steps` per
    predictor), so it shows an ETA."""
    specs = list(specs)
    with tqdm(total=len(specs) * fit_steps(folds), desc="fit predictors", unit="fit",
              disable=not show_progress(progress)) as bar:
        return [fit_predictor(cache, s, folds=folds, bar=bar, **kw) for s in specs]


def refit_on_rows(p: FittedPredictor, cache: FeatureCache, rows, *, rule: ExitRule | None = None,
                  bar: tqdm | None = None) -> FittedPredictor:
    """``p``'s spec cross-fitted again on ``rows`` of its fit split only (same folds, its measured cost kept), its
    target defined by ``rule`` where given (gates and exit predictors): a predictor that depends on nothing
    outside ``rows``, as Learn-then-Test needs of everything it certifies. ``bar``: advanced by
    ``fit_steps(max(p.folds, 2))`` (:func:`fit_predictor`)."""
    from dataclasses import replace

    spec = p.spec
    if rule is not None and spec.rule is not None and spec.target in ("gate", "exit"):
        spec = replace(spec, rule=rule)
    return fit_predictor(cache, spec, split=p.fit_split, folds=max(p.folds, 2), rows=rows, cost=p.cost, bar=bar)


def _calibrate(p: FittedPredictor, y: np.ndarray, reached: np.ndarray) -> dict | None:
    """The calibration map of gate ``p``, fitted on its out-of-fold probabilities against its targets ``y``, on
    the samples that reach its exit (those its probability is used for); None, with a warning, where there is
    nothing to calibrate."""
    s = p.spec
    if p.oof is None:
        raise ValueError(f"{s.name}: calibration is fitted on out-of-fold probabilities; fit with folds >= 2")
    if np.bincount(y[reached], minlength=2).min() < 2:
        warnings.warn(f"{s.name}: fewer than 2 samples that reach exit {s.for_exit} leave there, or fewer than 2 do "
                      f"not: nothing to calibrate, the gate's probabilities stay as fitted", stacklevel=3)
        return None
    return fit_calibration(s.calibration, p._gate_proba(p.oof)[reached], y[reached])


def evaluation_table(predictors: list[FittedPredictor], cache: FeatureCache,
                     splits: tuple[str, ...] = ("calib", "test")) -> pd.DataFrame:
    return pd.DataFrame([p.evaluate(cache, s) for p in predictors for s in splits])


__all__ = ["STREAMING", "STREAM_BYTES", "cross_fit", "evaluation_table", "fit_predictor", "fit_predictors", "fit_steps",
           "refit_on_rows"]
