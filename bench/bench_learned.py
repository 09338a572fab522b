"""Would a learned exit policy beat the tuned confidence rule? (issue 27, first version: the study caches here,
not yet the suite's corrupted studies.)

Per cache and device profile (a row), everything chosen on calib and reported on test, ms per sample at batch 1:
- the best confidence rule: the fastest rule of the confidence-rule family with every exit kept, within EPS
  accuracy points of ``full`` on calib (:func:`analysis.study.baselines.decide_baselines`, ``best-rule``);
- the learned policy (:mod:`analysis.core.learned`): a cross-fitted logistic scorer per side exit on the pooled
  features and the confidences so far, cuts tuned on calib out of fold under the same constraint, its cost charged
  at every side exit reached: analytic profiles price its MACs (the pooling of the branch activation plus 3 x D for
  standardising and the dot product); ``measured`` times it in eager torch at batch 1 (pooling, linear layer,
  sigmoid; median of interleaved rounds). Where its tuned calib latency is not below full's it falls back to full.
- R = learned / best rule mean latency on test with a paired bootstrap 95 % CI over test samples, and the accuracy
  difference (points) with its CI; a row counts as non-inferior when the CI's lower end is >= -EPS.
Risk control: the learned family with one shared cut λ (leave at side exit k when score_k >= λ), λ from 1 down to 0;
per resplit of calib+test: scorers fitted on a quarter, λ certified by fixed-sequence Learn-then-Test (binomial) on
another quarter (the paired loss against full), reported on the remaining half; a violation is a test paired loss
above EPS points. Predictors refitted per resplit. Conformal risk control over the same family is printed beside it
(it bounds the mean loss, so its share of resplits above EPS is not bounded by delta).

Run: .venv/bin/python bench/bench_learned.py [--caches runs/demo/cache runs/export-deep/cache] [--resplits 200]
The last line reads exactly:
learned: vs best confidence rule min R [LO, HI] on N of M rows at non-inferior accuracy; risk violation V over T resplits (delta D)
(min R over the non-inferior rows; ``none`` when no row is.)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.core.costs import CostModel, get_profile  # noqa: E402
from analysis.core.evidence import Evidence, outcome  # noqa: E402
from analysis.core.learned import (fit_learned, fit_scorer, learned_inputs, learned_targets,  # noqa: E402
                                   risk_controlled_cut, score_with, simulate_learned, tune_learned_cuts)
from analysis.core.policies import PolicyConfig, calibrate  # noqa: E402
from analysis.study.baselines import decide_baselines  # noqa: E402
from branchy.cache import FeatureCache  # noqa: E402
from placement import Constraint  # noqa: E402


def scorer_ms(cache: FeatureCache, profile: str, rounds: int = 7) -> np.ndarray:
    """Per side exit the scorer's ms at batch 1: MACs through an analytic profile, or timed in eager torch."""
    import torch

    from branchy.models import Pool, parse_pooling

    prof = get_profile(profile)
    shapes = cache.manifest["branch_shapes"]
    out = []
    for k in range(cache.num_exits - 1):
        d = learned_inputs(cache, "calib", k).shape[1]
        if not prof.measured:
            out.append(float(prof.compute_ms(int(np.prod(shapes[k])) + 3 * d)))
            continue
        pool, lin = Pool(parse_pooling(cache.manifest.get("pooling", "avg"))), torch.nn.Linear(d, 1)
        h, conf = torch.randn(1, *shapes[k]), torch.randn(1, 2 * (k + 1))
        with torch.inference_mode():
            def run():
                return torch.sigmoid(lin(torch.cat([pool(h).flatten(1), conf], 1)))
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                for _ in range(200):
                    run()
                times.append((time.perf_counter() - t0) / 200 * 1e3)
        out.append(float(np.median(times)))
    return np.asarray(out)


def paired_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """mean(a) / mean(b) with a percentile-bootstrap 95 % CI over paired samples."""
    idx = np.random.default_rng(seed).integers(0, len(a), (n_boot, len(a)))
    r = a[idx].mean(1) / b[idx].mean(1)
    return float(a.mean() / b.mean()), *map(float, np.percentile(r, [2.5, 97.5]))


def diff_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 1) -> tuple[float, float, float]:
    """100 x (mean(a) - mean(b)) (points) with a paired percentile-bootstrap 95 % CI."""
    idx = np.random.default_rng(seed).integers(0, len(a), (n_boot, len(a)))
    d = 100 * (a[idx].mean(1) - b[idx].mean(1))
    return float(100 * (a.mean() - b.mean())), *map(float, np.percentile(d, [2.5, 97.5]))


