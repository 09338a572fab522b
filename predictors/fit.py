"""Fit predictors on a cache, evaluate them, save and load them (tied to the cache's fingerprint)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from branchy.cache import FeatureCache, row_slices
from branchy.rule import ExitRule

from .calibration import CALIBRATORS, apply_calibration, calibration_metrics, cross_calibrate, fit_calibration
from .cost import predictor_cost
from .evaluate import exit_metrics, gate_curves, gate_metrics, ranking_metrics, regression_metrics
from .inputs import CacheRows, make_inputs
from .models import PREDICTOR_MODELS, fit_incremental, make_estimator, one_thread
from .torch_mlp import Rows
from .targets import TARGETS, make_target, passes


@dataclass(frozen=True)
class PredictorSpec:
    """One predictor: what it forecasts (``target``), where it sits (after stage ``at``), for which exit
    (``for_exit``; gates and entropy), with which model, and under which exit ``rule`` (measure and
    thresholds: gate and exit targets are defined by it; a sequence of thresholds is read as entropy). A gate
    may be ``calibration``-mapped (``sigmoid`` or ``isotonic``, :mod:`predictors.calibration`) so that its score
    is the probability that the sample leaves."""

    target: str
    at: int
    model: str = "nn"
    for_exit: int | None = None
    rule: ExitRule | None = None
    with_confidences: bool = False
    class_weight: str | None = None
    params: dict = field(default_factory=dict)
    random_state: int = 0
    calibration: str | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGETS.names():
            raise ValueError(f"unknown target {self.target!r}; known: {', '.join(TARGETS.names())}")
        PREDICTOR_MODELS.get(self.model)
        if self.rule is not None and not isinstance(self.rule, ExitRule):
            r = self.rule
            r = ExitRule.from_dict(r) if isinstance(r, dict) else ExitRule("entropy", tuple(np.ravel(r)))
            object.__setattr__(self, "rule", r)
        if self.target in ("gate", "entropy"):
            if self.for_exit is None:
                raise ValueError(f"a {self.target} predictor needs the exit it is for (--for K)")
            if self.at > self.for_exit:
                raise ValueError(f"a predictor after stage {self.at} cannot gate exit {self.for_exit}: it must sit "
                                 f"at or before the exit (at <= for)")
        if self.calibration is not None:
            if self.calibration not in CALIBRATORS:
                raise ValueError(f"unknown calibration {self.calibration!r}; known: {', '.join(CALIBRATORS.names())}")
            if self.target != "gate":
                raise ValueError(f"calibration maps a gate's probability; a {self.target} predictor has none to map "
                                 f"(calibrate gates only)")
        if self.target in ("gate", "exit") and self.rule is None:
            raise ValueError(f"a {self.target} predictor needs the exit rule (thresholds T, one per exit) that "
                             f"defines its target")

    @property
    def task(self) -> str:
        return "regression" if self.target == "entropy" else "classification"

    @property
    def measure(self) -> str:
        return self.rule.measure if self.rule is not None else "entropy"

    @property
    def name(self) -> str:
        f = f"_for{self.for_exit}" if self.for_exit is not None else ""
        c = f"_cal-{self.calibration}" if self.calibration else ""
        return f"{self.target}_at{self.at}{f}_{self.model}{c}"


STREAMING = ("nn", "sgd")  # models that fit on rows read on demand (torch MLP; SGD by partial_fit)
SCORE_CHUNK = 1 << 16  # rows of features scored at a time on a large split
STREAM_BYTES = 2 << 30  # inputs larger than this are read on demand by the STREAMING models (stream=None)


@dataclass
class FittedPredictor:
    """A predictor refitted on all of ``fit_split``, with its out-of-fold outputs there (``oof``: class
    probabilities ``[N, len(classes)]`` or forecasts ``[N]``, from ``folds``-fold cross-fitting). Every
    output asked for on the fit split is the out-of-fold one, so nothing selected or scored on it has
    seen its own fit data. ``calibration``: a calibrated gate's map (arrays, :mod:`predictors.calibration`),
    fitted on the out-of-fold probabilities, applied to every score."""

    spec: PredictorSpec
    estimator: object
    cache_fingerprint: str
    cost: dict
    fit_split: str
    oof: np.ndarray | None = None
    classes: np.ndarray | None = None
    folds: int = 0
    calibration: dict | None = None
    fit_rows: np.ndarray | None = None  # sorted rows of fit_split it was fitted on (None: all); oof is theirs

    @property
    def constant(self) -> bool:
        """Whether it answers a constant (every fit sample had the same target): a predictor-free decision."""
        return type(self.estimator).__name__.startswith("Dummy")

    def inputs(self, cache: FeatureCache, split: str, rows: slice | None = None) -> np.ndarray:
        self.check(cache)
        return make_inputs(cache, split, self.spec.at, with_confidences=self.spec.with_confidences, rows=rows)

    def _raw(self, cache: FeatureCache, split: str, rows: slice | None = None) -> np.ndarray:
        """Class probabilities (aligned to ``classes``) or forecasts; out of fold on the fit split. ``rows``: only
        those rows of the split (a chunk)."""
        if split == self.fit_split and self.oof is not None:
            self.check(cache)
            if self.fit_rows is not None:
                return self._mixed_raw(cache, split, rows)
            if len(self.oof) != cache.size(split):
                raise ValueError(f"predictor {self.spec.name}: {len(self.oof)} out-of-fold outputs, but {split} "
                                 f"has {cache.size(split)} samples: refit it")
            return self.oof if rows is None else self.oof[rows]
        return self._refit_raw(cache, split, rows)

    def _mixed_raw(self, cache: FeatureCache, split: str, rows: slice | None) -> np.ndarray:
        """On the fit split of a predictor fitted on some of its rows: out of fold on those rows, the refitted
        model's outputs on the others (which it never saw)."""
        n = cache.size(split)
        fr = self.fit_rows
        if len(fr) != len(self.oof) or (len(fr) and (fr[-1] >= n or fr[0] < 0)):
            raise ValueError(f"predictor {self.spec.name}: fitted on {len(fr)} rows of {split}, which has {n} "
                             f"samples and {len(self.oof)} out-of-fold outputs: refit it")
        idx = np.arange(n)[rows if rows is not None else slice(None)]
        out = self._refit_raw(cache, split, rows)
        pos = np.minimum(np.searchsorted(fr, idx), max(len(fr) - 1, 0))
        hit = (fr[pos] == idx) if len(fr) else np.zeros(len(idx), bool)
        out[hit] = self.oof[pos[hit]]
        return out

    def _refit_raw(self, cache: FeatureCache, split: str, rows: slice | None = None) -> np.ndarray:
        """The refitted model's outputs on ``split`` (a large split a chunk of features at a time)."""
        n = cache.size(split)
        if rows is None and n > SCORE_CHUNK:  # a large split: a chunk of features in memory at a time
            return np.concatenate([self._refit_raw(cache, split, sl) for sl in row_slices(n, SCORE_CHUNK)])
        return self.raw_inputs(self.inputs(cache, split, rows))

    def raw_inputs(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (aligned to ``classes``) or forecasts of the refitted model on features ``x``."""
        with one_thread():
            if self.spec.task == "regression":
                return np.asarray(self.estimator.predict(x), dtype=np.float64)
            return _aligned_proba(self.estimator, x, self.classes)

    def _gate_proba(self, r: np.ndarray) -> np.ndarray:
        """The model's own probability of class 1 (leaves at the exit), before any calibration."""
        cls = list(np.asarray(self.classes))
        return r[:, cls.index(1)] if 1 in cls else np.zeros(len(r))

    def _score(self, r: np.ndarray) -> np.ndarray:
        if self.spec.target == "entropy":
            return -r
        if self.spec.target == "gate":
            p = self._gate_proba(r)
            return apply_calibration(self.calibration, p) if self.calibration is not None else p
        raise ValueError(f"{self.spec.name} predicts an exit, not a gate decision")

    def score_inputs(self, x: np.ndarray) -> np.ndarray:
        """:meth:`score` of the refitted model on features ``x`` ``[B, D]`` (what a runtime gate computes)."""
        return self._score(self.raw_inputs(x))

    def predict_inputs(self, x: np.ndarray) -> np.ndarray:
        """:meth:`predict` of the refitted model on features ``x`` ``[B, D]``."""
        return self._predict(self.raw_inputs(x))

    def _predict(self, r: np.ndarray) -> np.ndarray:
        if self.spec.task == "regression":
            return r
        if self.calibration is not None:  # a calibrated gate says enter where leaving is at least as likely
            return (self._score(r) >= 0.5).astype(np.asarray(self.classes).dtype)
        return np.asarray(self.classes)[r.argmax(1)]

    def predict(self, cache: FeatureCache, split: str, rows: slice | None = None) -> np.ndarray:
        """Gate: 1 = enter; exit/oracle: the exit index; entropy: nats (out of fold on the fit split)."""
        return self._predict(self._raw(cache, split, rows))

    def score(self, cache: FeatureCache, split: str, rows: slice | None = None) -> np.ndarray:
        """``[N]`` how strongly the predictor says *enter the exit*: a gate's probability that the sample
        leaves there, or minus an entropy forecast (nats). A policy enters when ``score >= tau``, with the
        cut tau tuned on calib per exit rule (cost-aware gates). ``rows``: only those rows (a chunk). A calibrated
        gate's scores on its fit split are cross-calibrated (:meth:`_cross_calibrated`)."""
        if self.calibration is not None and split == self.fit_split and self.oof is not None:
            out = self._cross_calibrated(cache, split)
            return out if rows is None else out[rows]
        return self._score(self._raw(cache, split, rows))

    def enter(self, cache: FeatureCache, split: str) -> np.ndarray:
        """The fit-time operating point (bool ``[N]``): gate probability >= 0.5, or forecast entropy below
        T_k of the spec's rule. For reporting predictor quality; policies tune their own cut."""
        if self.spec.target == "gate":
            return self.score(cache, split) >= 0.5
        if self.spec.target == "entropy":
            if self.spec.rule is None or self.spec.rule.measure != "entropy":
                raise ValueError(f"{self.spec.name}: an entropy forecast meets only an entropy threshold (its rule: "
                                 f"{None if self.spec.rule is None else self.spec.rule.measure})")
            return self.predict(cache, split) < self.spec.rule.thresholds[self.spec.for_exit]
        raise ValueError(f"{self.spec.name} predicts an exit, not a gate decision")

    def latency_ms(self, backend: str = "eager") -> float:
        """Measured ms at batch 1 (pooling included) on a runtime backend."""
        if backend == "eager":
            return float(self.cost["ms_b1"])
        have = self.cost.get("backends") or {"eager": None}
        if backend not in have:
            raise ValueError(f"predictor {self.spec.name}: its latency was measured on {', '.join(have)}, not on "
                             f"{backend}; measure it there: branchy profile --cache CACHE --predictors DIR "
                             f"--backend {backend}")
        return float(have[backend]["ms_b1"])

    def check(self, cache: FeatureCache) -> None:
        if cache.fingerprint != self.cache_fingerprint:
            raise ValueError(f"predictor {self.spec.name} was fitted on cache {self.cache_fingerprint}, not on "
                             f"{cache.path} ({cache.fingerprint}): refit it with `branchy fit-predictors`")

    def reached(self, cache: FeatureCache, split: str) -> np.ndarray:
        """``[N]`` bool: the samples whose decision matters under the spec's rule with every exit open,
        those that reach exit ``for_exit`` (gates, entropy) or stage ``at`` (exit predictors)."""
        k = self.spec.for_exit if self.spec.for_exit is not None else self.spec.at
        n = cache.size(split)
        if self.spec.rule is None or k == 0:
            return np.ones(n, bool)
        ok = passes(cache, split, self.spec.rule)
        return ~ok[:, :k].any(1)

    def leaves(self, cache: FeatureCache, split: str) -> np.ndarray | None:
        """``[N]`` bool, for a gate or entropy predictor: the sample leaves at the exit it is for under the spec's
        rule (what its score should rank first); None for other targets or without a rule."""
        s = self.spec
        if s.target not in ("gate", "entropy") or s.rule is None:
            return None
        return make_target(cache, split, "gate", k=s.for_exit, rule=s.rule).astype(bool)

    def curves(self, cache: FeatureCache, split: str) -> dict:
        """ROC and precision-recall of the score on the samples that reach the exit (out of fold on the fit
        split; :func:`predictors.evaluate.gate_curves`); ``{}`` where there is nothing to rank."""
        lv = self.leaves(cache, split)
        if lv is None:
            return {}
        r = self.reached(cache, split)
        return gate_curves(lv[r], self.score(cache, split)[r])

    def _cross_calibrated(self, cache: FeatureCache, split: str) -> np.ndarray:
        """A calibrated gate's scores on its fit split: on the out-of-fold rows that reach its exit (those the
        stored map was fitted on), each fold's map fitted on the other folds (cross-calibration), so no cut chosen
        on calib sees a map fitted on its own labels; elsewhere the stored map."""
        out = self._score(self._raw(cache, split))
        y = make_target(cache, split, "gate", k=self.spec.for_exit, rule=self.spec.rule)
        r = self.reached(cache, split)
        fr = np.arange(cache.size(split)) if self.fit_rows is None else self.fit_rows
        rr = r[fr]
        if np.bincount(y[fr][rr].astype(np.int64), minlength=2).min() >= 2:
            out[fr[rr]] = cross_calibrate(self.spec.calibration, self._gate_proba(self.oof)[rr], y[fr][rr],
                                          max(self.folds, 2), self.spec.random_state)
        return out

    def evaluate(self, cache: FeatureCache, split: str) -> dict:
        """Quality on the samples that reach the predictor's exit (rates are fractions of them); on the
        fit split from out-of-fold outputs."""
        s = self.spec
        y = make_target(cache, split, s.target, k=s.for_exit, rule=s.rule)
        p = self.predict(cache, split)
        r = self.reached(cache, split)
        y, p = y[r], p[r]
        if not r.any():  # no sample reaches it: nothing to score
            m = {k: np.nan for k in ("accuracy", "balanced_accuracy", "f1", "false_enter", "false_skip")}
        elif s.target == "gate":
            m = gate_metrics(y, p)
        elif s.target in ("exit", "oracle"):
            m = exit_metrics(y, p, cache.num_exits)
        else:
            t = s.rule.thresholds[s.for_exit] if s.rule is not None and s.rule.measure == "entropy" else None
            m = regression_metrics(y, p, t)
        if s.target in ("gate", "entropy") and r.any():
            lv = self.leaves(cache, split)
            m.update(ranking_metrics(lv[r], self.score(cache, split)[r]) if lv is not None else {})
        if s.target == "gate" and r.any():  # how well the score reads as the probability of leaving
            m.update(calibration_metrics(y, self.score(cache, split)[r]))
        oof = split == self.fit_split and self.oof is not None
        return {"predictor": s.name, "target": s.target, "at": s.at, "for": s.for_exit, "model": s.model,
                "split": split + (" (out of fold)" if oof else ""), "reached": int(r.sum()), **m,
                "macs": self.cost["macs"], "ms_b1": self.cost["ms_b1"], "ms_unstable": bool(self.cost.get("unstable"))}


def _aligned_proba(est, x: np.ndarray, classes) -> np.ndarray:
    """``predict_proba`` with columns in the order of ``classes`` (a class the model never saw: 0)."""
    p = np.asarray(est.predict_proba(x), dtype=np.float64)
    own = list(np.asarray(est.classes_))
    out = np.zeros((len(x), len(classes)))
    for j, c in enumerate(classes):
        if c in own:
            out[:, j] = p[:, own.index(c)]
    return out


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


def cross_fit(spec: PredictorSpec, x: np.ndarray, y: np.ndarray, folds: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold outputs of ``spec``'s model: each sample's output comes from a model fitted on the other
    folds (stratified for classification). Returns ``(outputs, classes)``: probabilities ``[N, C]`` over
    ``classes`` or forecasts ``[N]`` (``classes`` empty)."""
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
            out[te] = est.predict(x[te]) if regression else _aligned_proba(est, x[te], classes)
    return out, classes


def fit_predictor(cache: FeatureCache, spec: PredictorSpec, *, split: str = "calib", folds: int = 5,
                  timing: float = 0.1, stream: bool | None = None, rows=None,
                  cost: dict | None = None) -> FittedPredictor:
    """Cross-fit ``spec`` on ``split`` of ``cache`` (``calib`` by default; ``test`` is refused): ``folds``
    out-of-fold outputs for every sample of the split, then the final model refitted on all of it. ``stream``:
    read the features on demand from the cache (:class:`~predictors.inputs.CacheRows`, torch MLPs only) instead
    of in memory; None: when they would take more than :data:`STREAM_BYTES`. ``rows``: fit on those rows of the
    split only (indices; the others are then scored by the refitted model, which never saw them: a held-out
    part such as Learn-then-Test's certification half). ``cost``: the predictor's measured cost to reuse instead
    of timing it again."""
    if split == "test":
        raise ValueError("fitting predictors on the test split is refused: fit on calib (or train), report on test")
    if split == "train":
        warnings.warn("fitting on the train split: the exits were trained on it, so their confidences there "
                      "are over-confident and the targets will not match calib/test", stacklevel=2)
    if spec.for_exit is not None and not 0 <= spec.for_exit < cache.num_exits:
        raise ValueError(f"exit {spec.for_exit} out of range: the cache has exits 0..{cache.num_exits - 1}")
    if split == "calib" and folds < 2:
        raise ValueError(f"folds={folds}: predictors fitted on calib must be cross-fitted (folds >= 2), since every "
                         f"selection on calib uses their out-of-fold scores")
    if spec.rule is not None and spec.rule.num_exits != cache.num_exits:
        raise ValueError(f"{spec.name}: its exit rule has {spec.rule.num_exits} thresholds, the cache "
                         f"{cache.num_exits} exits")
    fit_rows = None if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
    auto_stream = stream is None
    rows = CacheRows(cache, split, spec.at, with_confidences=spec.with_confidences)
    big = len(rows) * rows.n_features * 4 > STREAM_BYTES
    if stream is None:
        stream = big and spec.model in STREAMING
        if big and not stream:
            warnings.warn(f"{spec.name}: {len(rows)} x {rows.n_features} inputs take "
                          f"{len(rows) * rows.n_features * 4 / 2**30:.1f} GiB in memory; the {spec.model} model needs "
                          f"them there (models {' and '.join(STREAMING)} read them on demand)", stacklevel=2)
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
    x = rows if stream else make_inputs(cache, split, spec.at, with_confidences=spec.with_confidences)
    y = make_target(cache, split, spec.target, k=spec.for_exit, rule=spec.rule)
    if fit_rows is not None:
        x, y = x[fit_rows], y[fit_rows]
        if split == "calib" and folds > len(fit_rows):
            raise ValueError(f"folds={folds} > the {len(fit_rows)} rows to fit on")
    if spec.task == "classification" and len(np.unique(y)) < 2:
        warnings.warn(f"{spec.name}: every {split} sample has the same target ({y[0]}): the predictor is the "
                      f"constant answer (0 MACs)", stacklevel=2)
    with one_thread():
        oof, classes = cross_fit(spec, x, y, folds) if folds >= 2 else (None, np.unique(y))
        est = _fit(_estimator(spec, y), x, y, spec)
    if spec.task == "classification":
        classes = np.unique(y)
    fitted = FittedPredictor(spec, est, cache.fingerprint, {}, split, oof, classes, folds, fit_rows=fit_rows)
    if spec.calibration is not None:
        reached = fitted.reached(cache, split)
        fitted.calibration = _calibrate(fitted, y, reached if fit_rows is None else reached[fit_rows])
    fitted.cost = dict(cost) if cost is not None else predictor_cost(fitted, cache, min_run_time=timing)
    return fitted


def refit_on_rows(p: FittedPredictor, cache: FeatureCache, rows, *, rule: ExitRule | None = None) -> FittedPredictor:
    """``p``'s spec cross-fitted again on ``rows`` of its fit split only (same folds, its measured cost kept), its
    target defined by ``rule`` where given (gates and exit predictors): a predictor that depends on nothing
    outside ``rows``, as Learn-then-Test needs of everything it certifies."""
    from dataclasses import replace

    spec = p.spec
    if rule is not None and spec.rule is not None and spec.target in ("gate", "exit"):
        spec = replace(spec, rule=rule)
    return fit_predictor(cache, spec, split=p.fit_split, folds=max(p.folds, 2), rows=rows, cost=p.cost)


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


__all__ = ["FittedPredictor", "PredictorSpec", "SCORE_CHUNK", "STREAMING", "STREAM_BYTES", "cross_fit",
           "evaluation_table", "fit_predictor", "refit_on_rows"]
