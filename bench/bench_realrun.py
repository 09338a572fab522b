"""The backbone suite's decisive comparisons run for real (issue 22). The suite itself does it when its studies set
``realrun: N`` (configs/suites/backbones.yaml does): for every measured profile (``measured`` on eager,
``measured-onnxruntime``; chained studies on eager only) the real early-exit runtime runs ``full``, the default
cascade, the best predictor-free policy and the best placement with a predictor, as decided on calib, on N test
samples one at a time (batch 1), interleaved, next to the simulator's figures for the same samples
(analysis.study.realrun). This bench reads those columns from SUITE/comparison.csv; with --rerun (or when the suite
has none) it runs them again here, on every study folder of the suite.

    .venv/bin/python bench/bench_realrun.py [--suite runs/backbones] [--rerun [--n 100] [--reps 3]
        [--backends eager,onnxruntime] [--with-chained]]

Per study and backend it prints measured and simulated mean ms (per sample at batch 1, the cache's thread count), the
real ratios with paired bootstrap 95 % CIs next to the simulated ones, and whether the real run agrees with the
simulation on which policy of every pair is faster (pairs whose real mean latencies differ by more than 5 %). The last
line reads exactly
`realrun: faster policy agrees in A of P pairs, worst |sim/real speed-up - 1| = X over S studies (batch 1, eager and
onnxruntime)`.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from analysis.core.policies import calibrate  # noqa: E402
from analysis.study.config import load_study  # noqa: E402
from analysis.study.realrun import REAL_POLICIES, compare_for_real, ordered_pairs  # noqa: E402
from branchy.cache import FeatureCache  # noqa: E402
from branchy.train import data_config_of, load_checkpoint  # noqa: E402
from branchy.cache import reprofile  # noqa: E402


def run_study(d: Path, backends: list[str], n: int, reps: int) -> list[dict]:
    """One study folder's comparison rows, one per backend, each run for real (:func:`compare_for_real`)."""
    cfg = load_study(d / "study.yaml")
    model, meta = load_checkpoint(d / "model" / "model.pt")
    cache = FeatureCache.open(d / "cache", model=model)
    preds = {}
    if (d / "predictors").is_dir() and not cache.chained:
        from predictors.store import load_predictors

        preds = load_predictors(d / "predictors", cache)
    splits = data_config_of(meta).load()
    cache.check(dataset=splits)
    x = splits.test.batch(torch.arange(min(n, cache.size("test"))))[0]
    rule = calibrate(cache, cfg.policies)
    rows = []
    for b in backends if not cache.chained else ["eager"]:
        if b not in cache.backends:
            print(f"  profiling {d.name}'s segments on {b}", flush=True)
            cache = reprofile(cache.path, model, backend=b, min_run_time=cfg.dump.profile_time)
        todo = [p for p in preds.values() if b != "eager" and b not in (p.cost.get("backends") or {})]
        if todo:  # the predictors' batch-1 latency on this backend, as a study with that backend measures it
            from predictors.cost import remeasure
            from predictors.store import save_predictors

            print(f"  measuring {len(todo)} predictors' latency on {b}", flush=True)
            remeasure(todo, cache, backend=b, min_run_time=cfg.dump.profile_time * len(todo) / 2)
            save_predictors(todo, d / "predictors")
        row = compare_for_real(cache, preds, rule=rule, cfg=cfg.policies, constraint=cfg.placement.constraint,
                               profile="measured" if b == "eager" else f"measured-{b}", model=model, test_x=x,
                               reps=reps, n_boot=cfg.policies.bootstrap, seed=cfg.placement.seed)
        rows.append({"study": cfg.name, **row})
    return rows


