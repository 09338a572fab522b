"""What a comparison row of :func:`analysis.study.baselines.compare_references` found: whether predictors pay
(:func:`pays`, the one test every table, suite and report uses) and the sentence that says so (:func:`verdict`)."""
from __future__ import annotations

import numpy as np

from ..core.paired import non_inferior

__all__ = ["pays", "verdict"]


def pays(row: dict) -> bool:
    """Do predictors pay on a comparison row? The best placement with a predictor beats the best predictor-free policy
    (``gated_vs_free_hi < 1``) at non-inferior accuracy (:func:`non_inferior`, ``acc_eps_pts``) and, where the row
    was also run for real (``real_gated_vs_free_hi``, :mod:`analysis.study.realrun`), the real run's CI lies below 1
    too: a claim holds only where simulation and the real run agree."""
    hi = row.get("gated_vs_free_hi", np.nan)
    if hi is None or not np.isfinite(hi) or not hi < 1:
        return False
    if not non_inferior(row.get("gated_vs_free_acc_lo_pts"), row.get("gated_vs_free_acc_pts"),
                        row.get("acc_eps_pts", 0.0)):
        return False
    real = row.get("real_gated_vs_free_hi", np.nan)
    return real is None or not np.isfinite(real) or bool(real < 1)


def _ci(row: dict, col: str) -> str:
    lo, hi = row.get(f"{col}_lo"), row.get(f"{col}_hi")
    return f"{row[col]:.3f}" + ("" if lo is None or not np.isfinite(lo) else f" [{lo:.3f}, {hi:.3f}]")


def verdict(row: dict) -> str:
    """What a comparison row found, in words (test; decided on calib)."""
    free = f"the best predictor-free policy ({row['best_free_placement']}, {row['best_free_rule']})"
    head = (f"{row['profile']}: the default cascade runs at {_ci(row, 'cascade_vs_full')} x full, {free} at "
            f"{_ci(row, 'free_vs_full')} x full")
    if "gated_vs_free" not in row or not np.isfinite(row.get("gated_vs_free", np.nan)):
        why = row.get("note") or "no placement with a predictor"
        return f"{head}. Predictors cannot be tried here: {why}.{_real_sentence(row)}"
    gated = (f"the best placement with a predictor ({row['best_gated_placement']}) runs at "
             f"{_ci(row, 'gated_vs_free')} x it, accuracy {row['gated_vs_free_acc_pts']:+.2f} points")
    if np.isfinite(row.get("gated_vs_free_acc_lo_pts", np.nan)):
        gated += f" [{row['gated_vs_free_acc_lo_pts']:+.2f}, {row['gated_vs_free_acc_hi_pts']:+.2f}]"
    bound = ""
    if np.isfinite(row.get("perfect_gates_vs_free", np.nan)):
        bound = (f" Free perfect gates in front of the exits it keeps would run at {row['perfect_gates_vs_free']:.3f} x "
                 f"the best predictor-free policy; side exits are {row['side_exit_cost_share_%']:.0f} % of full's "
                 f"cost here.")
    real = _real_sentence(row)
    if row["pays"]:
        return f"{head}; {gated}: predictors pay here.{bound}{real}"
    reasons = []
    if not row.get("gated_vs_free_hi", np.inf) < 1:
        reasons.append("its latency CI reaches 1 or above")
    if not non_inferior(row.get("gated_vs_free_acc_lo_pts"), row.get("gated_vs_free_acc_pts"), row["acc_eps_pts"]):
        reasons.append(f"its accuracy may be more than {row['acc_eps_pts']:g} points lower")
    if not reasons:
        reasons.append("the real run does not confirm it: its CI reaches 1 or above")
    return f"{head}; {gated}: predictors do not pay here ({' and '.join(reasons)}).{bound}{real}"


def _real_sentence(row: dict) -> str:
    """The real run of a row (:mod:`analysis.study.realrun`) in words; empty without one."""
    n = row.get("real_n")
    if n is None or not np.isfinite(n):
        return ""
    parts = []
    for col, what in (("cascade_vs_full", "the default cascade"), ("free_vs_full", "the best predictor-free policy")):
        if np.isfinite(row.get(f"real_{col}", np.nan)):
            parts.append(f"{what} {_ci(row, f'real_{col}')} x full (simulated {row[f'realsim_{col}']:.3f})")
    if np.isfinite(row.get("real_gated_vs_free", np.nan)):
        parts.append(f"the gated placement {_ci(row, 'real_gated_vs_free')} x the best predictor-free policy "
                     f"(simulated {row['realsim_gated_vs_free']:.3f})")
    agree = (f"the simulation orders {int(row['real_pairs_agree'])} of {int(row['real_pairs'])} pairs of policies as "
             f"the real run does" if row.get("real_pairs") else "no two policies differ by more than 5 % for real")
    return (f" Run for real ({row['real_backend']}, {int(n)} test samples at batch 1): {'; '.join(parts)}; "
            f"{agree}.")
