"""Would a learned exit policy beat the tuned confidence rule? (issue 27) On the corrupted studies of the backbone suite
(configs/suites/backbones.yaml: the five backbones trained jointly on mnist5k-c; the ZTW studies have chained exits,
where no policy may skip a head, so they have no learned row).

Per study and device profile (a row), everything decided on calib and reported on test, ms per sample at batch 1
(``measured``: this CPU, the cache's threads, the costs' independent profilings resampled in the CIs; edge profiles:
modelled from MACs and bytes):
- the best confidence rule (``best-rule``): the fastest rule of the confidence-rule family with every exit kept,
  within the study's max_acc_drop (0.5) accuracy points of ``full`` on calib (:mod:`analysis.study.baselines`);
- the best learned exit policy (``best-learned``): a ``leave`` predictor of the registry at each kept side exit (the
  suite fits ``nn`` and ``linear-cv`` ones, cross-fitted on calib, on the pooled features and the entropy,
  max-probability and margin of every exit so far) decides whether the sample leaves; every set of kept exits, its
  cuts tuned on calib out of fold under the same constraint, the predictors' cost charged at every side exit entered
  (measured: timed as the runtime runs them; edge profiles: their MACs);
- R = best-learned / best-rule mean latency on test with a paired bootstrap 95 % CI, and the accuracy difference
  (points, CI). A row is at non-inferior accuracy when the CI's lower end is >= -max_acc_drop. Where the study ran
  its measured profile for real (realrun), the real ratio with its CI is printed beside the simulated one.
Risk control: the learned family with one shared cut (leave at side exit k when score_k >= λ), λ from 1 down to 0, on
the first study's cache; per resplit of calib+test the scorers (the registry's linear-cv model) are refitted on a
quarter, λ certified by fixed-sequence Learn-then-Test on another quarter (the paired loss against full), reported
on the remaining half; a violation is a held-out paired loss above max_acc_drop points. Conformal risk control over
the same family is printed beside it (it bounds the mean loss, so its share of resplits above eps is not bounded).

Run: .venv/bin/python bench/bench_learned.py [--config configs/suites/backbones.yaml] [--resplits 200] [--quick]
(the studies are trained, dumped and compared once under the suite's folder and reused by later runs; about 15 min
on 2 cores the first time). The last line reads exactly:
learned: vs best confidence rule min R [LO, HI] on N of M rows at non-inferior accuracy; risk violation V over T resplits (delta D)
(min R over the non-inferior rows; ``none`` when no row is.)
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.core.costs import CostModel  # noqa: E402
from analysis.core.evidence import Evidence  # noqa: E402
from analysis.core.learned import (fit_scorer, learned_inputs, learned_targets, risk_controlled_cut,  # noqa: E402
                                   score_with, simulate_learned)
from analysis.core.paired import non_inferior  # noqa: E402
from analysis.study.suite import compare_study, load_suite, merge_mappings  # noqa: E402

GOAL = 0.9  # the goal: learned <= 0.9 x the best confidence rule on at least one backbone


def suite_rows(a) -> tuple[list[dict], dict]:
    """The comparison rows of the suite's studies on ``a.datasets`` with ``a.schemes`` (run or reused), and the first
    study's result (for risk control)."""
    from analysis.study.pipeline import run_study

    suite = load_suite(a.config)
    suite = replace(suite, datasets={k: v for k, v in suite.datasets.items() if k in a.datasets},
                    schemes={k: v for k, v in suite.schemes.items() if k in a.schemes}, out=a.out or suite.out)
    if a.quick:  # a smoke run: one epoch, small splits, tiny timing
        suite = replace(suite, base=merge_mappings(suite.base, {"train": {"epochs": 1}, "dump": {"profile_time": 0.02},
                                                                "predictors": {"folds": 2}, "profilings": 2,
                                                                "realrun": 20, "policies": {"bootstrap": 100}}),
                        datasets={k: merge_mappings(v, {"options": {"sizes": [300, 150, 150]}})
                                  for k, v in suite.datasets.items()},
                        backbones={k: merge_mappings(v, {"train": {"epochs": 1}})
                                   for k, v in list(suite.backbones.items())[:2]},
                        bootstrap=100, out=(a.out or suite.out) + "-quick")
    rows, first = [], None
    t0 = time.perf_counter()
    for key, cfg in suite.studies():
        print(f"[bench_learned] {key} (t = {time.perf_counter() - t0:.0f} s)", flush=True)
        result = run_study(cfg)
        first = first or result
        rows += compare_study(key, result, suite.profiles, n_boot=suite.bootstrap)
        leave_timings(key, result)
    return rows, first