def speedup_error(row: dict) -> float:
    """The worst |simulated / real speed-up over full - 1| among the row's other policies."""
    worst = 0.0
    for p in REAL_POLICIES[1:]:
        c = p.replace("-", "_")
        if np.isfinite(row.get(f"real_{c}_ms", np.nan)):
            sim = row["realsim_full_ms"] / row[f"realsim_{c}_ms"]
            real = row["real_full_ms"] / row[f"real_{c}_ms"]
            worst = max(worst, abs(sim / real - 1))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default="runs/backbones")
    ap.add_argument("--rerun", action="store_true", help="run the comparisons again instead of reading the suite's")
    ap.add_argument("--n", type=int, default=100, help="test samples, run one at a time (--rerun)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--backends", default="eager,onnxruntime")
    ap.add_argument("--with-chained", action="store_true", help="also the ZTW (chained) studies, on eager (--rerun)")
    ap.add_argument("--out", default=None, help="CSV of every row (default SUITE/realrun.csv, --rerun)")
    a = ap.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    suite = Path(a.suite)
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    t0 = time.perf_counter()
    comp = suite / "comparison.csv"
    have = pd.read_csv(comp) if comp.is_file() else pd.DataFrame()
    if not a.rerun and "real_n" in have and have["real_n"].notna().any():
        df = have[have["real_n"].notna() & have["real_backend"].isin(backends)].copy()
        print(f"[realrun] read {len(df)} rows run for real by the suite from {comp}")
    else:
        if not suite.is_dir():
            sys.exit(f"no suite at {suite}: run python bench/bench_backbones.py first")
        dirs = sorted(p for p in suite.iterdir() if (p / "study.yaml").is_file() and (p / "cache").is_dir()
                      and (a.with_chained or not p.name.endswith("-ztw")))
        if not dirs:
            sys.exit(f"no studies in {suite}: run python bench/bench_backbones.py first")
        rows = []
        for d in dirs:
            print(f"[realrun] {d.name} (t = {time.perf_counter() - t0:.0f} s)", flush=True)
            rows += run_study(d, backends, a.n, a.reps)
            pd.DataFrame(rows).to_csv(a.out or suite / "realrun.csv", index=False)
        df = pd.DataFrame(rows)
    if not len(df):
        sys.exit(f"no row of {comp} was run for real on {', '.join(backends)}")
    recs = df.to_dict("records")
    show = pd.DataFrame([{"study": r["study"], "backend": r["real_backend"], "n": int(r["real_n"]),
                          **{f"{p} ms real/sim": f"{r[f'real_{c}_ms']:.3f}/{r[f'realsim_{c}_ms']:.3f}"
                             for p, c in ((p, p.replace('-', '_')) for p in REAL_POLICIES)
                             if np.isfinite(r.get(f"real_{c}_ms", np.nan))},
                          "real gated/free [CI] (sim)": "-" if not np.isfinite(r.get("real_gated_vs_free", np.nan))
                          else f"{r['real_gated_vs_free']:.3f} [{r['real_gated_vs_free_lo']:.3f}, "
                               f"{r['real_gated_vs_free_hi']:.3f}] ({r['realsim_gated_vs_free']:.3f})",
                          "pays": "yes" if r.get("pays") else "no", "exits match %": r["real_exit_match_%"]}
                         for r in recs])
    print(f"\nreal runtime vs simulator at batch 1, {int(df.real_threads.iloc[0])} threads; ms per sample (real / "
          f"simulated from the stored costs, the same samples); {(time.perf_counter() - t0) / 60:.1f} min")
    with pd.option_context("display.width", 250, "display.max_colwidth", 60):
        print(show.to_string(index=False))
    agree = total = 0
    for r in recs:
        a_, t_, bad = ordered_pairs(r)
        agree, total = agree + a_, total + t_
        for line in bad:
            print(f"  disagrees: {r['study']} {r['real_backend']}: {line}")
    print(f"exits equal to the simulator's: {df['real_exit_match_%'].min():.1f} % (worst policy)")
    worst = max(speedup_error(r) for r in recs)
    print(f"realrun: faster policy agrees in {agree} of {total} pairs, worst |sim/real speed-up - 1| = {worst:.3f} "
          f"over {df.study.nunique()} studies (batch 1, {' and '.join(backends)})")


if __name__ == "__main__":
    main()
