"""A learned exit policy (issue 27) in matrix form: at side exit k a small predictor scores "leaving here is no worse
than going on" from the exit's pooled features and the confidences of the exits run so far; the sample leaves when
the score reaches that exit's cut. In a study the same policy is the registered ``learned`` policy
(:mod:`analysis.core.policies`) over the registry's ``leave`` predictors (``Placement.leaves``); this module holds the
score-matrix form that risk control (:func:`risk_controlled_cut`) and ``bench/bench_learned.py`` refit per resplit.

Target (no test data involved): ``y_k = 1`` when exit k's answer is right, or when no later exit (k+1..K-1) is
right (going on cannot fix it): :func:`predictors.targets.targets_from_correct`, the registry's ``leave`` target. One
scorer per side exit: the registry's ``linear-cv`` model (a class-balanced logistic regression on standardised
inputs, C by inner cross-validation), cross-fitted on ``calib`` (K-fold, shuffled, fixed seed: every calib score
comes from a model that did not see that sample) and refitted on all of ``calib`` to score other splits (``test``).

Inputs at exit k (:func:`learned_inputs`): the pooled features at branch point k, then entropy (nats),
max-probability and margin of each exit 0..k, as a registry ``leave`` predictor reads them. Every one of those heads
has run on the sample's path (the policy enters every side exit until it leaves), so reading them costs nothing
extra.

Simulation (per sample, costs of :class:`~analysis.core.costs.CostModel`, all ms at batch 1), as the cascade of
:mod:`analysis.core.simulate` plus the scorer:
  the runtime:        sample_ms, plus decision_ms per side exit entered
  stage k:            S_k
  side exit k (k<K-1): W_k + E_k (buffer the activation, run the head) + scorer_ms[k] (the predictor);
                      leave with exit k's answer when ``score_k >= cut_k``; else R_k and go on
  the final exit:     E_{K-1}, no scorer; it always answers.
So ``cut = -inf`` everywhere leaves every sample at exit 0; ``cut = +inf`` everywhere gives the final exit's
answers (as ``full``) but pays every side exit and scorer on the way (slower than ``full``). Whether the tuned
policy pays is decided against the best predictor-free policy (DESIGN §3.4), not here.

Cuts (:func:`tune_learned_cuts`): on calib with out-of-fold scores, least mean latency while accuracy stays
within ``max_acc_drop`` points of ``full``'s calib accuracy; coordinate descent from ``+inf`` everywhere, per side
exit from the last back to the first over candidate cuts ``+inf`` and quantiles of that exit's scores, keeping
a candidate only when it meets the constraint and strictly lowers latency, repeated until a pass changes nothing
(at most ``passes``). Deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from predictors.targets import targets_from_correct

from .costs import CostModel
from .evidence import leave_candidates
from .simulate import Outcome, path_outcome


# ----------------------------------------------------------------------------- targets and inputs
def learned_targets(cache, split: str) -> np.ndarray:
    """``[N, K-1]`` bool: ``y_k`` = exit k's answer is right, or no later exit's is (leaving is no worse)."""
    z = np.asarray(cache.logits(split))
    return targets_from_correct(z.argmax(-1) == np.asarray(cache.labels(split))[:, None])


def learned_inputs(cache, split: str, k: int) -> np.ndarray:
    """``[N, D]`` float32 inputs of the scorer at side exit ``k``, as a ``leave`` predictor of the registry reads them
    (:func:`predictors.make_inputs` with the confidences of exits 0..k): the pooled features at branch point k, then
    entropy (nats), max-probability and margin of exits 0..k (``D = F_k + 3 (k + 1)``)."""
    from predictors import make_inputs

    if not 0 <= k < cache.num_exits - 1:
        raise IndexError(f"side exit {k} out of range: the cache has side exits 0..{cache.num_exits - 2}")
    return make_inputs(cache, split, k, with_confidences=True, n_conf=k + 1)


# ----------------------------------------------------------------------------- the scorer
def make_model(seed: int = 0):
    """A fresh scorer: the registry's ``linear-cv`` model (standardise, then a class-balanced logistic regression
    whose L2 strength an inner 3-fold cross-validation chooses), what ``leave`` predictors of a study use."""
    from predictors import make_estimator

    return make_estimator("linear-cv", "classification", class_weight="balanced", random_state=seed)


def fit_scorer(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """One side exit's scorer fitted on ``x`` ``[N, D]``, ``y`` ``[N]`` (a model, or the constant probability when
    ``y`` holds one class only); score it with :func:`score_with`."""
    if len(np.unique(y)) < 2:
        return float(y[0]) if len(y) else 0.5
    return make_model(seed).fit(x, np.asarray(y, dtype=np.int64))


def score_with(model, x: np.ndarray) -> np.ndarray:
    """``[N]`` P(y=1) in [0, 1] of a :func:`fit_scorer` model."""
    if isinstance(model, float):
        return np.full(len(x), model)
    return model.predict_proba(x)[:, 1]


def learned_folds(n: int, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, held-out) index pairs the calib scores are cross-fitted on: shuffled K-fold, ``seed``."""
    from sklearn.model_selection import KFold

    if not 2 <= folds <= n:
        raise ValueError(f"folds must be in 2..{n} (the calib samples), got {folds}")
    return list(KFold(folds, shuffle=True, random_state=seed).split(np.arange(n)))


