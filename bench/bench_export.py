"""``branchy export`` checked end to end: every policy exported, run by the torch-free runner (batch 1 and batched)
and by the single graph with If nodes, against the simulator; the single graph's overhead; the simulator on the
runner's own on-device costs against the runner's measured latency.

Run: .venv/bin/python bench/bench_export.py [--run runs/demo] [--deep runs/export-deep] [--n-time 300]
Needs the demo study (``make demo``); ``--deep`` trains (once, 2 epochs) a b-resnet-20 on mnist5k with nn gates and
a gated placement there (set ``--deep ''`` to skip it). Policies per study: full, the default cascade, the study's
chosen placement, the best gated placement (strategy ``gated``, searched on calib) and a jump placement.

Units: ms per sample at batch 1, ONNX Runtime on 1 intra-op thread (CPU). Exits: share of all test samples whose
exit and prediction equal the simulator's, in every runner mode. Single-graph overhead: per policy, (mean graph
latency - mean sum of the segments on each sample's path, timed by the runner's profile) / full's graph latency;
the worst policy is reported. Runner vs simulator: the simulator on the imported runner costs (segments, gates and
the runner's own overhead) against the runner's measured mean latency, worst |sim/meas - 1| over the policies.
Each round times, per policy in a shuffled order, its package's segments (one profiling round), the runner and the
single graph on the same samples, so costs and latencies share the machine's state; the medians over rounds are used.
"""
from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.core.evidence import Evidence, outcome  # noqa: E402
from analysis.core.policies import PolicyConfig, calibrate  # noqa: E402
from analysis.deploy.export import export_package, simulated  # noqa: E402
from analysis.study.plan import decide  # noqa: E402
from analysis.deploy.runner import Package, profile  # noqa: E402
from branchy.cache import FeatureCache, import_costs  # noqa: E402
from branchy.train import data_config_of, load_checkpoint  # noqa: E402
from placement import Gate, Placement  # noqa: E402
from predictors.cost import import_latency  # noqa: E402
from predictors.store import load_predictors  # noqa: E402


def deep_study(out: Path, epochs: int) -> Path:
    """A b-resnet-20 with exits after groups 1 and 2 on mnist5k, its cache and nn predictors (made once)."""
    from branchy.cache import dump
    from branchy.data import DataConfig
    from branchy.models import BackboneConfig
    from branchy.train import TrainConfig, train
    from predictors import PredictorSpec, fit_predictors
    from predictors.store import save_predictors

    if (out / "predictors" / "predictors.json").exists():
        return out
    res = train(TrainConfig(epochs=epochs, batch_size=64, lr=3e-3), BackboneConfig("b-resnet", exits=(0, 1)),
                DataConfig("mnist5k"), out_dir=out / "model")
    cache = dump(res.model, res.splits, out / "cache", profile_time=0.05, checkpoint=str(out / "model" / "model.pt"))
    rule = calibrate(cache, PolicyConfig())
    specs = [PredictorSpec("gate", at, "nn", e, rule.thresholds) for e in (0, 1) for at in range(e + 1)]
    specs.append(PredictorSpec("exit", 0, "nn", None, rule.thresholds))
    save_predictors(fit_predictors(cache, specs, folds=3), out / "predictors")
    return out


def load(run: Path) -> dict:
    model, meta = load_checkpoint(run / "model" / "model.pt")
    cache = FeatureCache.open(run / "cache", model=model)
    preds = load_predictors(run / "predictors", cache) if (run / "predictors" / "predictors.json").exists() else {}
    cfg = PolicyConfig()
    rule = calibrate(cache, cfg)
    return {"model": model, "cache": cache, "preds": preds, "rule": rule, "cfg": cfg, "splits": data_config_of(meta).load()}


def policies(s: dict, run: Path) -> dict:
    """full, the cascade, the study's chosen placements, the best gated placement and a jump placement."""
    from analysis.study.placement_study import run_placement

    k, preds = s["cache"].num_exits, s["preds"]
    out = {"full": Placement.plain(k, [False] * (k - 1) + [True]), "cascade": Placement.plain(k)}
    for p in sorted(run.glob("placement/*/placement.json")):
        out[f"chosen ({p.parent.name})"] = Placement.load(p)
    nn = {n: p for n, p in preds.items() if p.spec.model == "nn" and not p.spec.with_confidences}
    if any(p.spec.target == "gate" for p in nn.values()):
        res, _ = run_placement(s["cache"], nn, "gated", profile="measured", rule=s["rule"], cfg=s["cfg"],
                               progress=False)
        out["best gated"] = res.chosen
    jump = next((n for n, p in nn.items() if p.spec.target == "exit" and p.spec.at == 0), None)
    if jump:
        out["jump"] = Placement(tuple([True] * k), tuple([None] * k), Gate(jump, 0))
    return out


