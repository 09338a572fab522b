"""Threshold calibration on ``calib`` (never on ``test``): BranchyNet's grid screening, a per-exit
target accuracy on the samples that reach each exit (sequential), and MSDNet's budgeted-batch rule (exit
proportions q_k ∝ p^k, also sequential)."""
from __future__ import annotations

import numpy as np

from branchy.core import check_number
from branchy.exits import LOWER_IS_CONFIDENT, ExitRule, confidence

from .units import percent_setting


def _oriented(conf: np.ndarray, measure: str) -> np.ndarray:
    """Confidence flipped so that smaller = more confident (entropy-like)."""
    return conf if LOWER_IS_CONFIDENT[measure] else -conf


def _unorient(t: np.ndarray, measure: str) -> np.ndarray:
    return t if LOWER_IS_CONFIDENT[measure] else -t


def _between(a: float, b: float) -> float:
    """A threshold t with a < t <= b, so that ``conf < t`` takes a and not b (b > a)."""
    if not np.isfinite(b):
        return float(np.nextafter(a, np.inf))
    t = (a + b) / 2
    return float(b if t <= a else t)


def thresholds_for_accuracy(logits: np.ndarray, labels: np.ndarray, target: float | None = None, *,
                            measure: str = "entropy", min_count: int = 1, kept=None) -> np.ndarray:
    """Sequential calibration: per kept side exit in order, the loosest threshold whose accepted samples,
    among those that *reach* the exit (not accepted by an earlier kept exit), are at least ``target``
    accurate on these data (a fraction: 0.99; default: the final exit's accuracy; the settings and
    :func:`calib_rule` take percent and divide). Returns ``[K]`` with the last = inf
    (−inf for max-prob/margin: always passes). An exit that never reaches the target, or is not kept, gets
    a threshold nothing passes."""
    z = np.asarray(logits)
    n, k, _ = z.shape
    correct = z.argmax(-1) == labels[:, None]
    if target is None:
        target = float(correct[:, -1].mean())
    kept = np.ones(k, bool) if kept is None else np.asarray(kept, bool)
    o = _oriented(confidence(z, measure), measure)
    t = np.full(k, -np.inf)
    reach = np.ones(n, bool)
    for i in range(k - 1):
        if not kept[i]:
            continue
        rows = np.nonzero(reach)[0]
        m = len(rows)
        if m == 0:
            break
        oi = o[rows, i]
        order = np.argsort(oi, kind="stable")
        acc = np.cumsum(correct[rows[order], i]) / np.arange(1, m + 1)
        srt = oi[order]
        ends = np.append(srt[1:] > srt[:-1], True)  # a cut can only fall after the last of equal values
        ok = np.nonzero((acc >= target) & (np.arange(1, m + 1) >= min_count) & ends)[0]
        if len(ok):
            j = ok[-1]
            # halfway to the next value so that exactly the first j+1 samples pass (strict <)
            nxt = srt[j + 1] if j + 1 < m else srt[j] + 1.0
            t[i] = _between(srt[j], nxt)
            reach &= ~(o[:, i] < t[i])
    t[-1] = np.inf
    return _unorient(t, measure)


def calib_thresholds(cache, target: float | None = None, *, measure: str = "entropy", kept=None) -> np.ndarray:
    """:func:`thresholds_for_accuracy` on a feature cache's ``calib`` split (where thresholds are tuned); ``target``
    a fraction, as there (:func:`calib_rule` takes percent)."""
    return thresholds_for_accuracy(np.asarray(cache.logits("calib")), cache.labels("calib"), target,
                                   measure=measure, kept=kept)


def calib_rule(cache, target: float | None = None, *, measure: str = "entropy", kept=None) -> ExitRule:
    """The :class:`~branchy.exits.ExitRule` of the sequential target-accuracy calibration on ``calib``.

    Args:
        cache: the feature cache (its calib split).
        target: the accuracy in **percent** (99: 99 %) the samples each side exit accepts must reach, among those
            that reach it; None: the final exit's own accuracy. A fraction <= 1 (0.99, the unit before 0.3) is
            still read as one, times 100, with a FutureWarning, until 0.4.
        measure: the confidence measure (``entropy``, ``norm_entropy``, ``max_prob``, ``margin``).
        kept: which exits are kept (default all); the samples that reach an exit depend on the ones before it.
    """
    if target is not None:
        target = percent_setting("target", target)
        check_number("target", target, "in (0, 100] (an accuracy in percent, e.g. 99 for 99 %)",
                     lambda v: 0 < v <= 100)
    t = calib_thresholds(cache, None if target is None else target / 100, measure=measure, kept=kept)
    return ExitRule(measure, tuple(t), target_how(target), "calib")


def target_how(target_pct: float | None) -> str:
    """How a sequential target-accuracy rule was tuned, as its :attr:`ExitRule.tuned_by` says it:
    ``target-acc 99% sequential`` (``target_pct`` in percent; None: the final exit's accuracy)."""
    return "target-acc " + ("final exit's" if target_pct is None else f"{float(target_pct):.4g}%") + " sequential"


