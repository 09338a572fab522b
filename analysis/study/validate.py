"""``branchy validate``: how far is the simulator from a real run? The real early-exit runtime
(:class:`branchy.runtime.EarlyExitRuntime`, on a backend: eager, compiled, onnxruntime) runs every policy it can on test samples at
batch 1 (and batched), with the exit rule, gates and cuts decided on calib; the simulator predicts the
same samples from the cache's measured costs (segments plus the runtime's own measured overhead). Per
policy: measured and simulated mean and p95 ms with bootstrap CIs, their ratio, and the share of samples
whose exit matches."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from branchy.cache import FeatureCache
from branchy.core import show_progress
from branchy.exits import ExitRule
from branchy.runtime import EarlyExitRuntime
from placement import Placement
from predictors.deploy import gate_callable, jump_callable

from ..core.evidence import JUMP_LEAVE_CUT, Evidence, can_pass, leave_cut, outcome
from ..core.pathfit import PREDICTABLE_PCT, held_out_path_fit
from ..core.policies import POLICIES, PolicyConfig
from .compare import study_policies


def build_runtime(model, pl: Placement, rule: ExitRule, cuts: dict, predictors: dict, pooling: str,
                  segments: tuple | None = None, backend: str = "eager",
                  feature_dtype: str = "float32") -> EarlyExitRuntime:
    """The runtime of a placement, as the evaluator scores it (exits nothing can pass are not entered; a learned
    policy's leave predictors and a jump-and-leave predictor see the pooled activation rounded to the cache's
    ``feature_dtype``, as their scores did)."""
    if pl.learned:
        from predictors.deploy import leave_callable

        leave = {e: leave_callable(predictors[g.predictor], leave_cut(cuts, e), pooling,
                                   feature_dtype=feature_dtype) for e, g in enumerate(pl.leaves) if g is not None}
        return EarlyExitRuntime(model, rule, kept=list(pl.kept), segments=segments, leave=leave)
    if pl.thresholds is not None:
        rule = rule.with_thresholds(pl.thresholds, tuned_by="placement")
    kept = [bool(a and b) for a, b in zip(pl.kept, can_pass(rule))] if not model.chained else list(pl.kept)
    xs = None
    if backend != "eager" and (pl.jump is not None or any(g is not None for g in pl.gates)):
        from branchy.runtime import example_inputs

        xs = example_inputs(model, 2)  # one forward gives every branch point's example (compilation needs one)
    gates = {}
    for e, g in enumerate(pl.gates):
        if g is not None and kept[e]:
            gates[e] = (g.at, gate_callable(predictors[g.predictor], cuts.get(e, -np.inf), pooling, backend=backend,
                                            example=xs and xs[g.at + 1]))
    jump = None
    if pl.jump is not None and pl.jump_leave:
        from predictors.deploy import jump_leave_callable

        jump = (pl.jump.at, jump_leave_callable(predictors[pl.jump.predictor], cuts.get("jump", JUMP_LEAVE_CUT),
                                                pooling, feature_dtype=feature_dtype))
    elif pl.jump is not None:
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
    from branchy.runtime import overhead_from_times

    from ..core.costs import CostModel

    v = lambda seg: np.array([t[f"{seg}{i}"] for i in range(k)])  # noqa: E731
    ov = overhead_from_times(t, k, chained)
    cm = CostModel.from_arrays(v("stage"), v("exit"), v("buffer"), v("buffer"), stage_macs=ref.stage_macs,
                               exit_macs=ref.exit_macs, act_bytes=ref.act_bytes, profile=ref.profile, **ov)
    cm = replace(cm, device=ref.device)
    return cm, {n: (cm.predictor_ms(macs, t.get(f"pred:{n}", ms)), macs) for n, (ms, macs) in pcost.items()}


@dataclass
class _Runs:
    """The policies a validation runs: per name the runtime and the simulator's function of the evidence, and the
    placements whose predictors run (their costs are timed in a recheck)."""

    runtimes: dict = field(default_factory=dict)
    sim_fns: dict = field(default_factory=dict)
    placements: list = field(default_factory=list)

    def add(self, name: str, runtime, sim_fn, placement: Placement | None = None) -> None:
        self.runtimes[name], self.sim_fns[name] = runtime, sim_fn
        if placement is not None:
            self.placements.append(placement)


def _policy_runs(cache, model, ev: Evidence, st, rule: ExitRule, cfg: PolicyConfig, predictors: dict,
                 placements: dict, policies: list | None, segs, backend: str, profile: str) -> _Runs:
    """Every registered policy the runtime can run (only ``policies`` and ``full`` when given), then ``placements``
    (a placement, or ``(placement, cuts)`` with its cuts already decided): its runtime (built as the evaluator scores
    it) and its simulation."""
    k = cache.num_exits
    pooling, fdt = cache.manifest.get("pooling", "avg"), cache.manifest.get("feature_dtype", "float32")
    sim_cfg = replace(cfg, overlap=False)  # the runtime runs one segment after another
    runs = _Runs()
    for name in POLICIES.names():
        p = POLICIES.get(name)
        if not p.runtime or (policies is not None and name != "full" and name not in policies):
            continue
        if p.run is not None:
            if p.run(ev, rule, sim_cfg) is None:  # does not apply to this cache
                continue
            pl, r = p.runtime_form(k, model.chained, rule)
            runs.add(name, build_runtime(model, pl, r, {}, {}, pooling, segs), lambda e, p=p: p.run(e, rule, sim_cfg))
        elif name in st.chosen:
            c = st.chosen[name]
            runs.add(name, build_runtime(model, c.placement, rule, c.cuts, predictors, pooling, segs, backend, fdt),
                     lambda e, c=c, name=name: outcome(e, c.placement, rule, cuts=c.cuts, name=name), c.placement)
    if placements:
        from .placement_study import PlacementObjective

        obj = PlacementObjective(cache, predictors, profile=profile, rule=rule, cfg=cfg)
        for name, pl in placements.items():
            pl, cuts = pl if isinstance(pl, tuple) else (pl, None)  # cuts decided elsewhere travel with it
            cuts, r = obj.cuts(pl) if cuts is None else cuts, obj.rule_for(pl)
            runs.add(name, build_runtime(model, pl, r, cuts, predictors, pooling, segs, backend, fdt),
                     lambda e, pl=pl, r=r, cuts=cuts, name=name: outcome(e, pl, r, cuts=cuts, name=name), pl)
    return runs


def _recheck_fns(model, backend: str, test_x: torch.Tensor, runs: _Runs, predictors: dict, pooling: str) -> dict:
    """What a recheck times in every round: the segments and the runtime's overhead
    (:func:`branchy.runtime.overhead_fns`) and each predictor the placements run (``pred:NAME``)."""
    from branchy.runtime import example_inputs, overhead_fns
    from predictors.deploy import runtime_callable

    fns = overhead_fns(model, backend, x=test_x[:1])
    used = {g.predictor for pol in runs.placements for g in (*pol.gates, pol.jump) if g is not None}
    xs = example_inputs(model, 2) if used else None
    for name in sorted(used):
        p = predictors[name]
        ex = xs[p.spec.at + 1]
        fn = runtime_callable(p, pooling, backend=backend, example=ex if backend != "eager" else None)
        fns[f"pred:{name}"] = lambda fn=fn, h=ex[:1].clone(): fn(h)
    return fns


def _time_interleaved(runs: _Runs, test_x: torch.Tensor, reps: int, seed: int, rounds: int,
                      recheck_fns: dict | None, bar=None) -> tuple[np.ndarray, np.ndarray, pd.DataFrame | None]:
    """Every policy on every sample at batch 1, interleaved (a fresh random policy order per sample and pass, so
    noise hits every policy alike), in ``rounds`` chunks of samples; with ``recheck_fns`` each round first times
    those (:func:`branchy.runtime.interleaved_times`). Returns ms ``[policy, sample]`` (median of ``reps`` passes),
    the exit each took, and the recheck's per-round times. ``bar``: advanced by one per policy run (a total of
    ``reps * samples * policies``)."""
    names = list(runs.runtimes)
    n = len(test_x)
    g = np.random.default_rng(seed)
    meas = np.zeros((reps, len(names), n))
    taken = np.zeros((len(names), n), np.int64)
    samples = [test_x[i : i + 1] for i in range(n)]
    for rt in runs.runtimes.values():  # warm up
        for s in samples[:10]:
            rt(s)
    chunks = np.array_split(np.arange(n), rounds)

    def run_chunk(c: int) -> None:
        if c < 0:
            return
        for r in range(reps):
            for i in chunks[c]:
                for j in g.permutation(len(names)):
                    t0 = time.perf_counter()
                    _, ex = runs.runtimes[names[j]](samples[i])
                    meas[r, j, i] = (time.perf_counter() - t0) * 1e3
                    taken[j, i] = int(ex[0])
                if bar is not None:
                    bar.update(len(names))

    times = None
    if recheck_fns is not None:
        from branchy.runtime import interleaved_times

        times = interleaved_times(recheck_fns, rounds=rounds, seed=seed, on_round=run_chunk, per_call_median=True,
                                  fixed_reps={name: max(3, reps) for name in recheck_fns})  # as the run: median of reps
    else:
        for c in range(rounds):
            run_chunk(c)
    return np.median(meas, 0), taken, times


def _batched_ms(runs: _Runs, test_x: torch.Tensor, reps: int, batch_size: int) -> dict[str, float]:
    """Per policy, ms per sample when the runtime takes ``batch_size`` samples at a time."""
    n, out = len(test_x), {}
    for name, rt in runs.runtimes.items():
        t0 = time.perf_counter()
        for _ in range(reps):
            for b in range(0, n, batch_size):
                rt(test_x[b : b + batch_size])
        out[name] = (time.perf_counter() - t0) * 1e3 / (reps * n)
    return out


def _rows(names: list[str], meas: np.ndarray, sims: dict, taken: np.ndarray, batched: dict, *, backend: str,
          n_boot: int, seed: int, batch_size: int, machine_drift: float | None) -> list[dict]:
    """One row per policy: measured and simulated mean and p95 ms with bootstrap CIs, their ratio, exits matched,
    speed-ups over ``full`` and the batched figures."""
    rows = []
    n = meas.shape[1]
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
    return rows


def _simulated_now(runs: _Runs, ev: Evidence, times: pd.DataFrame, rounds: int, chained: bool) -> dict:
    """Per policy, every sample simulated with the costs timed in the round its chunk ran in (ms)."""
    n = ev.n
    now = {name: np.zeros(n) for name in runs.runtimes}
    for c, idx in enumerate(np.array_split(np.arange(n), rounds)):
        cm, pc = _round_costs(times.iloc[c], ev.costs, ev.num_exits, chained, ev.pcost)
        sub = replace(ev.subset(idx), costs=cm, pcost=pc)
        for name, fn in runs.sim_fns.items():
            now[name][idx] = fn(sub).latency_ms
    return now


def validate(cache: FeatureCache, model, test_x: torch.Tensor, **kw) -> pd.DataFrame:
    """:func:`validate_samples`'s table alone (every keyword is the same)."""
    return validate_samples(cache, model, test_x, **kw)[0]