@dataclass
class LearnedScorer:
    """Per side exit the scorer fitted on all of calib (``models_``) and the out-of-fold calib scores
    (``oof_`` ``[N_calib, K-1]``), with the folds and seed they came from."""

    models_: list
    oof_: np.ndarray
    folds: int
    seed: int

    @property
    def num_side_exits(self) -> int:
        return len(self.models_)

    def scores(self, cache, split: str) -> np.ndarray:
        """``[N, K-1]`` scores in [0, 1] on ``split``; ``calib``: out of fold (no score from a model that saw
        its sample)."""
        if split == "calib":
            return self.oof_.copy()
        return np.stack([score_with(m, learned_inputs(cache, split, k)) for k, m in enumerate(self.models_)], 1)


def fit_learned(cache, *, folds: int = 5, seed: int = 0) -> LearnedScorer:
    """Fit the learned policy's scorers on ``calib``: out-of-fold scores over :func:`learned_folds`, then one
    model per side exit on all of calib (for other splits)."""
    y = learned_targets(cache, "calib")
    n, k1 = y.shape
    if k1 == 0:
        raise ValueError("the cache has a single exit: there is no side exit to learn a policy for")
    split = learned_folds(n, folds, seed)
    models, oof = [], np.full((n, k1), np.nan)
    for k in range(k1):
        x = learned_inputs(cache, "calib", k)
        for tr, te in split:
            oof[te, k] = score_with(fit_scorer(x[tr], y[tr, k], seed), x[te])
        models.append(fit_scorer(x, y[:, k], seed))
    return LearnedScorer(models, oof, folds, seed)


# ----------------------------------------------------------------------------- simulation
def _scorer_ms(scorer_ms, k1: int) -> np.ndarray:
    v = np.broadcast_to(np.asarray(scorer_ms, dtype=float), (k1,)).copy()
    if not np.isfinite(v).all() or (v < 0).any():
        raise ValueError(f"scorer_ms must be finite and >= 0 (ms per side exit), got {v}")
    return v


def learned_exits(scores: np.ndarray, cuts) -> np.ndarray:
    """``[N]`` exit taken: the first side exit k with ``scores[:, k] >= cuts[k]``, else the final exit K-1."""
    s = np.asarray(scores, dtype=float)
    c = np.asarray(cuts, dtype=float)
    if s.ndim != 2 or c.shape != (s.shape[1],):
        raise ValueError(f"scores must be [N, K-1] and cuts [K-1], got {s.shape} and {c.shape}")
    if np.isnan(s).any() or np.isnan(c).any():
        raise ValueError("scores and cuts must not hold NaN")
    leave = np.concatenate([s >= c[None, :], np.ones((len(s), 1), bool)], 1)
    return leave.argmax(1)