def leave_timings(key: str, result: dict) -> None:
    """Each leave predictor's eager ms at batch 1 as the study priced it, and timed again now as the runtime runs it
    (pooling, the confidences so far, the score; interleaved rounds, the cache's threads)."""
    from predictors.cost import measure_predictors

    preds = [p for p in result["predictors"].values() if p.spec.target == "leave"]
    if not preds:
        return
    now = measure_predictors(preds, result["cache"], rounds=7, min_run_time=0.3)
    print(f"{key}: leave predictors, ms at batch 1 priced / now: " + ", ".join(
        f"{p.spec.name} {p.cost['ms_b1']:.3f} / {now[p.spec.name]['ms_b1']:.3f}" for p in preds), flush=True)


def violations(result: dict, profile: str, eps: float, delta: float, resplits: int, method: str = "ltt",
               seed: int = 0) -> np.ndarray:
    """Per resplit the held-out paired loss against full (points) of the shared cut certified by
    :func:`analysis.core.learned.risk_controlled_cut` (0 where nothing is certified: full); a violation is a loss
    above ``eps``. Scorers refitted per resplit on a quarter, the cut certified on another quarter; each side exit's
    scorer cost is the study's linear-cv leave predictor's under ``profile``."""
    cache, preds = result["cache"], result["predictors"]
    k = cache.num_exits
    xs = [np.concatenate([learned_inputs(cache, s, e) for s in ("calib", "test")]) for e in range(k - 1)]
    z = np.concatenate([np.asarray(cache.logits(s)) for s in ("calib", "test")])
    y = np.concatenate([cache.labels(s) for s in ("calib", "test")])
    t = np.concatenate([learned_targets(cache, s) for s in ("calib", "test")])
    costs = CostModel.from_cache(cache, profile)
    ev = Evidence.build(cache, "calib", predictors=preds, costs=costs)
    g = np.array([ev.pcost.get(f"leave_at{e}_for{e}_linear-cv", (0.0, 0.0))[0] for e in range(k - 1)])
    full_right = z[:, -1].argmax(-1) == y
    rng = np.random.default_rng(seed)
    out = np.zeros(resplits)
    for i in range(resplits):
        p = rng.permutation(len(y))
        fit, cert, rest = np.array_split(p, [len(p) // 4, len(p) // 2])
        s = np.stack([score_with(fit_scorer(x[fit], t[fit, e], seed), x) for e, x in enumerate(xs)], 1)
        lam, _ = risk_controlled_cut(s[cert], z[cert], y[cert], costs, g, eps_pts=eps, delta=delta, method=method)
        if lam is None:
            continue  # nothing certified: full, no loss
        o = simulate_learned(s[rest], np.full(k - 1, lam), z[rest], y[rest], costs, g)
        out[i] = 100 * (full_right[rest] & ~o.correct).mean()
    return out


def _ci(r: dict, col: str) -> str:
    v, lo, hi = r.get(col), r.get(f"{col}_lo"), r.get(f"{col}_hi")
    if v is None or not np.isfinite(v):
        return "-"
    return f"{v:.3f}" + ("" if lo is None or not np.isfinite(lo) else f" [{lo:.3f}, {hi:.3f}]")


def _gap(r: dict) -> str:
    """On a row run for real: how much further above its simulation the learned policy's real latency runs than the
    best rule's (real/simulated ms of each on the same samples)."""
    ms = [r.get(f"{p}_{n}_ms", np.nan) for n in ("best_learned", "best_rule") for p in ("real", "realsim")]
    if not np.isfinite(ms).all():
        return ""
    lrn, rule = ms[0] / ms[1], ms[2] / ms[3]
    return f"; real/sim learned {lrn:.2f}, best rule {rule:.2f} (gap {lrn / rule:.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/suites/backbones.yaml")
    ap.add_argument("--datasets", nargs="+", default=["corrupted"], help="the suite's datasets to run (keys)")
    ap.add_argument("--schemes", nargs="+", default=["joint"], help="the suite's schemes to run (keys)")
    ap.add_argument("--out", default=None, help="override the suite's output folder")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2 backbones, 1 epoch, small splits")
    ap.add_argument("--risk-profile", default="raspberry-pi-4")
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--resplits", type=int, default=200)
    a = ap.parse_args()
    rows, first = suite_rows(a)
    has = [r for r in rows if np.isfinite(r.get("learned_vs_best_rule", np.nan))]
    if not has:
        sys.exit("no comparison row has a learned policy: fit leave predictors (predictors.targets: [..., leave])")
    for r in has:
        eps = r["acc_eps_pts"]
        r["ok"] = non_inferior(r.get("learned_vs_best_rule_acc_lo_pts"), r.get("learned_vs_best_rule_acc_pts"), eps)
        real = f"; real run {_ci(r, 'real_learned_vs_best_rule')}" if np.isfinite(
            r.get("real_learned_vs_best_rule", np.nan)) else ""
        print(f"{r['study']}, {r['profile']}: learned {r['best_learned_ms']:.4f} ms ({r['best_learned_placement']}), "
              f"best rule {r['best_rule_ms']:.4f} ({r['best_rule_rule']}), full {r['full_ms']:.4f}; "
              f"R = {_ci(r, 'learned_vs_best_rule')}{real}; accuracy {r['learned_vs_best_rule_acc_pts']:+.2f} pts "
              f"[{r['learned_vs_best_rule_acc_lo_pts']:+.2f}, {r['learned_vs_best_rule_acc_hi_pts']:+.2f}]"
              f"{'' if r['ok'] else ' (inferior)'}; vs best free {_ci(r, 'learned_vs_free')}, vs matched oracle "
              f"{_ci(r, 'learned_vs_matched_oracle')}{_gap(r)}", flush=True)
    ok = [r for r in has if r["ok"]]
    best = min(ok, key=lambda r: r["learned_vs_best_rule"]) if ok else None
    reached = [r for r in ok if r["learned_vs_best_rule_hi"] <= GOAL]
    print(f"goal (learned <= {GOAL} x the best confidence rule, CI included, at non-inferior accuracy): "
          f"{'reached on ' + ', '.join(sorted({r['study'] for r in reached})) if reached else 'not reached'}"
          + (f"; closest {best['study']} {best['profile']} {_ci(best, 'learned_vs_best_rule')}" if best else ""))
    eps = float(has[0]["acc_eps_pts"])
    cache = first["cache"]
    crc = violations(first, a.risk_profile, eps, a.delta, a.resplits, method="crc")
    print(f"conformal risk control (mean-risk bound) on {cache.path} ({a.risk_profile}, eps {eps:g} pt): mean "
          f"held-out paired loss {crc.mean():.3f} pt; share of resplits above eps {(crc > eps).mean():.3f} (not "
          f"bounded by delta: CRC bounds the mean loss)", flush=True)
    loss = violations(first, a.risk_profile, eps, a.delta, a.resplits)
    viol = loss > eps
    print(f"Learn-then-Test on {cache.path} ({a.risk_profile}, eps {eps:g} pt): violation rate {viol.mean():.3f}, "
          f"mean held-out paired loss {loss.mean():.3f} pt")
    head = (f"min R {best['learned_vs_best_rule']:.3f} [{best['learned_vs_best_rule_lo']:.3f}, "
            f"{best['learned_vs_best_rule_hi']:.3f}]" if best else "min R none")
    print(f"learned: vs best confidence rule {head} on {len(ok)} of {len(has)} rows at non-inferior accuracy; "
          f"risk violation {viol.mean():.3f} over {a.resplits} resplits (delta {a.delta:g})")


if __name__ == "__main__":
    main()
