"""Does ``place --risk`` keep its promise when predictors are part of what is certified? Over random re-splits of a
real cache's calib+test samples, each re-split runs the whole user path on fresh data:

1. a new cache whose calib and test are two random halves of the pooled calib+test samples;
2. predictors fitted on that calib (linear gates in front of every side exit, after the stage the exit follows,
   and a linear exit predictor after stage 0: what ``branchy fit-predictors`` would do);
3. ``run_placement(..., risk=DELTA)``: calib halved at random again; the predictors cross-fitted on the search half
   only, rule and placement searched there, the choice certified by Learn-then-Test on the other half, scored by
   the search-half refits (the ones deployed);
4. the paired loss of the certified placement against ``full`` on the re-split's test half: a violation when it
   exceeds EPS points.

Costs: the Raspberry-Pi-4 profile (modelled from MACs and bytes, ms per sample at batch 1, deterministic).

    .venv/bin/python bench/bench_risk_placement.py [--cache runs/backbones/b-lenet-corrupted-joint/cache]
        [--resplits 200] [--eps 0.5] [--delta 0.1] [--jobs 2]

The last line reads: ``risk placement: violation rate V over R resplits (delta D, eps E pt), predictors refitted per
resplit; mean speed-up X over full; certified a placement other than full in F of R``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.core.evidence import Evidence  # noqa: E402
from analysis.core.policies import PolicyConfig  # noqa: E402
from analysis.study.placement_study import run_placement  # noqa: E402
from branchy.cache import FeatureCache  # noqa: E402
from branchy.cache import cache_from_arrays  # noqa: E402
from placement import Constraint, Placement  # noqa: E402
from predictors import PredictorSpec, fit_predictor  # noqa: E402
from analysis.core.calibrate import calib_rule  # noqa: E402
from analysis.core.guarantee import risk_controlled_rule  # noqa: E402
from analysis.core.risk import paired_loss  # noqa: E402
from analysis.study.placement_study import PlacementObjective  # noqa: E402
from predictors.cost import estimator_macs  # noqa: E402

PROFILE = "raspberry-pi-4"


def pooled(cache: FeatureCache) -> tuple:
    """Labels, logits and per-exit features of calib followed by test."""
    y = np.concatenate([cache.labels(s) for s in ("calib", "test")])
    z = np.concatenate([np.asarray(cache.logits(s)) for s in ("calib", "test")])
    f = [np.concatenate([np.asarray(cache.features(s, k), dtype=np.float32) for s in ("calib", "test")])
         for k in range(cache.num_exits)]
    return y, z, f


def one(i: int, src: str, eps: float, delta: float, tmp: str) -> dict:
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    cache0 = FeatureCache.open(src)
    y, z, f = pooled(cache0)
    g = np.random.default_rng(1000 + i)
    perm = g.permutation(len(y))
    a, b = np.sort(perm[: len(y) // 2]), np.sort(perm[len(y) // 2:])
    tr = np.arange(min(50, len(a)))  # the train split is not used; a few rows keep the cache complete
    data = {"train": (y[a][tr], z[a][tr], [x[a][tr] for x in f]), "calib": (y[a], z[a], [x[a] for x in f]),
            "test": (y[b], z[b], [x[b] for x in f])}
    out = Path(tmp) / f"r{i}"
    cache = cache_from_arrays(out, data, costs=cache0.costs, model_name=f"resplit{i}", chain=cache0.chain)
    k = cache.num_exits
    rule = calib_rule(cache, 99)
    specs = [PredictorSpec("gate", e, "linear", e, rule) for e in range(k - 1)] + \
        [PredictorSpec("exit", 0, "linear", None, rule)]
    preds = {}
    for s in specs:  # MACs are what the modelled profile charges; no timing needed
        p = fit_predictor(cache, s, folds=3, cost={"macs": 0, "ms_b1": 0.0})
        p.cost = {"macs": estimator_macs(p.estimator, p.inputs(cache, "calib", slice(0, 1)).shape[1]), "ms_b1": 0.0}
        preds[s.name] = p
    cfg = PolicyConfig(max_acc_drop=eps, risk=delta, bootstrap=0)
    res, _ = run_placement(cache, preds, "greedy", constraint=Constraint(max_acc_drop=eps), profile=PROFILE,
                           cfg=cfg, progress=False, seed=i)
    # the objective run_placement certified with: the search half, its certified rule, the search-half refits
    halves = np.random.default_rng(i).permutation(cache.size("calib"))
    search_rows = np.sort(halves[: len(halves) // 2])
    ev_a = Evidence.build(cache, "calib", measure=cfg.measure, profile=PROFILE).subset(search_rows)
    rule = risk_controlled_rule(ev_a, eps, delta, num_classes=cache.num_classes).rule
    obj = PlacementObjective(cache, res.predictors, profile=PROFILE, rule=rule, cfg=cfg, rows=search_rows)
    test = Evidence.build(cache, "test", predictors=res.predictors, costs=obj.costs)
    full = Placement.plain(k, [False] * (k - 1) + [True])
    o, of = obj.outcome(res.chosen, test), obj.outcome(full, test)
    loss = 100 * paired_loss(o.correct, of.correct).mean()
    shutil.rmtree(out, ignore_errors=True)
    return {"loss": loss, "viol": loss > eps, "speedup": of.latency_ms.mean() / o.latency_ms.mean(),
            "not_full": res.chosen.key() != full.key()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default="runs/backbones/b-lenet-corrupted-joint/cache")
    ap.add_argument("--resplits", type=int, default=200)
    ap.add_argument("--eps", type=float, default=0.5, help="points of paired accuracy loss against full")
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    try:
        cache = FeatureCache.open(a.cache)
    except Exception as e:  # noqa: BLE001
        sys.exit(f"{e}\nrun python bench/bench_backbones.py first (or pass --cache of another cache)")
    t0 = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="risk-placement-")
    try:
        rows = Parallel(n_jobs=a.jobs)(delayed(one)(i, str(cache.path), a.eps, a.delta, tmp)
                                       for i in range(a.resplits))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    viol = np.array([r["viol"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    sp = np.array([r["speedup"] for r in rows])
    nf = sum(r["not_full"] for r in rows)
    se = np.sqrt(viol.mean() * (1 - viol.mean()) / len(viol))
    print(f"{cache.path}: {cache.size('calib') + cache.size('test')} pooled samples, {a.resplits} re-splits "
          f"({(time.perf_counter() - t0) / 60:.1f} min, {a.jobs} processes)")
    print(f"paired loss against full on each re-split's test half: mean {loss.mean():.3f} pt, 90th percentile "
          f"{np.percentile(loss, 90):.3f} pt, violation rate {viol.mean():.3f} ± {se:.3f} (eps {a.eps} pt)")
    print(f"risk placement: violation rate {viol.mean():.3f} over {a.resplits} resplits (delta {a.delta:g}, eps "
          f"{a.eps:g} pt), predictors refitted per resplit; mean speed-up {sp.mean():.2f} over full; certified a "
          f"placement other than full in {nf} of {a.resplits}")


if __name__ == "__main__":
    main()