@torch.no_grad()
def validate_samples(cache: FeatureCache, model, test_x: torch.Tensor, *, predictors: dict | None = None,
                     cfg: PolicyConfig = PolicyConfig(), rule: ExitRule | None = None,
                     placements: dict[str, Placement] | None = None, reps: int = 3, batch_size: int = 64,
                     n_boot: int = 1000, seed: int = 0, backend: str = "eager", recheck: bool = True,
                     policies: list[str] | None = None, progress: bool = True) -> tuple[pd.DataFrame, dict, dict]:
    """Measured versus simulated latency per policy on the first ``len(test_x)`` test samples (ms per
    sample at batch 1, the cache's thread count). ``placements``: extra placements to run (e.g. the one a
    search chose). ``backend`` runs the stages and heads (gates stay in torch); the simulator uses the
    costs measured on it (profile ``measured`` or ``measured-BACKEND``). ``recheck``: also time the segments,
    the runtime's overhead and the predictors *during* the run, in the same rounds (each round: those
    timings, then a chunk of samples through every policy), and simulate each chunk with its round's costs
    (``sim_now_mean_ms``, ``ratio_now``): the simulator's own error, apart from how the machine drifted since
    the cache was profiled (``drift``: the full path's simulated ms during the run over the cache's).
    ``policies``: only these registered policies (``full`` is always run: speed-ups are against it), besides the
    placements; default every one the runtime can run. ``progress``: a bar ``validate`` over the policy runs
    (``reps * samples * policies``). Returns the table and, for paired comparisons, the per-sample ms measured and
    simulated (policy -> array over ``test_x``)."""
    from branchy.runtime import drift, machine_state, prepare

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
    pooling = cache.manifest.get("pooling", "avg")
    runs = _policy_runs(cache, model, ev, st, rule, cfg, predictors or {}, placements or {}, policies,
                        prepare(model, backend), backend, profile)
    sims = {name: fn(ev) for name, fn in runs.sim_fns.items()}
    names = list(runs.runtimes)
    recheck = recheck and n >= 3  # at least one sample per round
    rounds = int(np.clip(n // 10, 3, 15)) if recheck else 1
    fns = _recheck_fns(model, backend, test_x, runs, predictors, pooling) if recheck else None
    with tqdm(total=reps * n * len(names), desc="validate", unit="run", disable=not show_progress(progress)) as bar:
        meas, taken, times = _time_interleaved(runs, test_x, reps, seed, rounds, fns, bar)
    batched = _batched_ms(runs, test_x, reps, batch_size)
    rows = _rows(names, meas, sims, taken, batched, backend=backend, n_boot=n_boot, seed=seed, batch_size=batch_size,
                 machine_drift=machine_drift)
    if recheck:  # every chunk simulated with the costs timed in its round
        now = _simulated_now(runs, ev, times, rounds, model.chained)
        full_sim = sims["full"].latency_ms.mean()
        for j, name in enumerate(names):
            rows[j].update({"sim_now_mean_ms": now[name].mean(), "ratio_now": now[name].mean() / meas[j].mean(),
                            "drift": now["full"].mean() / full_sim})
    for j, (pred, share) in enumerate(held_out_path_fit(names, sims, meas)):
        ok = share >= PREDICTABLE_PCT  # else the fit's split of what it could not separate decides: no figure
        rows[j].update({"sim_fit_mean_ms": pred if ok else np.nan, "ratio_fit": pred / meas[j].mean() if ok else np.nan,
                        "fit_predictable_%": share})
    return (pd.DataFrame(rows), {name: meas[j] for j, name in enumerate(names)},
            {name: np.asarray(sims[name].latency_ms) for name in names})



__all__ = ["build_runtime", "validate", "validate_samples"]
