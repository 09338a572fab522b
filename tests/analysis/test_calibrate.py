"""Threshold calibration: target accuracy, exit budgets and the threshold grid."""
import numpy as np

from analysis.core.calibrate import budgeted_thresholds, threshold_grid, thresholds_for_accuracy
from branchy.exits import confidence


def _logits_labels(n=2000, k=3, seed=0):
    g = np.random.default_rng(seed)
    y = g.integers(0, 4, n)
    z = g.normal(size=(n, k, 4))
    conf = g.random((n, k)) * 4
    z[np.arange(n)[:, None], np.arange(k), y[:, None]] += conf  # confident rows are mostly right
    return z, y


def test_threshold_calibration_rules():
    z, y = _logits_labels()
    t = thresholds_for_accuracy(z, y, 0.9)
    ent = confidence(z, "entropy")
    correct = z.argmax(-1) == y[:, None]
    for k in range(2):
        acc = correct[ent[:, k] < t[k], k].mean()
        assert acc >= 0.9
        looser = correct[ent[:, k] < t[k] + 0.05, k].mean()
        assert looser < 0.9 or (ent[:, k] < t[k] + 0.05).sum() == (ent[:, k] < t[k]).sum()
    assert np.isinf(t[-1])
    tm = thresholds_for_accuracy(z, y, 0.9, measure="max_prob")
    assert correct[confidence(z, "max_prob")[:, 0] > tm[0], 0].mean() >= 0.9
    for p in (0.3, 1.0):
        tb = budgeted_thresholds(z, p)
        left = np.ones(len(y), bool)
        shares = []
        for k in range(2):
            go = left & (ent[:, k] < tb[k])
            shares.append(go.mean())
            left &= ~go
        q = p ** np.arange(3)
        q /= q.sum()
        np.testing.assert_allclose(shares, q[:2], atol=0.002)
    g = threshold_grid(z, 5)
    assert g.shape == (5, 3) and np.isneginf(g[0, 0])