def simulate_learned(scores, cuts, logits, labels, costs: CostModel, scorer_ms, *,
                     name: str = "learned") -> Outcome:
    """The learned policy (module docstring): per sample its exit, correctness and latency (ms).

    Args:
        scores: ``[N, K-1]`` the scorers' outputs (calib: out of fold).
        cuts: ``[K-1]`` leave at side exit k when ``score >= cut``.
        logits: ``[N, K, C]``; labels: ``[N]``.
        costs: the cost model (ms at batch 1).
        scorer_ms: the scorer's cost per side exit (ms; a scalar or ``[K-1]``), charged at every side exit reached.
    """
    z = np.asarray(logits)
    n, k, _ = z.shape
    if k != costs.num_exits:
        raise ValueError(f"logits have {k} exits, the cost model {costs.num_exits}")
    if np.shape(scores) != (n, k - 1):
        raise ValueError(f"scores must be [N, K-1] = [{n}, {k - 1}], got {np.shape(scores)}")
    g = _scorer_ms(scorer_ms, k - 1)
    ex = learned_exits(scores, cuts)
    cols = np.arange(k)[None, :]
    entered = cols <= ex[:, None]
    entered[:, -1] = False
    correct = z.argmax(-1) == np.asarray(labels)[:, None]
    gate = entered[:, : k - 1].astype(float) @ g
    return path_outcome(name, costs, ex, entered, correct, gate_ms=gate)


# ----------------------------------------------------------------------------- risk control
LAMBDAS = np.linspace(1.0, 0.0, 41)  # the shared cut, safest first: a cut of 1 leaves (almost) nowhere


def select_shared_cut(loss: np.ndarray, ms: np.ndarray, *, eps_pts: float, delta: float = 0.1,
                      method: str = "ltt"):
    """Of the shared cuts behind ``loss`` ``[M, N]`` (paired 0/1 losses against ``full``, safest cut first) and
    ``ms`` ``[M]`` (mean latency), the cheapest certified within ``eps_pts`` accuracy points: fixed-sequence
    Learn-then-Test (``method="ltt"``, P(risk > eps) <= ``delta``) or conformal risk control (``"crc"``, monotonised:
    mean loss <= eps). Returns the selection result (``.index`` None when nothing is certified)."""
    from .crc import crc_select
    from .risk import ltt_select

    if method not in ("ltt", "crc"):
        raise ValueError(f"method must be 'ltt' or 'crc', got {method!r}")
    return (ltt_select(loss, ms, eps_pts / 100, delta) if method == "ltt"
            else crc_select(loss, ms, eps_pts / 100, monotonize=True))


def risk_controlled_cut(scores, logits, labels, costs: CostModel, scorer_ms, *, eps_pts: float, delta: float = 0.1,
                        method: str = "ltt", lambdas=LAMBDAS) -> tuple[float | None, object]:
    """The shared cut λ (leave at side exit k when ``score_k >= λ``, every k) certified on samples the scorers were
    not fitted on: the cheapest λ of ``lambdas`` (safest first) whose paired loss against ``full`` (full right,
    learned wrong) is certified within ``eps_pts`` accuracy points, by fixed-sequence Learn-then-Test
    (``method="ltt"``: the population risk exceeds eps with probability <= ``delta``) or conformal risk control
    (``"crc"``: the expected loss <= eps; ``delta`` unused). Returns ``(λ or None when nothing is certified: run
    full, the selection result)``; costs are mean ms on these samples."""
    if method not in ("ltt", "crc"):  # before the simulations
        raise ValueError(f"method must be 'ltt' or 'crc', got {method!r}")
    z, y = np.asarray(logits), np.asarray(labels)
    k = z.shape[1]
    full_right = z[:, -1].argmax(-1) == y
    loss, ms = np.empty((len(lambdas), len(y))), np.empty(len(lambdas))
    for j, lam in enumerate(lambdas):
        o = simulate_learned(scores, np.full(k - 1, float(lam)), z, y, costs, scorer_ms)
        loss[j], ms[j] = full_right & ~o.correct, o.latency_ms.mean()
    res = select_shared_cut(loss, ms, eps_pts=eps_pts, delta=delta, method=method)
    return (None if res.index is None else float(lambdas[res.index])), res


