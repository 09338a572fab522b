"""Risk-controlled exit rules (Learn-then-Test) against the point estimate, over random calib/test
re-splits: how often does the accuracy lost against ``full`` on test exceed the promised EPS points,
and how much of the speed-up is kept?

For each re-split the pooled calib+test samples of a cache are shuffled into two halves; the rule is chosen
on one (calib) and scored on the other (test). The loss is the *paired* one: test samples ``full`` gets
right and the cascade gets wrong (a share of test samples, in points). Speed-ups are mean latency of
``full`` over the cascade's on test, Raspberry-Pi-4 profile (ms per sample at batch 1, from MACs). Three
rules: LTT (binomial p-values, fixed-sequence over the data-free λ family; :mod:`analysis.core.guarantee`),
the point estimate over the same family (cheapest λ whose calib loss is within EPS), and today's default
(sequential target accuracy = the final exit's calib accuracy).

Run: .venv/bin/python bench/bench_risk.py [--run runs/demo] [--resplits 1000]   (about 3 minutes; the
first run also trains a B-AlexNet with 4 side exits on MNIST-5k, cached in runs/bench-risk)
The last line reads: risk: violation rate V over R resplits (delta D, eps E pt); mean speed-up X (point
estimate Y), for the demo cache.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.core.calibrate import thresholds_for_accuracy  # noqa: E402
from analysis.core.evidence import Evidence, cascade_outcome, full_outcome  # noqa: E402
from analysis.core.guarantee import point_estimate_rule, risk_controlled_rule  # noqa: E402
from branchy.cache import CacheError, FeatureCache  # noqa: E402
from branchy.exits import ExitRule  # noqa: E402

PROFILE = "raspberry-pi-4"


def deep_cache(out: Path) -> FeatureCache:
    """B-AlexNet (width 0.25) with side exits after blocks 0-3 on MNIST-5k: 4 side exits."""
    try:
        return FeatureCache.open(out / "cache")
    except CacheError:
        pass
    from branchy.data import load_dataset
    from branchy.cache import dump
    from branchy.models import BackboneConfig
    from branchy.train import TrainConfig, train

    splits = load_dataset("mnist5k")
    net = BackboneConfig("b-alexnet", exits=(0, 1, 2, 3), options={"width": 0.25})
    cfg = TrainConfig(epochs=6, batch_size=64, lr=3e-3, augment_shift=2, optimizer="adam")
    model = train(cfg, net, splits, out_dir=out / "model", progress=False).model
    return dump(model, splits, out / "cache", pooling="avg", profile=False, overwrite=True, progress=False)


def resplits(cache: FeatureCache, r: int, eps: float, delta: float, seed: int = 0, method: str = "binomial") -> dict:
    pooled = Evidence.concat([Evidence.build(cache, s, profile=PROFILE) for s in ("calib", "test")], "pooled")
    n = pooled.n
    g = np.random.default_rng(seed)
    res = {k: {"viol": [], "speedup": [], "loss": []} for k in ("ltt", "point", "default")}
    k = pooled.num_exits
    for _ in range(r):
        perm = g.permutation(n)
        cal, tst = pooled.subset(perm[: n // 2], "calib"), pooled.subset(perm[n // 2:], "test")
        z_cal = cal.conf  # entropy, nats
        rules = {"ltt": risk_controlled_rule(cal, eps, delta, num_classes=cache.num_classes, method=method).rule,
                 "point": point_estimate_rule(cal, eps, num_classes=cache.num_classes),
                 "default": ExitRule.given(_default_thresholds(cache, perm[: n // 2]), k)}
        del z_cal
        full = full_outcome(tst)
        for name, rule in rules.items():
            o = cascade_outcome(tst, rule)
            loss = 100 * (full.correct & ~o.correct).mean()
            res[name]["loss"].append(loss)
            res[name]["viol"].append(loss > eps)
            res[name]["speedup"].append(full.latency_ms.mean() / o.latency_ms.mean())
    return {name: {m: np.asarray(v) for m, v in d.items()} for name, d in res.items()}


_LOGITS: dict = {}


def _default_thresholds(cache: FeatureCache, idx: np.ndarray) -> np.ndarray:
    """Today's default rule on the calib half: sequential target accuracy = the final exit's accuracy."""
    key = str(cache.path)
    if key not in _LOGITS:
        _LOGITS[key] = (np.concatenate([np.asarray(cache.logits(s)) for s in ("calib", "test")]),
                        np.concatenate([cache.labels(s) for s in ("calib", "test")]))
    z, y = _LOGITS[key]
    return thresholds_for_accuracy(z[idx], y[idx])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/demo")
    ap.add_argument("--resplits", type=int, default=1000)
    ap.add_argument("--eps", type=float, default=0.5, help="points of accuracy against full")
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--method", default="binomial", choices=["binomial", "hoeffding-bentkus"])
    ap.add_argument("--deep", default="runs/bench-risk", help="folder for the 4-side-exit model and cache")
    a = ap.parse_args()
    try:
        demo = FeatureCache.open(Path(a.run) / "cache")
    except CacheError as e:
        sys.exit(f"{e}\nrun `make demo` first (or pass --run FOLDER of a study)")
    caches = {"deep (b-alexnet, 4 side exits)": deep_cache(Path(a.deep)), "demo (b-lenet, 2 side exits)": demo}
    print(f"{a.resplits} random calib/test halves of calib+test; eps {a.eps} pt of paired loss against full, "
          f"delta {a.delta}; speed-up = full/cascade mean latency on test ({PROFILE}, ms per sample at batch 1)")
    summary = {}
    for label, cache in caches.items():
        t0 = time.perf_counter()
        r = resplits(cache, a.resplits, a.eps, a.delta, method=a.method)
        print(f"\n{label}: {cache.num_exits} exits, {cache.size('calib') + cache.size('test')} pooled samples "
              f"({time.perf_counter() - t0:.0f} s)")
        print(f"  {'rule':34s} {'violation rate':>15s} {'mean loss pt':>13s} {'mean speed-up':>14s}")
        for name, desc in (("ltt", "learn-then-test (guaranteed)"), ("point", "point estimate, same family"),
                           ("default", "sequential target acc (default)")):
            d = r[name]
            v = d["viol"].mean()
            se = np.sqrt(v * (1 - v) / len(d["viol"]))
            print(f"  {desc:34s} {v:8.3f} ±{se:.3f} {d['loss'].mean():13.3f} {d['speedup'].mean():14.3f}")
        summary[label] = r
    r = summary["demo (b-lenet, 2 side exits)"]
    print(f"risk: violation rate {r['ltt']['viol'].mean():.3f} over {a.resplits} resplits (delta {a.delta:g}, "
          f"eps {a.eps:g} pt); mean speed-up {r['ltt']['speedup'].mean():.2f} "
          f"(point estimate {r['point']['speedup'].mean():.2f})")


if __name__ == "__main__":
    main()
