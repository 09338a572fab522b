"""The report's verdict cards: per device profile, the fastest policy that keeps accuracy, its speed-up and
accuracy change with CIs, and what the study found in sentences (from ``simulate/references.csv`` where the study
compared references, else from the headline)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.policies import is_operating_point
from .verdict import card

__all__ = ["accuracy_slack", "cards", "fastest_keeping"]


def _ci(v: float, lo: float, hi: float, fmt: str) -> str:
    s = fmt.format(v)
    return s + (f" [{fmt.format(lo)}, {fmt.format(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else "")


def _present(c: dict) -> dict:
    """A :func:`analysis.study.verdict.card` as the template shows it."""
    sp, lo, hi = c["speedup"], c["speedup_lo"], c["speedup_hi"]
    if c["is_full"] or not np.isfinite(sp):
        big, tone = "nothing beats full here", "slower"
        sentences = ["No policy that keeps accuracy runs faster than the whole network on this profile."]
    else:
        big = f"{sp:.2f}x faster than full" if sp >= 1 else f"{1 / sp:.2f}x slower than full"
        tone = "faster" if lo > 1 else "slower" if hi < 1 else ""  # NaN (no CI) compares False: no tone
        sentences = []
    acc = _ci(c["acc_pts"], c["acc_lo"], c["acc_hi"], "{:+.2f}")
    return {"profile": c["profile"], "big": big, "tone": tone, "placement": c["placement"], "rule": c["rule"],
            "latency": f"{c['best_ms']:.4g} ms against full's {c['full_ms']:.4g} ms (speed-up "
                       f"{_ci(sp, lo, hi, '{:.2f}')})",
            "accuracy": f"{acc} points", "pays": c["pays"], "predictors": c["predictors"],
            "sentences": sentences + c["sentences"]}


def accuracy_slack(config) -> float:
    """The accuracy points a policy may lose against ``full`` and still count as keeping it: the study's placement
    constraint (``max_acc_drop``), 0.5 where the study has none (a latency budget)."""
    drop = getattr(getattr(config, "placement", None), "max_acc_drop", None)
    return 0.5 if drop is None else float(drop)


def fastest_keeping(d: pd.DataFrame, eps_pts: float) -> int | None:
    """Position in ``d`` (one profile's summary) of the fastest calibrated policy within ``eps_pts`` accuracy points of
    ``full`` (any calibrated policy where ``d`` has no ``full`` row), or None."""
    full = d[d.policy == "full"]
    floor = full["accuracy_%"].iloc[0] - eps_pts if len(full) else -np.inf
    ok = (d.policy.map(is_operating_point) & (d["accuracy_%"] >= floor)).to_numpy()
    return int(np.argmin(np.where(ok, d.mean_ms, np.inf))) if ok.any() else None


def _from_summary(summary: pd.DataFrame, eps_pts: float) -> list[dict]:
    """Cards from the headline alone (a study without references): the fastest calibrated policy within ``eps_pts``
    of full's accuracy; nothing is said about predictors beyond the table."""
    out = []
    for prof, d in summary.groupby("profile", sort=False):
        d = d.reset_index(drop=True)
        full = d[d.policy == "full"]
        if not len(full):
            continue
        f = full.iloc[0]
        pos = fastest_keeping(d, eps_pts)
        b = d.iloc[pos] if pos is not None else f
        row = {"profile": prof, "best_placement": b.policy, "full_placement": "full", "best_rule": "",
               "best_ms": b.mean_ms, "full_ms": f.mean_ms, "best_vs_full": b.mean_ms / f.mean_ms,
               "best_vs_full_acc_pts": b["accuracy_%"] - f["accuracy_%"]}
        c = card(row)
        c["sentences"] = [s for s in c["sentences"] if not s.startswith("Predictors cannot")]
        out.append(c)
    return out


def cards(result) -> list[dict]:
    """One card per profile of a :class:`~analysis.study.result.StudyResult`, in the order the study ran them."""
    refs = result.references
    if refs is not None and len(refs):
        raw = [card(r) for r in refs.to_dict("records")]
    else:
        raw = _from_summary(result.simulation["summary"], accuracy_slack(result.config))
    return [_present(c) for c in raw]
