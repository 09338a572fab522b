"""A fitted predictor: its estimator, out-of-fold calib scores, calibration, cost; scoring a split of a cache."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from branchy.cache import FeatureCache, row_slices

from .calibration import apply_calibration, calibration_metrics, cross_calibrate
from .evaluate import exit_metrics, gate_curves, gate_metrics, ranking_metrics, regression_metrics
from .inputs import make_inputs
from .models import one_thread
from .targets import make_target, passes


from .spec import PredictorSpec

SCORE_CHUNK = 1 << 16  # rows of features scored at a time on a large split


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
        return make_inputs(cache, split, self.spec.at, with_confidences=self.spec.with_confidences, rows=rows,
                           n_conf=self.spec.n_conf)

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
            return aligned_proba(self.estimator, x, self.classes)

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
        if self.spec.target == "leave":  # the probability that leaving at the exit is no worse than going on
            return self._gate_proba(r)
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
        elif s.target in ("gate", "leave"):
            m = gate_metrics(y, p)
        elif s.target in ("exit", "oracle"):
            m = exit_metrics(y, p, cache.num_exits)
        else:
            t = s.rule.thresholds[s.for_exit] if s.rule is not None and s.rule.measure == "entropy" else None
            m = regression_metrics(y, p, t)
        if s.target in ("gate", "entropy") and r.any():
            lv = self.leaves(cache, split)
            m.update(ranking_metrics(lv[r], self.score(cache, split)[r]) if lv is not None else {})
        if s.target == "leave" and r.any():  # how well the score ranks the samples it may let go
            m.update(ranking_metrics(y.astype(bool), self.score(cache, split)[r]))
        if s.target == "gate" and r.any():  # how well the score reads as the probability of leaving
            m.update(calibration_metrics(y, self.score(cache, split)[r]))
        oof = split == self.fit_split and self.oof is not None
        return {"predictor": s.name, "target": s.target, "at": s.at, "for": s.for_exit, "model": s.model,
                "split": split + (" (out of fold)" if oof else ""), "reached": int(r.sum()), **m,
                "macs": self.cost["macs"], "ms_b1": self.cost["ms_b1"], "ms_unstable": bool(self.cost.get("unstable"))}


def aligned_proba(est, x: np.ndarray, classes) -> np.ndarray:
    """``predict_proba`` with columns in the order of ``classes`` (a class the model never saw: 0)."""
    p = np.asarray(est.predict_proba(x), dtype=np.float64)
    own = list(np.asarray(est.classes_))
    out = np.zeros((len(x), len(classes)))
    for j, c in enumerate(classes):
        if c in own:
            out[:, j] = p[:, own.index(c)]
    return out


__all__ = ["FittedPredictor", "SCORE_CHUNK", "aligned_proba"]