def how_target(how: str) -> float | None:
    """The target accuracy (percent) of a rule tuned by :func:`target_how` (``target-acc 99% sequential``; a rule
    saved before 0.3 says ``target-acc 0.99 sequential``, a fraction); None for any other rule."""
    parts = how.split()
    if len(parts) < 2 or parts[0] != "target-acc":
        return None
    try:
        return float(parts[1][:-1]) if parts[1].endswith("%") else 100 * float(parts[1])
    except ValueError:
        return None


def threshold_grid(logits: np.ndarray, n: int = 20, *, measure: str = "entropy") -> np.ndarray:
    """BranchyNet's screening: ``n`` candidate thresholds per side exit at quantiles of its confidence,
    shared across exits as settings ``[n, K]`` (setting i puts every exit at its own quantile i)."""
    z = np.asarray(logits)
    conf = _oriented(confidence(z, measure), measure)
    qs = np.linspace(0, 1, n)
    grid = np.quantile(conf, qs, axis=0)  # [n, K]
    grid[0] = -np.inf  # nothing passes: the full network
    grid[:, -1] = np.inf
    return _unorient(grid, measure)


def budgeted_thresholds(logits: np.ndarray, p: float, *, measure: str = "entropy") -> np.ndarray:
    """MSDNet's budgeted-batch rule: thresholds so that the fractions of samples leaving at exits
    0..K-1 follow q_k ∝ p^k (p < 1 favours early exits; larger p pushes samples later)."""
    z = np.asarray(logits)
    n, k, _ = z.shape
    q = p ** np.arange(k, dtype=np.float64)
    q /= q.sum()
    conf = _oriented(confidence(z, measure), measure)
    t = np.full(k, -np.inf)
    left = np.ones(n, bool)
    for i in range(k - 1):
        want = int(round(q[i] * n))
        rem = np.nonzero(left)[0]
        if want <= 0 or len(rem) == 0:
            continue
        c = np.sort(conf[rem, i])
        want = min(want, len(c))
        while want < len(c) and c[want] == c[want - 1]:  # ties go together: never split equal values
            want -= 1
            if want == 0:
                break
        if want == 0:
            continue
        hi = c[want] if want < len(c) else c[-1] + 1.0
        t[i] = _between(c[want - 1], hi)
        left &= ~(conf[:, i] < t[i])
    t[-1] = np.inf
    return _unorient(t, measure)


def resolve_rule(cache, thresholds=None, target_acc: float | None = None, measure: str = "entropy"):
    """The exit rule of a command: the given side-exit ``thresholds``, or calibrated on calib so each side exit's
    accepted samples reach ``target_acc`` percent (default: the final exit's calib accuracy)."""
    from branchy.exits import ExitRule
    from predictors.targets import check_thresholds

    if thresholds is not None:
        return ExitRule.given(check_thresholds(thresholds, cache.num_exits), cache.num_exits, measure)
    return calib_rule(cache, target_acc, measure=measure)


FAMILY_TARGETS = tuple(float(t) for t in np.round(np.linspace(0.90, 1.0, 21), 3))  # sequential target accuracies
# (fractions, as thresholds_for_accuracy takes them; the rules say them in percent)
FAMILY_BUDGETS = tuple(float(p) for p in np.round(np.geomspace(0.05, 4.0, 12), 4))  # MSDNet's p


def rule_family(logits: np.ndarray, labels: np.ndarray, *, measure: str = "entropy", kept=None,
                targets=FAMILY_TARGETS, budgets=FAMILY_BUDGETS) -> list[tuple[str, np.ndarray]]:
    """The confidence-rule family a study tunes for latency on calib: ``(how, thresholds [K])`` for every sequential
    target accuracy in ``targets`` (recalibrated for the ``kept`` exits) and every budgeted-batch ``p`` in
    ``budgets`` (exits not kept never pass). Duplicated threshold vectors are dropped. The caller scores them under
    its cost model and accuracy constraint (:func:`analysis.study.baselines.best_free`)."""
    z = np.asarray(logits)
    k = z.shape[1]
    kept = np.ones(k, bool) if kept is None else np.asarray(kept, bool)
    never = np.inf if not LOWER_IS_CONFIDENT[measure] else -np.inf
    out, seen = [], set()
    for t in targets:
        out.append((target_how(100 * t), thresholds_for_accuracy(z, labels, t, measure=measure, kept=kept)))
    for p in budgets:
        th = budgeted_thresholds(z, p, measure=measure)
        th[:-1] = np.where(kept[:-1], th[:-1], never)
        out.append((f"budgeted p={p:g}", th))
    uniq = []
    for how, th in out:
        key = tuple(np.asarray(th, float).round(12))
        if key not in seen:
            seen.add(key)
            uniq.append((how, np.asarray(th, float)))
    return uniq


__all__ = ["FAMILY_BUDGETS", "FAMILY_TARGETS", "budgeted_thresholds", "calib_rule", "calib_thresholds", "how_target",
           "resolve_rule", "rule_family", "target_how", "threshold_grid", "thresholds_for_accuracy"]
