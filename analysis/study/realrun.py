"""The decisive comparison run for real (docs/semantics.md §3.4, issue 22): ``full``, the default cascade, the best
predictor-free policy and the best placement with a predictor, as :func:`analysis.study.baselines.decide_baselines`
decided them on calib under a *measured* profile, run by the real early-exit runtime on test samples one at a time
(batch 1), interleaved (:func:`analysis.study.validate.validate`), on the backend that profile was measured on.

The best confidence rule and the best learned exit policy (issue 27) run beside them, with the cuts decided on calib.

The result is a set of ``real_*`` columns for a comparison row: per policy the measured and the simulated mean ms
on the same samples (``real_{policy}_ms``, ``realsim_{policy}_ms``), per ratio of :data:`REAL_RATIOS` the measured
ratio with a paired bootstrap 95 % CI over those samples (``real_{ratio}``, ``_lo``, ``_hi``) and the simulated one
(``realsim_{ratio}``), the share of samples whose exit equals the simulator's, and how many pairs of policies the
simulation orders as the real run does (``real_pairs_agree`` of ``real_pairs``: pairs whose real means differ by more
than :data:`analysis.study.validate_lines.PAIR_MARGIN`)."""
from __future__ import annotations

import numpy as np
import torch

from ..core.costs import get_profile
from ..core.paired import ratio_ci
from .baselines import RATIOS, Baselines, compare_references, decide_baselines
from .verdict import pays, verdict
from .validate_lines import order_agreement

REAL_POLICIES = ("full", "cascade", "best-rule", "best-free", "best-gated", "best-learned")
REAL_RATIOS = {c: nd for c, nd in RATIOS.items() if set(nd) <= set(REAL_POLICIES)}


def _col(name: str) -> str:
    return name.replace("-", "_")


def real_columns(cache, model, test_x: torch.Tensor, base: Baselines, *, predictors: dict, cfg, backend: str,
                 reps: int = 3, n_boot: int = 1000, seed: int = 0, progress: bool = True) -> dict:
    """Run ``base``'s decided policies (:data:`REAL_POLICIES`) for real on ``test_x`` (the first test samples) and
    return the ``real_*`` columns (see the module's docstring). Latencies are ms per sample at batch 1, the median of
    ``reps`` interleaved passes, the cache's thread count. ``progress``: a bar over the policy runs."""
    from .validate import validate_samples

    pls = {n: (base[n].placement, base.objective.cuts(base[n].placement))
           for n in ("best-rule", "best-free", "best-gated", "best-learned") if n in base.decided}
    df, meas, sim = validate_samples(cache, model, test_x, predictors=predictors, cfg=cfg, rule=base.objective.rule,
                                     placements=pls, reps=reps, n_boot=0, seed=seed, backend=backend, recheck=False,
                                     policies=["full", "cascade"], progress=progress)
    out = {"real_backend": backend, "real_n": len(test_x), "real_reps": reps,
           "real_threads": int(df.threads.iloc[0]), "real_exit_match_%": float(df["exit_match_%"].min())}
    names = [n for n in REAL_POLICIES if n in meas]
    for n in names:
        out[f"real_{_col(n)}_ms"] = float(meas[n].mean())
        out[f"realsim_{_col(n)}_ms"] = float(sim[n].mean())
    for col, (num, den) in REAL_RATIOS.items():
        if num in meas and den in meas:
            r, lo, hi = ratio_ci(meas[num], meas[den], n_boot, seed=seed)
            out.update({f"real_{col}": r, f"real_{col}_lo": lo, f"real_{col}_hi": hi,
                        f"realsim_{col}": float(sim[num].mean() / sim[den].mean())})
    agree, total, _ = ordered_pairs(out)
    out.update({"real_pairs": total, "real_pairs_agree": agree})
    return out


def ordered_pairs(row: dict) -> tuple[int, int, list[str]]:
    """:func:`analysis.study.validate_lines.order_agreement` over the :data:`REAL_POLICIES` a row with real columns
    holds."""
    names = [n for n in REAL_POLICIES if np.isfinite(row.get(f"real_{_col(n)}_ms", np.nan))]
    return order_agreement(names, [row[f"real_{_col(n)}_ms"] for n in names],
                           [row[f"realsim_{_col(n)}_ms"] for n in names])


def compare_for_real(cache, predictors: dict, *, rule, cfg, constraint, profile: str, model,
                     test_x: torch.Tensor, reps: int = 3, n_boot: int = 1000, n_jobs: int = 1, seed: int = 0,
                     progress: bool = True) -> dict:
    """:func:`analysis.study.baselines.compare_references` under ``profile``, and where that profile was measured
    on this machine (``measured``, ``measured-BACKEND``) its decided policies run for real on ``test_x``
    (:func:`real_columns`); the row's ``pays`` and ``verdict`` then take the real run into account
    (:func:`analysis.study.verdict.pays`). ``progress``: a bar over the real run's policy runs."""
    base = decide_baselines(cache, predictors, profile=profile, rule=rule, cfg=cfg, constraint=constraint,
                            n_jobs=n_jobs, seed=seed)
    row = compare_references(cache, predictors, rule=rule, cfg=cfg, constraint=constraint, profile=profile,
                             n_boot=n_boot, n_jobs=n_jobs, seed=seed, base=base)
    prof = get_profile(profile)
    if not (prof.measured and len(test_x) and cache.manifest.get("device") == "cpu" and prof.backend in cache.backends):
        return row  # a modelled device, or costs not measured on this machine's CPU: nothing to run for real
    row.update(real_columns(cache, model, test_x, base, predictors=predictors, cfg=cfg, backend=prof.backend,
                            reps=reps, n_boot=n_boot, seed=seed, progress=progress))
    row["pays"] = pays(row)
    row["verdict"] = verdict(row)
    return row


__all__ = ["REAL_POLICIES", "REAL_RATIOS", "compare_for_real", "ordered_pairs", "real_columns"]
