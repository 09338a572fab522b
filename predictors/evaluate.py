"""Predictor quality, including the two errors that cost latency or accuracy.

* false enter: the predictor sends the sample into a branch (or an earlier exit) it will not leave at:
  branch compute and activation buffering wasted;
* false skip: the predictor keeps the sample away from an exit it would have left at: an early
  exit missed.
Both are fractions of the samples scored (the caller passes those that reach the predictor's exit).
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score, confusion_matrix,
                             f1_score, mean_absolute_error, precision_recall_curve, r2_score, roc_auc_score, roc_curve)


def gate_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Binary gate (1 = enter / would leave)."""
    y_true, y_pred = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    return {
        "accuracy": accuracy_score(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy_score(y_true, y_pred) if len(np.unique(y_true)) > 1 else np.nan,
        "f1": f1_score(y_true, y_pred, zero_division=0),
        "false_enter": float(np.mean((y_pred == 1) & (y_true == 0))),
        "false_skip": float(np.mean((y_pred == 0) & (y_true == 1))),
        "positive_rate": float(np.mean(y_true == 1)),
        "confusion": confusion_matrix(y_true, y_pred, labels=[0, 1]).tolist(),
    }


def exit_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_exits: int) -> dict:
    """Target exit (K classes): predicting too early enters in vain, too late skips an exit."""
    y_true, y_pred = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    with warnings.catch_warnings():  # a predicted exit no reached sample takes is expected, not a problem
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        bal = balanced_accuracy_score(y_true, y_pred) if len(np.unique(y_true)) > 1 else np.nan
    return {
        "accuracy": accuracy_score(y_true, y_pred),
        "balanced_accuracy": bal,
        "f1": f1_score(y_true, y_pred, average="macro", zero_division=0),
        "false_enter": float(np.mean(y_pred < y_true)),
        "false_skip": float(np.mean(y_pred > y_true)),
        "positive_rate": np.nan,
        "confusion": confusion_matrix(y_true, y_pred, labels=list(range(num_exits))).tolist(),
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, threshold: float | None = None) -> dict:
    """Entropy forecast (nats): MAE and R²; with the exit threshold T, the gate it implies
    (entropy < T) scored like a gate."""
    out = {"mae": mean_absolute_error(y_true, y_pred),
           "r2": r2_score(y_true, y_pred) if len(y_true) > 1 else np.nan}
    if threshold is not None and np.isfinite(threshold):
        g = gate_metrics(np.asarray(y_true) < threshold, np.asarray(y_pred) < threshold)
        out.update({k: g[k] for k in ("accuracy", "balanced_accuracy", "f1", "false_enter", "false_skip")})
    return out


def ranking_metrics(leaves: np.ndarray, score: np.ndarray) -> dict:
    """How well a gate's score ranks the samples that leave at its exit (``leaves`` = 1) above those that do not,
    independent of any cut: ROC AUC and average precision (NaN when only one class is present)."""
    leaves, score = np.asarray(leaves).astype(int), np.asarray(score, dtype=np.float64)
    if len(np.unique(leaves)) < 2:
        return {"roc_auc": np.nan, "average_precision": np.nan}
    return {"roc_auc": float(roc_auc_score(leaves, score)),
            "average_precision": float(average_precision_score(leaves, score))}


def gate_curves(leaves: np.ndarray, score: np.ndarray) -> dict:
    """ROC (false / true positive rate) and precision-recall curves of a gate's score against whether the sample
    leaves at the exit, plus :func:`ranking_metrics`; ``{}`` when only one class is present."""
    leaves, score = np.asarray(leaves).astype(int), np.asarray(score, dtype=np.float64)
    if len(np.unique(leaves)) < 2:
        return {}
    fpr, tpr, _ = roc_curve(leaves, score)
    precision, recall, _ = precision_recall_curve(leaves, score)
    return {"fpr": fpr, "tpr": tpr, "precision": precision, "recall": recall, "positive_rate": float(leaves.mean()),
            **ranking_metrics(leaves, score)}


__all__ = ["exit_metrics", "gate_curves", "gate_metrics", "ranking_metrics", "regression_metrics"]
