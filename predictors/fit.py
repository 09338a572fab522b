"""Fit predictors on a cache, evaluate them, save and load them (tied to the cache's fingerprint)."""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from branchy.cache import FeatureCache

from .cost import predictor_cost
from .evaluate import exit_metrics, gate_metrics, regression_metrics
from .inputs import make_inputs
from .models import PREDICTOR_MODELS, make_estimator
from .targets import TARGETS, check_thresholds, make_target

INDEX = "predictors.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PredictorSpec:
    """One predictor: what it forecasts (``target``), where it sits (after stage ``at``), for which exit
    (``for_exit``; gates and entropy), with which model, thresholds and confidence measure."""

    target: str
    at: int
    model: str = "nn"
    for_exit: int | None = None
    thresholds: tuple[float, ...] | None = None
    measure: str = "entropy"
    with_confidences: bool = False
    class_weight: str | None = None
    params: dict = field(default_factory=dict)
    random_state: int = 0

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; known: {', '.join(TARGETS)}")
        PREDICTOR_MODELS.get(self.model)
        if self.target in ("gate", "entropy"):
            if self.for_exit is None:
                raise ValueError(f"a {self.target} predictor needs the exit it is for (--for K)")
            if self.at > self.for_exit:
                raise ValueError(f"a predictor after stage {self.at} cannot gate exit {self.for_exit}: it must sit "
                                 f"at or before the exit (at <= for)")
        if self.target in ("gate", "exit") and self.thresholds is None:
            raise ValueError(f"a {self.target} predictor needs thresholds T (one per exit)")

    @property
    def task(self) -> str:
        return "regression" if self.target == "entropy" else "classification"

    @property
    def name(self) -> str:
        f = f"_for{self.for_exit}" if self.for_exit is not None else ""
        return f"{self.target}_at{self.at}{f}_{self.model}"


@dataclass
class FittedPredictor:
    spec: PredictorSpec
    estimator: object
    cache_fingerprint: str
    cost: dict
    fit_split: str

    def inputs(self, cache: FeatureCache, split: str) -> np.ndarray:
        self.check(cache)
        return make_inputs(cache, split, self.spec.at, with_confidences=self.spec.with_confidences)

    def predict(self, cache: FeatureCache, split: str) -> np.ndarray:
        """Gate: 1 = enter; exit/oracle: the exit index; entropy: nats."""
        return self.estimator.predict(self.inputs(cache, split))

    def enter(self, cache: FeatureCache, split: str) -> np.ndarray:
        """The gate decision (bool ``[N]``) for gates and entropy predictors (entropy < T_k)."""
        p = self.predict(cache, split)
        if self.spec.target == "gate":
            return p.astype(bool)
        if self.spec.target == "entropy":
            t = check_thresholds(self.spec.thresholds, cache.num_exits)[self.spec.for_exit]
            return p < t
        raise ValueError(f"{self.spec.name} predicts an exit, not a gate decision")

    def check(self, cache: FeatureCache) -> None:
        if cache.fingerprint != self.cache_fingerprint:
            raise ValueError(f"predictor {self.spec.name} was fitted on cache {self.cache_fingerprint}, not on "
                             f"{cache.path} ({cache.fingerprint}): refit it with `branchy fit-predictors`")

    def evaluate(self, cache: FeatureCache, split: str) -> dict:
        s = self.spec
        y = make_target(cache, split, s.target, k=s.for_exit, thresholds=s.thresholds, measure=s.measure)
        p = self.predict(cache, split)
        if s.target == "gate":
            m = gate_metrics(y, p)
        elif s.target in ("exit", "oracle"):
            m = exit_metrics(y, p, cache.num_exits)
        else:
            t = check_thresholds(s.thresholds, cache.num_exits)[s.for_exit] if s.thresholds is not None else None
            m = regression_metrics(y, p, t)
        return {"predictor": s.name, "target": s.target, "at": s.at, "for": s.for_exit, "model": s.model,
                "split": split, **m, "macs": self.cost["macs"], "ms_b1": self.cost["ms_b1"]}


