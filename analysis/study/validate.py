"""``branchy validate``: how far is the simulator from a real run? The real early-exit runtime
(:class:`branchy.runtime.EarlyExitRuntime`, on a backend: eager, compiled, onnxruntime) runs every policy it can on test samples at
batch 1 (and batched), with the exit rule, gates and cuts decided on calib; the simulator predicts the
same samples from the cache's measured costs (segments plus the runtime's own measured overhead). Per
policy: measured and simulated mean and p95 ms with bootstrap CIs, their ratio, and the share of samples
whose exit matches."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from branchy.cache import FeatureCache
from branchy.rule import ExitRule
from branchy.runtime import EarlyExitRuntime
from placement import Placement
from predictors.deploy import gate_callable, jump_callable

from ..core.evidence import Evidence, can_pass, outcome
from ..core.policies import POLICIES, PolicyConfig
from .compare import study_policies


def build_runtime(model, pl: Placement, rule: ExitRule, cuts: dict, predictors: dict, pooling: str,
                  segments: tuple | None = None, backend: str = "eager") -> EarlyExitRuntime:
    """The runtime of a placement, as the evaluator scores it (exits nothing can pass are not entered)."""
    if pl.thresholds is not None:
        rule = rule.with_thresholds(pl.thresholds, tuned_by="placement")
    kept = [bool(a and b) for a, b in zip(pl.kept, can_pass(rule))] if not model.chained else list(pl.kept)
    xs = None
    if backend != "eager" and (pl.jump is not None or any(g is not None for g in pl.gates)):
        from branchy.backends import example_inputs

        xs = example_inputs(model, 2)  # one forward gives every branch point's example (compilation needs one)
    gates = {}
    for e, g in enumerate(pl.gates):
        if g is not None and kept[e]:
            gates[e] = (g.at, gate_callable(predictors[g.predictor], cuts.get(e, -np.inf), pooling, backend=backend,
                                            example=xs and xs[g.at + 1]))
    jump = None
    if pl.jump is not None:
        jump = (pl.jump.at, jump_callable(predictors[pl.jump.predictor], pooling, backend=backend,
                                          example=xs and xs[pl.jump.at + 1]))
    return EarlyExitRuntime(model, rule, kept=kept, gates=gates, segments=segments, jump=jump)


def _boot(a: np.ndarray, b: np.ndarray | None, n_boot: int, seed: int):
    """Percentile-bootstrap 95 % intervals of mean(a), p95(a) and mean(b)/mean(a) (paired samples)."""
    if n_boot <= 0:  # no CI asked for
        nan = np.array([np.nan, np.nan])
        return {"mean": nan, "p95": nan, **({"ratio": nan} if b is not None else {})}
    g = np.random.default_rng(seed)
    idx = g.integers(0, len(a), (n_boot, len(a)))
    ra = a[idx]
    out = {"mean": np.percentile(ra.mean(1), [2.5, 97.5]),
           "p95": np.percentile(np.percentile(ra, 95, axis=1, method="inverted_cdf"), [2.5, 97.5])}
    if b is not None:
        out["ratio"] = np.percentile(b[idx].mean(1) / ra.mean(1), [2.5, 97.5])
    return out


def _round_costs(t: pd.Series, ref, k: int, chained: bool, pcost: dict) -> tuple:
    """A cost model (and predictor costs) from one round's ms per call of the segments, the runtime and the
    predictors, timed beside the policies' run."""
    from branchy.profile import overhead_from_times

    from ..core.costs import CostModel

    v = lambda seg: np.array([t[f"{seg}{i}"] for i in range(k)])  # noqa: E731
    ov = overhead_from_times(t, k, chained)
    cm = CostModel.from_arrays(v("stage"), v("exit"), v("buffer"), v("buffer"), stage_macs=ref.stage_macs,
                               exit_macs=ref.exit_macs, act_bytes=ref.act_bytes, profile=ref.profile, **ov)
    cm = replace(cm, device=ref.device)
    return cm, {n: (cm.predictor_ms(macs, t.get(f"pred:{n}", ms)), macs) for n, (ms, macs) in pcost.items()}