def row(cache: FeatureCache, scorer, profile: str, eps: float) -> dict:
    cfg = PolicyConfig()
    rule = calibrate(cache, cfg)
    b = decide_baselines(cache, {}, profile=profile, rule=rule, cfg=cfg, constraint=Constraint(max_acc_drop=eps))
    costs = b.objective.costs
    test = Evidence.build(cache, "test", measure=cfg.measure, costs=costs)
    o_rule = outcome(test, b["best-rule"].placement, rule, name="best rule")
    o_full = outcome(test, b["full"].placement, rule, name="full")
    g = scorer_ms(cache, profile)
    zc, yc = np.asarray(cache.logits("calib")), cache.labels("calib")
    cuts = tune_learned_cuts(scorer.scores(cache, "calib"), zc, yc, costs, g, max_acc_drop=eps)
    calib_learned = simulate_learned(scorer.scores(cache, "calib"), cuts, zc, yc, costs, g).latency_ms.mean()
    fallback = not calib_learned < b["full"].calib["mean_ms"]
    o_learn = o_full if fallback else simulate_learned(scorer.scores(cache, "test"), cuts,
                                                       np.asarray(cache.logits("test")), cache.labels("test"), costs, g)
    r, lo, hi = paired_ci(o_learn.latency_ms, o_rule.latency_ms)
    acc, acc_lo, acc_hi = diff_ci(o_learn.correct.astype(float), o_rule.correct.astype(float))
    return {"R": r, "lo": lo, "hi": hi, "acc": acc, "acc_lo": acc_lo, "acc_hi": acc_hi, "ok": acc_lo >= -eps,
            "learned_ms": float(o_learn.latency_ms.mean()), "rule_ms": float(o_rule.latency_ms.mean()),
            "full_ms": float(o_full.latency_ms.mean()), "scorer_ms": g, "cuts": cuts, "fallback": fallback,
            "rule": b["best-rule"].how}


def violations(cache: FeatureCache, profile: str, eps: float, delta: float, resplits: int, method: str = "ltt",
               seed: int = 0) -> np.ndarray:
    """Per resplit the paired loss against full (points) on the held-out half of the shared cut certified by
    :func:`analysis.core.learned.risk_controlled_cut` (0 where nothing is certified: full); a violation is a loss
    above ``eps``. Scorers refitted per resplit on a quarter, the cut certified on another quarter."""
    k = cache.num_exits
    xs = [np.concatenate([learned_inputs(cache, s, e) for s in ("calib", "test")]) for e in range(k - 1)]
    z = np.concatenate([np.asarray(cache.logits(s)) for s in ("calib", "test")])
    y = np.concatenate([cache.labels(s) for s in ("calib", "test")])
    t = np.concatenate([learned_targets(cache, s) for s in ("calib", "test")])
    costs = CostModel.from_cache(cache, profile)
    g = scorer_ms(cache, profile)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--caches", nargs="+", default=["runs/demo/cache", "runs/export-deep/cache"],
                    help="caches to compare on (missing ones are skipped; bench_export.py makes runs/export-deep)")
    ap.add_argument("--profiles", nargs="+", default=["measured", "raspberry-pi-4"])
    ap.add_argument("--eps", type=float, default=0.5, help="accuracy points (non-inferiority and risk level)")
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--resplits", type=int, default=200)
    a = ap.parse_args()
    caches = [FeatureCache.open(c) for c in a.caches if (Path(c) / "manifest.json").exists()]
    if not caches:
        sys.exit(f"none of {a.caches} is a cache: run `make demo` first (or pass --caches)")
    rows = []
    for cache in caches:
        scorer = fit_learned(cache)
        for prof in a.profiles:
            r = row(cache, scorer, prof, a.eps)
            rows.append(r)
            print(f"{cache.manifest['model']['name']} ({cache.path}), {prof}: learned {r['learned_ms']:.4f} ms"
                  f"{' (fell back to full)' if r['fallback'] else ''}, best rule {r['rule_ms']:.4f} ({r['rule']}), "
                  f"full {r['full_ms']:.4f}; R = {r['R']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}], accuracy "
                  f"{r['acc']:+.2f} pts [{r['acc_lo']:+.2f}, {r['acc_hi']:+.2f}]; scorer ms {np.round(r['scorer_ms'], 4)}",
                  flush=True)
    crc = violations(caches[0], "raspberry-pi-4", a.eps, a.delta, a.resplits, method="crc")
    print(f"conformal risk control (mean-risk bound) on {caches[0].path} (raspberry-pi-4, eps {a.eps} pt): mean "
          f"held-out paired loss {crc.mean():.3f} pt; share of resplits above eps {(crc > a.eps).mean():.3f} (not "
          f"bounded by delta: CRC bounds the mean loss)")
    loss = violations(caches[0], "raspberry-pi-4", a.eps, a.delta, a.resplits)
    viol = loss > a.eps
    print(f"Learn-then-Test on {caches[0].path} (raspberry-pi-4, eps {a.eps} pt): violation rate {viol.mean():.3f}, "
          f"mean held-out paired loss {loss.mean():.3f} pt")
    ok = [r for r in rows if r["ok"]]
    best = min(ok, key=lambda r: r["R"]) if ok else None
    head = f"min R {best['R']:.3f} [{best['lo']:.3f}, {best['hi']:.3f}]" if best else "min R none"
    print(f"learned: vs best confidence rule {head} on {len(ok)} of {len(rows)} rows at non-inferior accuracy; "
          f"risk violation {viol.mean():.3f} over {a.resplits} resplits (delta {a.delta:g})")


if __name__ == "__main__":
    main()