# ----------------------------------------------------------------------------- the runtime's form
def leave_callable(model, cut: float, pooling: str, feature_dtype: str = "float16", *, k: int):
    """Side exit ``k``'s learned decision as the real runtime calls it (:class:`branchy.runtime.EarlyExitRuntime`,
    ``leave``): ``(h, [logits of exits 0..k]) -> bool [B]``, through :func:`predictors.deploy.leave_callable` (the
    activation pooled as the cache pooled it and rounded to its feature dtype, the confidences so far, the logistic
    score in scikit-learn's own precision, ``>= cut``). ``model``: a :func:`fit_scorer` model."""
    import torch

    from predictors import PredictorSpec
    from predictors.deploy import leave_callable as registry_leave
    from predictors.fitted import FittedPredictor

    if isinstance(model, float):
        return lambda h, zs: torch.full((len(h),), model >= cut)
    spec = PredictorSpec("leave", k, "linear-cv", k, class_weight="balanced", with_confidences=True)
    pred = FittedPredictor(spec, model, "", {}, "calib", classes=np.array([0, 1]))
    return registry_leave(pred, cut, pooling, feature_dtype=feature_dtype)


def leave_callables(scorer: "LearnedScorer", cuts, pooling: str, feature_dtype: str = "float16") -> dict:
    """``{k: leave_callable}`` for every side exit: the runtime's ``leave`` argument."""
    return {k: leave_callable(m, float(c), pooling, feature_dtype, k=k)
            for k, (m, c) in enumerate(zip(scorer.models_, cuts))}


# ----------------------------------------------------------------------------- cuts
def tune_learned_cuts(scores_calib, logits, labels, costs: CostModel, scorer_ms, *, max_acc_drop: float = 0.0,
                      n_cuts: int = 16, passes: int = 3) -> np.ndarray:
    """``[K-1]`` cuts for least mean calib latency (ms) with calib accuracy >= ``full``'s minus ``max_acc_drop``
    **points** (percent). Coordinate descent (module docstring): starts at ``+inf`` everywhere (meets the constraint:
    the final exit's answers), side exits from the last back to the first, strict improvements only."""
    if not (np.isfinite(max_acc_drop) and max_acc_drop >= 0):
        raise ValueError(f"max_acc_drop must be >= 0 (percentage points), got {max_acc_drop}")
    s = np.asarray(scores_calib, dtype=float)
    z, y = np.asarray(logits), np.asarray(labels)
    floor = float((z[:, -1].argmax(-1) == y).mean()) - max_acc_drop / 100 - 1e-12
    cuts = np.full(s.shape[1], np.inf)

    def score(c: np.ndarray) -> tuple[float, float]:
        o = simulate_learned(s, c, z, y, costs, scorer_ms)
        return float(o.correct.mean()), float(o.latency_ms.mean())

    best = score(cuts)[1]
    for _ in range(passes):
        changed = False
        for k in reversed(range(s.shape[1])):
            for c in leave_candidates(s[:, k], n_cuts):
                if c == cuts[k]:
                    continue
                trial = cuts.copy()
                trial[k] = c
                acc, lat = score(trial)
                if acc >= floor and lat < best - 1e-12:
                    cuts, best, changed = trial, lat, True
        if not changed:
            break
    return cuts


__all__ = ["LAMBDAS", "LearnedScorer", "fit_learned", "fit_scorer", "learned_exits", "learned_folds",
           "learned_inputs", "learned_targets", "leave_callable", "leave_callables", "make_model", "risk_controlled_cut", "select_shared_cut",
           "score_with", "simulate_learned", "tune_learned_cuts"]