def fit_predictor(cache: FeatureCache, spec: PredictorSpec, *, split: str = "calib",
                  timing: float = 0.1) -> FittedPredictor:
    """Fit ``spec`` on ``split`` of ``cache`` (``calib`` by default; ``test`` is refused)."""
    if split == "test":
        raise ValueError("fitting predictors on the test split is refused: fit on calib (or train), report on test")
    if split == "train":
        warnings.warn("fitting on the train split: the exits were trained on it, so their confidences there "
                      "are over-confident and the targets will not match calib/test", stacklevel=2)
    if spec.for_exit is not None and not 0 <= spec.for_exit < cache.num_exits:
        raise ValueError(f"exit {spec.for_exit} out of range: the cache has exits 0..{cache.num_exits - 1}")
    if spec.thresholds is not None:
        check_thresholds(spec.thresholds, cache.num_exits)
    x = make_inputs(cache, split, spec.at, with_confidences=spec.with_confidences)
    y = make_target(cache, split, spec.target, k=spec.for_exit, thresholds=spec.thresholds, measure=spec.measure)
    if spec.task == "classification" and len(np.unique(y)) < 2:
        from sklearn.dummy import DummyClassifier

        warnings.warn(f"{spec.name}: every {split} sample has the same target ({y[0]}): the predictor is the "
                      f"constant answer (0 MACs)", stacklevel=2)
        est = DummyClassifier(strategy="most_frequent")
    else:
        est = make_estimator(spec.model, spec.task, class_weight=spec.class_weight, random_state=spec.random_state,
                             **spec.params)
    est.fit(x, y)
    return FittedPredictor(spec, est, cache.fingerprint, predictor_cost(est, x, min_run_time=timing), split)


def evaluation_table(predictors: list[FittedPredictor], cache: FeatureCache,
                     splits: tuple[str, ...] = ("calib", "test")) -> pd.DataFrame:
    return pd.DataFrame([p.evaluate(cache, s) for p in predictors for s in splits])


# ----------------------------------------------------------------------------- storage
def save_predictors(predictors: list[FittedPredictor], out: str | os.PathLike) -> Path:
    """One ``NAME.joblib`` per predictor plus ``predictors.json`` (specs, costs, cache fingerprint).
    Adds to what the folder already holds (same name: replaced)."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    index_path = d / INDEX
    index = json.loads(index_path.read_text()) if index_path.exists() else {"version": FORMAT_VERSION,
                                                                            "predictors": {}}
    for p in predictors:
        tmp = d / f"{p.spec.name}.joblib.tmp"
        joblib.dump(p, tmp)
        os.replace(tmp, d / f"{p.spec.name}.joblib")
        index["predictors"][p.spec.name] = {"spec": asdict(p.spec), "cache_fingerprint": p.cache_fingerprint,
                                            "cost": p.cost, "fit_split": p.fit_split}
    tmp = d / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=2, default=str))
    os.replace(tmp, index_path)
    return d


def load_predictors(path: str | os.PathLike, cache: FeatureCache | None = None) -> dict[str, FittedPredictor]:
    """All predictors of a folder by name; with ``cache``, refuse those fitted on another cache."""
    d = Path(path)
    if not (d / INDEX).is_file():
        raise FileNotFoundError(f"no predictors at {str(d)!r} ({INDEX} missing); fit some with "
                                f"`branchy fit-predictors --out {d}`")
    index = json.loads((d / INDEX).read_text())
    out = {}
    for name in index["predictors"]:
        f = d / f"{name}.joblib"
        if not f.is_file():
            raise FileNotFoundError(f"{d}: {INDEX} lists {name} but {f.name} is missing; refit")
        p = joblib.load(f)
        if cache is not None:
            p.check(cache)
        out[name] = p
    return out