@torch.no_grad()
def validate(cache: FeatureCache, model, test_x: torch.Tensor, *, predictors: dict | None = None,
             cfg: PolicyConfig = PolicyConfig(), rule: ExitRule | None = None,
             placements: dict[str, Placement] | None = None, reps: int = 3, batch_size: int = 64,
             n_boot: int = 1000, seed: int = 0, backend: str = "eager", recheck: bool = True,
             policies: list[str] | None = None) -> pd.DataFrame:
    """Measured versus simulated latency per policy on the first ``len(test_x)`` test samples (ms per
    sample at batch 1, the cache's thread count). ``placements``: extra placements to run (e.g. the one a
    search chose). ``backend`` runs the stages and heads (gates stay in torch); the simulator uses the
    costs measured on it (profile ``measured`` or ``measured-BACKEND``). ``recheck``: also time the segments,
    the runtime's overhead and the predictors *during* the run, in the same rounds (each round: those
    timings, then a chunk of samples through every policy), and simulate each chunk with its round's costs
    (``sim_now_mean_ms``, ``ratio_now``): the simulator's own error, apart from how the machine drifted since
    the cache was profiled (``drift``: the full path's simulated ms during the run over the cache's).
    ``policies``: only these registered policies (``full`` is always run: speed-ups are against it), besides the
    placements; default every one the runtime can run."""
    from branchy.backends import prepare
    from branchy.timing import drift, machine_state

    model = model.cpu().eval()
    n = len(test_x)
    rec = cache.manifest if backend == "eager" else (cache.manifest.get("backends") or {}).get(backend, {})
    torch.set_num_threads(int(rec.get("threads") or cache.manifest.get("threads") or torch.get_num_threads()))
    state = machine_state(torch.get_num_threads())  # warns when the threads exceed the idle cores
    machine_drift = drift(rec.get("timing"), state["probe_ms"])  # now vs when the costs were profiled
    profile = "measured" if backend == "eager" else f"measured-{backend}"
    cache.costs_for(backend)  # the costs measured on that backend must exist: a clear error otherwise
    st = study_policies(cache, predictors=predictors, profile=profile, cfg=cfg, rule=rule)
    rule = st.rule
    ev = Evidence.build(cache, "test", measure=cfg.measure, predictors=predictors, profile=profile).subset(
        np.arange(n))
    segs = prepare(model, backend)
    k = cache.num_exits
    pooling = cache.manifest.get("pooling", "avg")
    sim_cfg = replace(cfg, overlap=False)  # the runtime runs one segment after another
    runtimes, sims, sim_fns, used_placements = {}, {}, {}, []
    for name in POLICIES.names():  # every registered policy the runtime can run, then the placements
        p = POLICIES.get(name)
        if not p.runtime or (policies is not None and name != "full" and name not in policies):
            continue
        if p.run is not None:
            if p.run(ev, rule, sim_cfg) is None:  # does not apply to this cache
                continue
            pl, r = p.runtime_form(k, model.chained, rule)
            runtimes[name] = build_runtime(model, pl, r, {}, {}, pooling, segs)
            sim_fns[name] = lambda e, p=p: p.run(e, rule, sim_cfg)
        elif name in st.chosen:
            c = st.chosen[name]
            runtimes[name] = build_runtime(model, c.placement, rule, c.cuts, predictors or {}, pooling, segs, backend)
            sim_fns[name] = lambda e, c=c, name=name: outcome(e, c.placement, rule, cuts=c.cuts, name=name)
            used_placements.append(c.placement)
    if placements:
        from .placement_study import PlacementObjective

        obj = PlacementObjective(cache, predictors or {}, profile=profile, rule=rule, cfg=cfg)
        for name, pl in placements.items():
            cuts, r = obj.cuts(pl), obj.rule_for(pl)
            runtimes[name] = build_runtime(model, pl, r, cuts, predictors or {}, pooling, segs, backend)
            sim_fns[name] = lambda e, pl=pl, r=r, cuts=cuts, name=name: outcome(e, pl, r, cuts=cuts, name=name)
            used_placements.append(pl)
    for name, fn in sim_fns.items():
        sims[name] = fn(ev)
    names = list(runtimes)
    g = np.random.default_rng(seed)
    meas = np.zeros((reps, len(names), n))
    taken = np.zeros((len(names), n), np.int64)
    samples = [test_x[i : i + 1] for i in range(n)]
    for rt in runtimes.values():  # warm up
        for s in samples[:10]:
            rt(s)
    recheck = recheck and n >= 3  # at least one sample per round
    rounds = int(np.clip(n // 10, 3, 15)) if recheck else 1
    chunks = np.array_split(np.arange(n), rounds)

    def run_chunk(c: int) -> None:
        if c < 0:
            return
        for r in range(reps):
            for i in chunks[c]:
                for j in g.permutation(len(names)):  # interleaved: noise hits every policy alike
                    t0 = time.perf_counter()
                    _, ex = runtimes[names[j]](samples[i])
                    meas[r, j, i] = (time.perf_counter() - t0) * 1e3
                    taken[j, i] = int(ex[0])

    if recheck:  # each round: the segments, overhead and predictors timed, then one chunk of samples
        from branchy.profile import overhead_fns
        from branchy.timing import interleaved_times
        from predictors.deploy import runtime_callable

        from branchy.backends import example_inputs

        fns = overhead_fns(model, backend, x=test_x[:1])
        used = {g_.predictor for pol in used_placements for g_ in (*pol.gates, pol.jump) if g_ is not None}
        xs = example_inputs(model, 2) if used else None
        for name in sorted(used):
            p = predictors[name]
            ex = xs[p.spec.at + 1]
            fn = runtime_callable(p, pooling, backend=backend, example=ex if backend != "eager" else None)
            fns[f"pred:{name}"] = lambda fn=fn, h=ex[:1].clone(): fn(h)
        times = interleaved_times(fns, rounds=rounds, seed=seed, on_round=run_chunk, per_call_median=True,
                                  fixed_reps={name: max(3, reps) for name in fns})  # as the run: median of reps
    else:
        for c in range(rounds):
            run_chunk(c)
    meas = np.median(meas, 0)
    batched = {}
    for name, rt in runtimes.items():
        t0 = time.perf_counter()
        for _ in range(reps):
            for b in range(0, n, batch_size):
                rt(test_x[b : b + batch_size])
        batched[name] = (time.perf_counter() - t0) * 1e3 / (reps * n)
    rows = []
    full_meas, full_sim = meas[names.index("full")].mean(), sims["full"].latency_ms.mean()
    for j, name in enumerate(names):
        m, sl = meas[j], sims[name].latency_ms
        ci = _boot(m, sl, n_boot, seed)
        sci = _boot(sl, None, n_boot, seed)
        rows.append({"policy": name, "backend": backend, "n": n,
                     "meas_mean_ms": m.mean(), "meas_mean_lo": ci["mean"][0], "meas_mean_hi": ci["mean"][1],
                     "sim_mean_ms": sl.mean(), "sim_mean_lo": sci["mean"][0], "sim_mean_hi": sci["mean"][1],
                     "ratio": sl.mean() / m.mean(), "ratio_lo": ci["ratio"][0], "ratio_hi": ci["ratio"][1],
                     "meas_p95_ms": np.percentile(m, 95, method="inverted_cdf"),
                     "meas_p95_lo": ci["p95"][0], "meas_p95_hi": ci["p95"][1],
                     "sim_p95_ms": np.percentile(sl, 95, method="inverted_cdf"),
                     "sim_p95_lo": sci["p95"][0], "sim_p95_hi": sci["p95"][1],
                     "exit_match_%": 100 * (taken[j] == sims[name].exit).mean(),
                     "meas_speedup": full_meas / m.mean(), "sim_speedup": full_sim / sl.mean(),
                     "batched_ms_per_sample": batched[name], "batched_speedup": batched["full"] / batched[name],
                     "batch_size": batch_size, "threads": torch.get_num_threads(),
                     "machine_drift": np.nan if machine_drift is None else machine_drift})
    if recheck:  # every chunk simulated with the costs timed in its round
        now = {name: np.zeros(n) for name in names}
        for c, idx in enumerate(chunks):
            cm, pc = _round_costs(times.iloc[c], ev.costs, k, model.chained, ev.pcost)
            sub = replace(ev.subset(idx), costs=cm, pcost=pc)
            for name, fn in sim_fns.items():
                now[name][idx] = fn(sub).latency_ms
        for j, name in enumerate(names):
            rows[j].update({"sim_now_mean_ms": now[name].mean(), "ratio_now": now[name].mean() / meas[j].mean(),
                            "drift": now["full"].mean() / full_sim})
    for j, (pred, share) in enumerate(held_out_path_fit(names, sims, meas)):
        ok = share >= PREDICTABLE_PCT  # else the fit's split of what it could not separate decides: no figure
        rows[j].update({"sim_fit_mean_ms": pred if ok else np.nan, "ratio_fit": pred / meas[j].mean() if ok else np.nan,
                        "fit_predictable_%": share})
    df = pd.DataFrame(rows)
    df.attrs["meas_ms"] = {name: meas[j] for j, name in enumerate(names)}  # per sample, for paired comparisons
    df.attrs["sim_ms"] = {name: np.asarray(sims[name].latency_ms) for name in names}
    return df


PREDICTABLE_PCT = 95.0  # a held-out policy is predicted from fitted costs only where this share of its paths is spanned


def held_out_path_fit(names: list[str], sims: dict, meas: np.ndarray) -> list[tuple[float, float]]:
    """Per policy, its mean latency predicted by segment costs fitted (:mod:`analysis.core.pathfit`, NNLS) on the
    *other* policies' measured per-sample path times (``meas[j]``, ms), and the share (%) of its paths that lie in
    the span of theirs; (nan, 0) where no other policy has a recorded path."""
    from ..core.pathfit import fit_path_costs

    out = []
    for j, name in enumerate(names):
        train = [i for i, n in enumerate(names) if i != j and sims[n].path is not None]
        if not train or sims[name].path is None:
            out.append((np.nan, 0.0))
            continue
        fit = fit_path_costs([sims[names[i]] for i in train], [meas[i] for i in train])
        out.append((float(fit.predict(sims[name]).mean()), 100 * float(fit.predictable(sims[name]).mean())))
    return out


def drift_line(df: pd.DataFrame, limit: float | None = None) -> str | None:
    """A warning when the machine ran the speed probe more than ``limit`` (default
    :data:`branchy.timing.DRIFT_LIMIT`) times slower or faster during the run than when the cache's costs were
    profiled: the stored costs no longer describe this machine (None when within it or not recorded)."""
    from branchy.timing import DRIFT_LIMIT

    limit = limit or DRIFT_LIMIT
    d = df["machine_drift"].iloc[0] if "machine_drift" in df else np.nan
    if not np.isfinite(d) or 1 / limit <= d <= limit:
        return None
    return (f"machine drift: the speed probe ran {d:.2f}x {'slower' if d > 1 else 'faster'} than when the costs were "
            f"profiled (limit {limit:g}x): re-profile the cache (branchy profile --cache DIR) before trusting "
            f"simulated figures")


def fit_line(df: pd.DataFrame) -> str | None:
    """The comparison with costs fitted on the other policies' path times (None without them)."""
    if "ratio_fit" not in df or not df["ratio_fit"].notna().any():
        return None
    d = df[df["ratio_fit"].notna()]
    worst = float(np.max(np.abs(d["ratio_fit"] - 1)))
    left = [p for p in df.policy if p not in set(d.policy)]
    return (f"with costs fitted on the other policies' path times (NNLS, each policy held out): worst |sim/meas - 1| "
            f"= {worst:.3f} over {len(d)} policies" + (f" ({', '.join(left)}: paths the others do not span)"
                                                       if left else ""))


def recheck_line(df: pd.DataFrame) -> str | None:
    """The same comparison with the costs timed during the run (None without them)."""
    if "ratio_now" not in df:
        return None
    worst = float(np.max(np.abs(df["ratio_now"] - 1)))
    return (f"with costs timed during the run: worst |sim/meas - 1| = {worst:.3f}; the full path took "
            f"{df['drift'].iloc[0]:.2f}x its profiled time during the run (machine drift)")


def validate_line(df: pd.DataFrame) -> str:
    worst = float(np.max(np.abs(df["ratio"] - 1)))
    return f"validate: worst |sim/meas - 1| = {worst:.3f} over {len(df)} policies (batch 1, {df.backend.iloc[0]})"


def format_validate(df: pd.DataFrame) -> str:
    d = pd.DataFrame({
        "policy": df.policy,
        "measured ms [CI]": [f"{r.meas_mean_ms:.4f} [{r.meas_mean_lo:.4f}, {r.meas_mean_hi:.4f}]" for r in df.itertuples()],
        "simulated ms [CI]": [f"{r.sim_mean_ms:.4f} [{r.sim_mean_lo:.4f}, {r.sim_mean_hi:.4f}]" for r in df.itertuples()],
        "sim/meas [CI]": [f"{r.ratio:.3f} [{r.ratio_lo:.3f}, {r.ratio_hi:.3f}]" for r in df.itertuples()],
        **({"sim/meas (costs now)": df["ratio_now"].map("{:.3f}".format)} if "ratio_now" in df else {}),
        **({"sim/meas (fitted, held out)": df["ratio_fit"].map("{:.3f}".format)} if "ratio_fit" in df else {}),
        "p95 meas [CI] / sim": [f"{r.meas_p95_ms:.3f} [{r.meas_p95_lo:.3f}, {r.meas_p95_hi:.3f}] / {r.sim_p95_ms:.3f}"
                                for r in df.itertuples()],
        "exits match %": df["exit_match_%"].round(1),
        "speed-up meas/sim": [f"{r.meas_speedup:.2f} / {r.sim_speedup:.2f}" for r in df.itertuples()],
        "batched ms/sample (speed-up)": [f"{r.batched_ms_per_sample:.4f} ({r.batched_speedup:.2f})"
                                          for r in df.itertuples()]})
    return d.to_string(index=False)


def validate_run(run: str | Path, *, n: int = 300, reps: int = 3, batch_size: int = 64,
                 backend: str = "eager") -> tuple[pd.DataFrame, Path]:
    """:func:`validate` on a study folder (model/, cache/, predictors/, simulate/thresholds.json,
    placement/*/placement.json); writes ``validate/validate.csv`` and ``validate/validate.png``."""
    run = Path(run)
    ckpt = run / "model" / "model.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"no {ckpt}: validate needs a study folder written by `branchy run` or `branchy demo` "
                                f"(or give --checkpoint, --cache, --predictors and --placement of step-by-step outputs)")
    from .config import load_study

    cfg = load_study(run / "study.yaml").policies if (run / "study.yaml").is_file() else PolicyConfig()
    return validate_files(ckpt, run / "cache", out=run / "validate",
                          predictors=run / "predictors" if (run / "predictors").is_dir() else None,
                          placements=sorted(run.glob("placement/*/placement.json")),
                          rule=(run / "simulate" / "thresholds.json") if (run / "simulate" / "thresholds.json").is_file()
                          else None, cfg=cfg, n=n, reps=reps, batch_size=batch_size,
                          backend=backend)


def validate_files(checkpoint: str | Path, cache_dir: str | Path, *, out: str | Path, predictors=None,
                   placements=(), rule=None, cfg: PolicyConfig | None = None, n: int = 300, reps: int = 3,
                   batch_size: int = 64, backend: str = "eager") -> tuple[pd.DataFrame, Path]:
    """:func:`validate` on step-by-step outputs (``branchy train`` / ``dump`` / ``fit-predictors`` / ``place``): a
    checkpoint, its cache, optionally a predictors folder and placement files (``placement.json``; a placement
    written with risk control brings its own ``predictors/`` beside it), and an exit rule file (default: the rule
    calibrated on calib). The test images come from the dataset the checkpoint was trained on. Writes
    ``OUT/validate[_BACKEND].csv`` and ``.png``."""
    from branchy.backends import BACKENDS
    from branchy.checkpoint import data_config_of, load_checkpoint
    from branchy.data import DataConfig
    from branchy.paths import check_writable

    from ..present import plots

    out = Path(out)
    check_writable(out, folder=True, what="validate folder")
    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt}: give the model.pt that `branchy train` wrote")
    BACKENDS.get(backend)
    pl_paths = [Path(p) for p in placements]
    for p in pl_paths:
        if not p.is_file():
            raise FileNotFoundError(f"no placement at {p}: give the placement.json that `branchy place` wrote")
    if rule is not None and not Path(rule).is_file():
        raise FileNotFoundError(f"no exit rule file at {rule}: give a study's simulate/thresholds.json or leave it out")
    model, meta = load_checkpoint(ckpt)
    cache = FeatureCache.open(cache_dir, model=model)
    cache.costs_for(backend)  # measured on that backend? (a clear error before any data is loaded)
    preds = None
    if predictors is not None:
        from predictors.store import load_predictors

        preds = load_predictors(predictors, cache)
    pls = {}
    for p in pl_paths:
        pls[f"placement ({p.parent.name})"] = Placement.load(p)
        if (p.parent / "predictors").is_dir():  # the refits a risk-controlled placement was certified with
            from predictors.store import load_predictors

            own = load_predictors(p.parent / "predictors", cache)
            if preds and set(own) & set(preds) and len(pl_paths) > 1:
                raise ValueError(f"{p.parent}/predictors refits predictors that other placements use too: validate "
                                 f"a risk-controlled placement on its own")
            preds = {**(preds or {}), **own}
    data = data_config_of(meta)
    if data is None:
        name = (cache.manifest.get("dataset") or {}).get("name")
        if not name:
            raise ValueError(f"{ckpt} records no dataset: validate needs the test images the cache was dumped from")
        data = DataConfig(name)
    splits = data.load()
    cache.check(dataset=splits)
    rule_obj = ExitRule.load(rule) if rule is not None else None
    n = min(n, cache.size("test"))
    x = splits.test.batch(torch.arange(n))[0]
    df = validate(cache, model, x, predictors=preds, cfg=cfg or PolicyConfig(), rule=rule_obj, placements=pls,
                  reps=reps, batch_size=batch_size, backend=backend)
    out.mkdir(parents=True, exist_ok=True)
    tag = "" if backend == "eager" else f"_{backend}"
    df.to_csv(out / f"validate{tag}.csv", index=False)
    fig, _ = plots.plot_validate(df, title=f"simulated vs measured ({backend}, batch 1, {n} test samples)")
    plots.save(fig, out / f"validate{tag}.png")
    return df, out
