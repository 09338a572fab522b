"""What a comparison row of :func:`analysis.study.baselines.compare_references` found: whether predictors pay
(:func:`pays`, the one test every table, suite and report uses) and the sentence that says so (:func:`verdict`)."""
from __future__ import annotations

import numpy as np

from ..core.paired import non_inferior

__all__ = ["beats", "card", "gated_pays", "learned_pays", "learned_sentence", "pays", "verdict"]


def beats(row: dict, col: str) -> bool:
    """Whether the numerator of ratio ``col`` (e.g. ``gated_vs_free``) beats its denominator on a comparison row: the
    latency CI lies below 1 (``{col}_hi < 1``), the accuracy is non-inferior (:func:`non_inferior` on
    ``{col}_acc_lo_pts``, ``acc_eps_pts``) and, where the row was also run for real (``real_{col}_hi``), the real
    run's CI lies below 1 too: a claim holds only where simulation and the real run agree."""
    hi = row.get(f"{col}_hi", np.nan)
    if hi is None or not np.isfinite(hi) or not hi < 1:
        return False
    if not non_inferior(row.get(f"{col}_acc_lo_pts"), row.get(f"{col}_acc_pts"), row.get("acc_eps_pts", 0.0)):
        return False
    real = row.get(f"real_{col}_hi", np.nan)
    return real is None or not np.isfinite(real) or bool(real < 1)


def gated_pays(row: dict) -> bool:
    """The best placement with a gate or jump beats the best predictor-free policy (:func:`beats`)."""
    return beats(row, "gated_vs_free")


def learned_pays(row: dict) -> bool:
    """The best learned exit policy beats the best predictor-free policy (:func:`beats`)."""
    return beats(row, "learned_vs_free")


def pays(row: dict) -> bool:
    """Do predictors pay on a comparison row (DESIGN §3.4)? The best placement with a predictor (gate or jump), or the
    best learned exit policy, beats the best predictor-free policy at non-inferior accuracy, confirmed by the real
    run where there is one (:func:`beats`)."""
    return gated_pays(row) or learned_pays(row)


def _acc_ci(row: dict, col: str) -> str:
    """The accuracy difference of ratio ``col`` in points, with its CI where the row has one."""
    s = f"{_num(row, f'{col}_acc_pts'):+.2f} points"
    lo, hi = _num(row, f"{col}_acc_lo_pts"), _num(row, f"{col}_acc_hi_pts")
    return s + (f" [{lo:+.2f}, {hi:+.2f}]" if np.isfinite(lo) else "")


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
        lrn = learned_sentence(row)
        if lrn:
            answer = "the learned exit policy pays here" if row.get("pays") else "the learned exit policy does not pay"
            return f"{head}. Gates and jumps cannot be tried here ({why}); {answer}. {lrn}{_real_sentence(row)}"
        return f"{head}. Predictors cannot be tried here: {why}.{_real_sentence(row)}"
    gated = (f"the best placement with a predictor ({row['best_gated_placement']}) runs at "
             f"{_ci(row, 'gated_vs_free')} x it, accuracy {_acc_ci(row, 'gated_vs_free')}")
    bound = ""
    if np.isfinite(row.get("perfect_gates_vs_free", np.nan)):
        bound = (f" Free perfect gates in front of the exits it keeps would run at {row['perfect_gates_vs_free']:.3f} x "
                 f"the best predictor-free policy; side exits are {row['side_exit_cost_share_%']:.0f} % of full's "
                 f"cost here.")
    lrn = learned_sentence(row)
    real = _real_sentence(row) + (" " + lrn if lrn else "")
    if gated_pays(row):
        return f"{head}; {gated}: predictors pay here.{bound}{real}"
    if row["pays"]:
        return f"{head}; {gated}: gates and jumps do not pay, the learned exit policy does.{bound}{real}"
    return f"{head}; {gated}: predictors do not pay here ({' and '.join(_reasons(row))}).{bound}{real}"


def learned_sentence(row: dict) -> str:
    """The best learned exit policy against the best confidence rule (and the best predictor-free policy)."""
    r = _num(row, "learned_vs_best_rule")
    if not np.isfinite(r):
        return ""
    s = (f"The best learned exit policy ({row.get('best_learned_placement', '')}) runs at "
         f"{_ci(row, 'learned_vs_best_rule')} x the best confidence rule, accuracy "
         f"{_acc_ci(row, 'learned_vs_best_rule')}")
    s += ": it beats the rule" if beats(row, "learned_vs_best_rule") else ": it does not beat the rule"
    if np.isfinite(_num(row, "learned_vs_free")):
        s += f"; {_ci(row, 'learned_vs_free')} x the best predictor-free policy"
    return s + "."


