"""The backbone suite's decisive comparisons run for real (issue 22): for every study of the suite (default: the joint
ones, all five backbones, clean and corrupted; --with-chained adds the ZTW studies on eager), on each backend, the
best predictor-free policy and the best placement with a predictor are decided on calib under that backend's
measured profile (analysis.study.baselines), then the real early-exit runtime runs `full`, the default cascade and
both on test samples one at a time (batch 1), interleaved, next to the simulator's figures for the same samples
(branchy validate). Per study and backend it prints measured and simulated mean ms and speed-ups over `full`, and
whether the real run agrees with the simulation on which policy of every pair is faster (pairs whose real mean
latencies differ by more than 5 %). Costs on ONNX Runtime are profiled first where the study has none
(`branchy profile --backend onnxruntime`).

    .venv/bin/python bench/bench_realrun.py [--suite runs/backbones] [--n 200] [--reps 3]
        [--backends eager,onnxruntime] [--with-chained]

Units: ms per sample at batch 1, the cache's thread count. The last line reads exactly
`realrun: faster policy agrees in A of P pairs, worst |sim/real speed-up - 1| = X over S studies (batch 1, eager and
onnxruntime)`.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from analysis.core.policies import calibrate  # noqa: E402
from analysis.study.baselines import decide_baselines  # noqa: E402
from analysis.study.config import load_study  # noqa: E402
from analysis.study.validate import validate  # noqa: E402
from branchy.cache import FeatureCache  # noqa: E402
from branchy.checkpoint import data_config_of, load_checkpoint  # noqa: E402
from branchy.dump import reprofile  # noqa: E402

POLICIES = ("full", "cascade", "best-free", "best-gated")


def run_study(d: Path, backends: list[str], n: int, reps: int) -> list[dict]:
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
        prof = "measured" if b == "eager" else f"measured-{b}"
        base = decide_baselines(cache, preds, profile=prof, rule=rule, cfg=cfg.policies,
                                constraint=cfg.placement.constraint)
        pls = {n_: base[n_].placement for n_ in ("best-free", "best-gated") if n_ in base.decided}
        t0 = time.perf_counter()
        df = validate(cache, model, x, predictors=preds, cfg=cfg.policies, rule=rule, placements=pls, reps=reps,
                      backend=b, policies=["full", "cascade"], n_boot=200)
        df["study"], df["seconds"] = cfg.name, time.perf_counter() - t0
        rows += df.to_dict("records")
    return rows


def pairs(df: pd.DataFrame) -> tuple[int, int, list[str]]:
    """Pairs of policies (same study and backend) whose real mean latencies differ by more than 5 %, and how many of
    them the simulation orders the same way."""
    agree = total = 0
    bad = []
    for (study, b), g in df.groupby(["study", "backend"], sort=False):
        g = g.set_index("policy")
        for p, q in itertools.combinations([p for p in POLICIES if p in g.index], 2):
            mp, mq = g.loc[p, "meas_mean_ms"], g.loc[q, "meas_mean_ms"]
            if abs(mp / mq - 1) <= 0.05:
                continue
            total += 1
            ok = (mp < mq) == (g.loc[p, "sim_mean_ms"] < g.loc[q, "sim_mean_ms"])
            agree += ok
            if not ok:
                bad.append(f"{study} {b}: {p} vs {q} real {mp:.3f}/{mq:.3f} ms, simulated "
                           f"{g.loc[p, 'sim_mean_ms']:.3f}/{g.loc[q, 'sim_mean_ms']:.3f}")
    return agree, total, bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default="runs/backbones")
    ap.add_argument("--n", type=int, default=200, help="test samples, run one at a time")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--backends", default="eager,onnxruntime")
    ap.add_argument("--with-chained", action="store_true", help="also the ZTW (chained) studies, on eager")
    ap.add_argument("--out", default=None, help="CSV of every row (default SUITE/realrun.csv)")
    a = ap.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    suite = Path(a.suite)
    dirs = sorted(p for p in suite.iterdir() if (p / "study.yaml").is_file() and (p / "cache").is_dir()
                  and (a.with_chained or not p.name.endswith("-ztw")))
    if not dirs:
        sys.exit(f"no studies in {suite}: run python bench/bench_backbones.py first")
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    t0 = time.perf_counter()
    rows = []
    for d in dirs:
        print(f"[realrun] {d.name} (t = {time.perf_counter() - t0:.0f} s)", flush=True)
        rows += run_study(d, backends, a.n, a.reps)
        pd.DataFrame(rows).to_csv(a.out or suite / "realrun.csv", index=False)
    df = pd.DataFrame(rows)
    df["sim_speedup_err"] = df["sim_speedup"] / df["meas_speedup"] - 1
    show = df[["study", "backend", "policy", "meas_mean_ms", "sim_mean_ms", "ratio", "meas_speedup", "sim_speedup",
               "exit_match_%"]]
    print(f"\nreal runtime vs simulator, {a.n} test samples at batch 1 per study, {int(df.threads.iloc[0])} threads; "
          f"{(time.perf_counter() - t0) / 60:.1f} min")
    with pd.option_context("display.width", 200):
        print(show.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    agree, total, bad = pairs(df)
    for line in bad:
        print(f"  disagrees: {line}")
    print(f"exits equal to the simulator's: {df['exit_match_%'].min():.1f} % (worst policy)")
    worst = float(np.abs(df.loc[df.policy != "full", "sim_speedup_err"]).max())
    print(f"realrun: faster policy agrees in {agree} of {total} pairs, worst |sim/real speed-up - 1| = {worst:.3f} "
          f"over {df.study.nunique()} studies (batch 1, {' and '.join(backends)})")


if __name__ == "__main__":
    main()