def per_sample_ms(fn, x: np.ndarray) -> np.ndarray:
    out = np.empty(len(x))
    for i in range(len(x)):
        t0 = time.perf_counter()
        fn(x[i:i + 1])
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def study(name: str, run: Path, a, tmp: Path) -> dict:
    s = load(run)
    pls = policies(s, run)
    n_all = s["cache"].size("test")
    x = s["splits"].test.batch(torch.arange(n_all))[0].numpy()
    pkgs, match = {}, {}
    for pol, pl in pls.items():
        d = tmp / f"{name}-{len(pkgs)}"
        export_package(s["model"], s["cache"], s["preds"], pl, s["rule"], d, splits=s["splits"], cfg=s["cfg"], name=pol)
        pkg = Package(d, threads=1)
        sp, se = simulated(s["cache"], s["preds"], pl, s["rule"], s["cfg"])
        one = np.array([pkg.run_one(x[i:i + 1]) for i in range(n_all)])
        graph = pkg.graph()
        g = np.array([graph(x[i:i + 1]) for i in range(n_all)])
        bp, be = pkg.run_batch(x)
        ok = (one[:, 0] == sp) & (one[:, 1] == se) & (g[:, 0] == sp) & (g[:, 1] == se) & (bp == sp) & (be == se)
        match[pol] = float(ok.mean() * 100)
        pkgs[pol] = pkg
        print(f"  {name} / {pol}: {pl.describe()}: exits and predictions match in {match[pol]:.1f} % of {n_all} test "
              f"samples (runner batch 1, batched, single graph); exits {np.bincount(se, minlength=s['cache'].num_exits)}",
              flush=True)
    return {"s": s, "pls": pls, "pkgs": pkgs, "match": match, "x": x, "name": name, "tmp": tmp}


def merged_costs(costs: list[dict]) -> dict:
    """One costs file from many profiles: per segment (and gate / jump predictor) the median over them."""
    seg: dict = {}
    for c in costs:
        for r in c["segments"]:
            seg.setdefault((r["segment"], r["k"], r.get("predictor")), []).append(r)
    return dict(costs[0], segments=[dict(rs[0], ms_b1=float(np.median([r["ms_b1"] for r in rs]))) for rs in seg.values()],
                overhead={k: float(np.median([c["overhead"][k] for c in costs])) for k in ("sample_ms", "decision_ms")})


def timing(r: dict, a) -> tuple[float, float]:
    """Worst single-graph overhead (% of full) and worst |sim/meas - 1| of the runner, over the study's policies.
    Each round times, per policy in a shuffled order, its package's segments (one profiling round), the runner and
    the single graph on the same samples, so the costs and the latencies share the machine's state; medians over
    rounds."""
    s, pls, x, name = r["s"], r["pls"], r["x"][: a.n_time], r["name"]
    g = np.random.default_rng(0)
    fns = {(pol, mode): (r["pkgs"][pol].run_one if mode == "runner" else r["pkgs"][pol].graph())
           for pol in pls for mode in ("runner", "graph")}
    runs: dict = {key: [] for key in fns}
    costs = []
    for _ in range(a.rounds):
        for pol in g.permutation(list(pls)):
            costs.append(profile(r["pkgs"][pol], rounds=1, min_run_time=0.005, seed=len(costs)))
            for mode in g.permutation(["runner", "graph"]):
                runs[(pol, mode)].append(per_sample_ms(fns[(pol, mode)], x).mean())
    meas = {key: float(np.median(v)) for key, v in runs.items()}
    merged = merged_costs(costs)
    cache_copy = r["tmp"] / f"{name}-cache"
    shutil.copytree(s["cache"].path, cache_copy)
    r["cache"] = import_costs(cache_copy, merged, "bench")
    r["preds"] = copy.deepcopy(s["preds"])
    import_latency(r["preds"], merged, "bench")
    worst_over, worst_sim = -np.inf, 0.0  # the overhead may be negative: the graph faster than its segments
    full_graph = meas[("full", "graph")]
    for pol, pl in pls.items():
        rule, cuts, _ = decide(s["cache"], s["preds"], pl, s["rule"], s["cfg"])
        used = {g.predictor for g in (*pl.gates, pl.jump) if g is not None}  # timed on the device: in its package
        ev = Evidence.build(r["cache"], "test", measure=rule.measure, predictors={n: r["preds"][n] for n in used},
                            profile="measured-bench").subset(np.arange(len(x)))
        o = outcome(ev, pl, rule, cuts=cuts, name=pol)
        sim = float(o.latency_ms.mean())
        segs = float((o.breakdown["stages"] + o.breakdown["exits"] + o.breakdown["predictors"]).mean())
        over = (meas[(pol, "graph")] - segs) / full_graph * 100
        err = sim / meas[(pol, "runner")] - 1
        worst_over, worst_sim = max(worst_over, over), max(worst_sim, abs(err))
        print(f"  {name} / {pol}: runner {meas[(pol, 'runner')]:.4f} ms (simulated {sim:.4f}, sim/meas - 1 = "
              f"{err:+.3f}); single graph {meas[(pol, 'graph')]:.4f} ms, its segments {segs:.4f} ms: overhead "
              f"{over:+.1f} % of full's {full_graph:.4f} ms", flush=True)
    return worst_over, worst_sim


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/demo")
    ap.add_argument("--deep", default="runs/export-deep", help="folder of the deep study (made once; '' skips it)")
    ap.add_argument("--deep-epochs", type=int, default=2)
    ap.add_argument("--n-time", type=int, default=300, help="test samples timed per policy and round")
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    run = Path(a.run)
    if not (run / "model" / "model.pt").exists():
        sys.exit(f"no {run}/model/model.pt: run `make demo` first (or pass --run FOLDER of a study)")
    studies = {"demo": run}
    if a.deep:
        studies["b-resnet-20"] = deep_study(Path(a.deep), a.deep_epochs)
    print(f"ONNX Runtime, 1 intra-op thread; ms per sample at batch 1; machine load {np.round(__import__('os').getloadavg(), 2)}")
    matches, overs, sims = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, folder in studies.items():
            r = study(name, folder, a, Path(tmp))
            matches += list(r["match"].values())
            o, e = timing(r, a)
            overs.append(o)
            sims.append(e)
    print(f"export: exits match {min(matches):.1f} % ({len(matches)} policies), single-graph overhead "
          f"{max(overs):.1f} % of full, runner vs simulator worst |sim/meas - 1| = {max(sims):.3f}")


if __name__ == "__main__":
    main()