def _reasons(row: dict) -> list[str]:
    """Why the best placement with a predictor does not pay on a row (empty where it pays)."""
    if gated_pays(row):
        return []
    reasons = []
    if not row.get("gated_vs_free_hi", np.inf) < 1:
        reasons.append("its latency CI reaches 1 or above")
    if not non_inferior(row.get("gated_vs_free_acc_lo_pts"), row.get("gated_vs_free_acc_pts"), row["acc_eps_pts"]):
        reasons.append(f"its accuracy may be more than {row['acc_eps_pts']:g} points lower")
    if not reasons:
        reasons.append("the real run does not confirm it: its CI reaches 1 or above")
    return reasons


def _num(row: dict, key: str) -> float:
    v = row.get(key)
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def card(row: dict) -> dict:
    """A comparison row as the report's verdict card: the fastest policy that keeps accuracy (decided on calib,
    reported on test) with its speed-up over ``full`` (x, 95 % CI) and accuracy change (points, CI), and what the
    study found in sentences, the answer first."""
    ratio, lo, hi = (_num(row, f"best_vs_full{s}") for s in ("", "_lo", "_hi"))
    c = {"profile": row["profile"], "placement": row.get("best_placement", ""), "rule": row.get("best_rule", ""),
         "best_ms": _num(row, "best_ms"), "full_ms": _num(row, "full_ms"),
         "speedup": 1 / ratio if ratio > 0 else np.nan, "speedup_lo": 1 / hi if hi > 0 else np.nan,
         "speedup_hi": 1 / lo if lo > 0 else np.nan, "acc_pts": _num(row, "best_vs_full_acc_pts"),
         "acc_lo": _num(row, "best_vs_full_acc_lo_pts"), "acc_hi": _num(row, "best_vs_full_acc_hi_pts"),
         "pays": bool(row.get("pays")), "is_full": row.get("best_placement") == row.get("full_placement"),
         "predictors": ("pay here" if row.get("pays") else "do not pay here" if np.isfinite(_num(row, "gated_vs_free"))
                        or np.isfinite(_num(row, "learned_vs_free"))
                        else "not tried")}
    c["sentences"] = [s for s in (_predictor_sentence(row), learned_sentence(row), _cascade_sentence(row),
                                  _real_card_sentence(row)) if s]
    return c


def _predictor_sentence(row: dict) -> str:
    """Do predictors pay, and if not, why, with the headroom free perfect gates would leave."""
    g = _num(row, "gated_vs_free")
    if not np.isfinite(g):
        who = "Gates and jumps" if np.isfinite(_num(row, "learned_vs_free")) else "Predictors"
        return f"{who} cannot be tried here: {row.get('note') or 'no placement with a predictor'}."
    where = f"{_ci(row, 'gated_vs_free')} x the best predictor-free policy"
    if gated_pays(row):
        return f"Predictors pay here: the best placement with a predictor runs at {where}."
    if row.get("pays"):
        return f"Gates and jumps do not pay here (the best runs at {where}); the learned exit policy does."
    s = f"Predictors do not pay here: the best placement with a predictor runs at {where} ({' and '.join(_reasons(row))})."
    p = _num(row, "perfect_gates_vs_free")
    if np.isfinite(p):
        saved = 100 * (1 - p)
        s += (" Even free, perfect gates would save nothing here." if saved < 0.5 else
              f" Even free, perfect gates would save only {saved:.0f} % of the best predictor-free policy's latency.")
    return s


def _cascade_sentence(row: dict) -> str:
    """The default cascade against ``full``: slower, faster or no different."""
    c, lo, hi = (_num(row, f"cascade_vs_full{s}") for s in ("", "_lo", "_hi"))
    if not np.isfinite(c):
        return ""
    share = _num(row, "side_exit_cost_share_%")
    cost = f": its side exits cost {share:.0f} % of full's cost" if np.isfinite(share) else ""
    if np.isfinite(lo) and lo > 1:
        return f"The default cascade is slower than full on this profile ({_ci(row, 'cascade_vs_full')} x full){cost}."
    if np.isfinite(hi) and hi < 1:
        return f"The default cascade runs at {_ci(row, 'cascade_vs_full')} x full."
    return f"The default cascade is no faster than full here ({_ci(row, 'cascade_vs_full')} x full)."


def _real_card_sentence(row: dict) -> str:
    """The real run that checks a row, shortly; empty without one."""
    n = _num(row, "real_n")
    if not np.isfinite(n):
        return ""
    pairs = (f"; the simulation orders {int(row['real_pairs_agree'])} of {int(row['real_pairs'])} pairs of "
             f"policies as it does" if _num(row, "real_pairs") > 0 else "")
    free = (f": the best predictor-free policy ran at {_ci(row, 'real_free_vs_full')} x full (simulated "
            f"{_num(row, 'realsim_free_vs_full'):.3f})" if np.isfinite(_num(row, "real_free_vs_full")) else "")
    return f"Checked for real on {row['real_backend']} ({int(n)} test samples at batch 1){free}{pairs}."


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
