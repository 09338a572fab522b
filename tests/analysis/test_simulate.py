"""The vectorised simulator against a naive per-sample loop written from docs/semantics.md §3.3."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from analysis.core.costs import CostModel
from analysis.core.simulate import (simulate_cascade, simulate_full, simulate_gated, simulate_jump, simulate_oracle,
                               simulate_patience)
from analysis.core.stats import summarize
from analysis.core.sweep import pareto_front, sweep_cascade


def naive(policy, costs, correct, *, passes=None, preds=None, patience=None, kept=None, enter=None, gate_at=None,
          gate_ms=None, jump_at=None, target=None, jump_ms=0.0, chained=False):
    """Per sample: walk the network, add each cost as it is paid. ``chained``: an exit's answer needs every
    earlier kept head (BoostNet, ZTW)."""
    n, k = correct.shape
    kept = np.ones(k, bool) if kept is None else kept
    S, E, W, R = costs.stage_ms, costs.exit_ms, costs.write_ms, costs.read_ms
    out_exit, out_lat, out_buf = [], [], []
    for s in range(n):
        lat, buf, run, prev = 0.0, 0.0, 0, None
        if policy == "oracle":  # known in advance: no buffer at the exit it leaves at
            before = [sum(W[j] + E[j] + R[j] for j in range(i) if kept[j]) if chained else 0.0 for i in range(k)]
            alone = [sum(S[: i + 1]) + E[i] + before[i] for i in range(k)]
            cands = [i for i in range(k) if kept[i] and correct[s, i]]
            if not cands:  # nothing right: the cheapest wrong answer
                cands = [i for i in range(k) if kept[i]]
            e = min(cands, key=lambda i: (alone[i], i))
            held = [costs.act_bytes[j] for j in range(e) if kept[j]] if chained else []
            out_exit.append(e), out_lat.append(alone[e]), out_buf.append(max(held, default=0.0))
            continue
        t = None
        for i in range(k):
            lat += S[i]
            if jump_at is not None and i == jump_at:  # the exit predictor runs first
                lat += jump_ms
                t = max(target[s], jump_at)
            if gate_at is not None:  # gates placed after stage i, unless the jump skips their exit
                for j in range(k - 1):
                    if kept[j] and gate_at[j] == i and not (t is not None and jump_at <= j < t):
                        lat += gate_ms[j]
            if i == k - 1:
                lat += E[i]
                e = i
                break
            if not kept[i]:
                continue
            if policy == "full" and not chained:
                continue
            if gate_at is not None and gate_at[i] >= 0 and not enter[s, i]:
                continue
            if t is not None and i < t:
                continue
            lat += W[i] + E[i]
            buf = max(buf, costs.act_bytes[i])
            if policy == "full":
                leave = False
            elif policy == "patience":  # PABEE: count agreements with the previous kept exit
                run = run + 1 if prev is not None and preds[s, i] == prev else 0
                prev = preds[s, i]
                leave = run >= patience
            else:
                leave = passes[s, i]
            if leave:
                e = i
                break
            lat += R[i]
        out_exit.append(e), out_lat.append(lat), out_buf.append(buf)
    ex = np.array(out_exit)
    return ex, correct[np.arange(n), ex], np.array(out_lat), np.array(out_buf)


@st.composite
def problems(draw):
    k = draw(st.integers(2, 5))
    n = draw(st.integers(1, 30))
    seed = draw(st.integers(0, 2**31 - 1))
    g = np.random.default_rng(seed)
    zero_buffer = draw(st.booleans())
    costs = CostModel.from_arrays(g.uniform(0.1, 2, k), g.uniform(0.01, 1, k),
                                  np.zeros(k) if zero_buffer else g.uniform(0, 0.5, k),
                                  np.zeros(k) if zero_buffer else g.uniform(0, 0.5, k),
                                  stage_macs=g.integers(10, 1000, k), exit_macs=g.integers(1, 100, k),
                                  act_bytes=g.integers(100, 10000, k))
    kept = g.random(k) < 0.8
    kept[-1] = True
    return dict(n=n, k=k, g=g, costs=costs, kept=kept, correct=g.random((n, k)) < 0.6,
                passes=g.random((n, k)) < 0.4, preds=g.integers(0, 3, (n, k)))


def _same(o, ref):
    ex, ok, lat, buf = ref
    np.testing.assert_array_equal(o.exit, ex)
    np.testing.assert_array_equal(o.correct, ok)
    np.testing.assert_allclose(o.latency_ms, lat, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(o.buffered_bytes, buf)


@settings(max_examples=60, deadline=None)
@given(problems())
def test_every_policy_equals_the_naive_loop(p):
    c, costs, kept, n, k, g = p["correct"], p["costs"], p["kept"], p["n"], p["k"], p["g"]
    _same(simulate_full(c, costs), naive("full", costs, c))
    _same(simulate_cascade(p["passes"], c, costs, kept=kept), naive("cascade", costs, c, passes=p["passes"], kept=kept))
    pat = int(g.integers(1, 4))
    _same(simulate_patience(p["preds"], c, costs, pat, kept=kept),
          naive("patience", costs, c, preds=p["preds"], patience=pat, kept=kept))
    gate_at = np.array([int(g.integers(-1, i + 1)) for i in range(k)])
    gate_at[-1] = -1
    gate_ms, enter = g.uniform(0, 0.2, k), g.random((n, k)) < 0.5
    _same(simulate_gated(p["passes"], c, costs, enter=enter, gate_at=gate_at, gate_ms=gate_ms, kept=kept),
          naive("gated", costs, c, passes=p["passes"], kept=kept, enter=enter, gate_at=gate_at, gate_ms=gate_ms))
    at, target = int(g.integers(0, k)), g.integers(0, k, n)
    _same(simulate_jump(p["passes"], c, costs, at=at, target=target, gate_ms=0.05, kept=kept),
          naive("jump", costs, c, passes=p["passes"], kept=kept, jump_at=at, target=target, jump_ms=0.05))
    _same(simulate_gated(p["passes"], c, costs, enter=enter, gate_at=gate_at, gate_ms=gate_ms, kept=kept,
                         jump=(at, target, 0.05, 0.0)),
          naive("gated", costs, c, passes=p["passes"], kept=kept, enter=enter, gate_at=gate_at, gate_ms=gate_ms,
                jump_at=at, target=target, jump_ms=0.05))
    _same(simulate_oracle(c, costs, kept=kept), naive("oracle", costs, c, kept=kept))
    _same(simulate_full(c, costs, chained=True), naive("full", costs, c, chained=True))
    _same(simulate_oracle(c, costs, kept=kept, chained=True), naive("oracle", costs, c, kept=kept, chained=True))


@settings(max_examples=40, deadline=None)
@given(problems())
def test_invariants(p):
    c, costs, n, k = p["correct"], p["costs"], p["n"], p["k"]
    full = simulate_full(c, costs)
    never = simulate_cascade(np.zeros((n, k), bool), c, costs)
    np.testing.assert_array_equal(never.exit, full.exit)
    np.testing.assert_array_equal(never.correct, full.correct)
    vain = (costs.write_ms + costs.exit_ms + costs.read_ms)[:-1].sum()
    np.testing.assert_allclose(never.latency_ms, full.latency_ms + vain)
    removed = simulate_cascade(np.ones((n, k), bool), c, costs, kept=np.eye(k, dtype=bool)[-1])
    np.testing.assert_allclose(removed.latency_ms, full.latency_ms)
    # zero buffering and gates that always enter: gated == cascade
    zb = CostModel.from_arrays(costs.stage_ms, costs.exit_ms, stage_macs=costs.stage_macs, exit_macs=costs.exit_macs)
    cas = simulate_cascade(p["passes"], c, zb)
    gat = simulate_gated(p["passes"], c, zb, enter=np.ones((n, k), bool), gate_at=np.arange(k), gate_ms=np.zeros(k))
    np.testing.assert_allclose(cas.latency_ms, gat.latency_ms)
    np.testing.assert_array_equal(cas.exit, gat.exit)
    # the oracle is never slower than any policy on the samples that policy answers correctly
    orc = simulate_oracle(c, costs)
    for o in (full, simulate_cascade(p["passes"], c, costs), simulate_patience(p["preds"], c, costs, 2),
              simulate_gated(p["passes"], c, costs, enter=p["g"].random((n, k)) < 0.5, gate_at=np.arange(k) - 1,
                             gate_ms=np.full(k, 0.01)),
              simulate_cascade(p["passes"], c, costs, overlap=True)):
        m = o.correct
        assert (orc.latency_ms[m] <= o.latency_ms[m] + 1e-9).all(), o.policy


def test_overlap_hides_branch_latency_but_not_macs():
    costs = CostModel.from_arrays([1.0, 1.0], [0.5, 0.1], [0.1, 0.0], [0.1, 0.0], stage_macs=[100, 100],
                                  exit_macs=[10, 10], act_bytes=[64, 64])
    c = np.array([[True, True], [True, True]])
    passes = np.array([[False, True], [True, True]])
    seq = simulate_cascade(passes, c, costs)
    ovl = simulate_cascade(passes, c, costs, overlap=True)
    np.testing.assert_allclose(seq.latency_ms, [1 + 0.1 + 0.5 + 0.1 + 1 + 0.1, 1 + 0.1 + 0.5])
    np.testing.assert_allclose(ovl.latency_ms, [1 + 0 + 1 + 0.1, 1 + 0.1 + 0.5])
    np.testing.assert_allclose(ovl.macs, [220, 210])  # the leaving sample also ran stage 2


def test_sweep_equals_the_simulator_and_never_passing_is_full():
    g = np.random.default_rng(0)
    n, k = 500, 4
    costs = CostModel.from_arrays(g.uniform(0.1, 1, k), g.uniform(0.05, 0.3, k), g.uniform(0, 0.1, k),
                                  g.uniform(0, 0.1, k), stage_macs=g.integers(10, 100, k), exit_macs=g.integers(1, 9, k))
    conf, correct = g.random((n, k)), g.random((n, k)) < 0.7
    grid = np.vstack([np.full(k, -1.0), g.random((6, k))])
    df = sweep_cascade(conf, correct, costs, grid)
    for t, row in zip(grid, df.itertuples()):
        o = simulate_cascade(conf < t, correct, costs)
        s = summarize(o, n_boot=0)
        assert row._1 == pytest.approx(s["accuracy_%"])
        assert row.mean_ms == pytest.approx(s["mean_ms"])
        assert row.p95_ms == pytest.approx(s["p95_ms"])
        assert row.mean_MACs == pytest.approx(s["mean_MACs"])
    full = summarize(simulate_full(correct, costs), n_boot=0)
    # never passing: full's answers, plus every side exit entered in vain
    assert df.iloc[0]["accuracy_%"] == pytest.approx(full["accuracy_%"]) and df.iloc[0]["exit3_%"] == 100
    vain = (costs.write_ms + costs.exit_ms + costs.read_ms)[:-1].sum()
    assert df.iloc[0].mean_ms == pytest.approx(full["mean_ms"] + vain)
    front = pareto_front(df)
    assert (np.diff(front["accuracy_%"].to_numpy()) > 0).all()


def test_summary_has_intervals_around_the_estimate():
    g = np.random.default_rng(1)
    c = g.random((400, 3)) < 0.8
    costs = CostModel.from_arrays([1, 1, 1], [0.1, 0.1, 0.1])
    s = summarize(simulate_cascade(g.random((400, 3)) < 0.5, c, costs), reference_ms=3.1)
    for key in ("accuracy_%", "mean_ms", "p95_ms", "speedup", "mean_MACs"):
        assert s[f"{key}_lo"] <= s[key] <= s[f"{key}_hi"], key
    assert s["speedup"] > 1 and sum(s[f"exit{i}_%"] for i in range(3)) == pytest.approx(100)


@pytest.mark.parametrize("call,msg", [
    (lambda c, co: simulate_cascade(np.zeros((3, 2), bool), c, co), r"passes must be \[N, K\] with K=3"),
    (lambda c, co: simulate_cascade(np.zeros((3, 3), bool), c, co, kept=[True, True, False]), "final exit"),
    (lambda c, co: simulate_cascade(np.zeros((3, 3), bool), c, co, kept=[True, True]), "kept must"),
    (lambda c, co: simulate_gated(np.zeros((3, 3), bool), c, co, enter=np.ones((3, 3)), gate_at=[0, 2, -1],
                                  gate_ms=np.zeros(3)), "stage j <= k"),
    (lambda c, co: simulate_gated(np.zeros((3, 3), bool), c, co, enter=np.ones((3, 3)), gate_at=[0, 1],
                                  gate_ms=np.zeros(3)), "gate_at must have one value per exit"),
    (lambda c, co: simulate_jump(np.zeros((3, 3), bool), c, co, at=0, target=[0, 1], gate_ms=0), r"target must be \[N\]"),
    (lambda c, co: simulate_full(np.ones((3, 4), bool), co), "correct must be"),
])
def test_bad_shapes_are_clear_errors(call, msg):
    costs = CostModel.from_arrays([1, 1, 1], [0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match=msg):
        call(np.ones((3, 3), bool), costs)


def test_bad_cost_model():
    with pytest.raises(ValueError, match="exit_ms has shape"):
        CostModel.from_arrays([1, 1, 1], [0.1, 0.1])
    with pytest.raises(ValueError, match="finite and >= 0"):
        CostModel.from_arrays([1, -1], [0.1, 0.1])
