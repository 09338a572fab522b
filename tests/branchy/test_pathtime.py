"""Costs in the runtime's context: the forced paths span every path the runtime can take, the fit reproduces path
times (with and without noise) and keeps the segment-alone split where paths cannot tell, the forced runtimes take
the exits they are forced to, and the corrected table is what the simulator charges."""
import itertools

import numpy as np
import pytest
import torch

from branchy.models import build_model
from branchy.runtime.pathtime import (apply_params, fit_in_context, forced_paths, in_context_costs, param_names, path_row,
                              prior_params)
from branchy.runtime import EarlyExitRuntime


def _all_paths(k):
    """Every (exit, entered side exits) the runtime can take without chained exits."""
    rows = []
    for e in range(k):
        side = list(range(min(e, k - 2) + 1))
        for r in range(len(side) + 1):
            for s in itertools.combinations(side, r):
                if e < k - 1 and e not in s:
                    continue
                rows.append(path_row(k, e, set(s)))
    return np.array(rows)


def _rows(k, chained=False):
    return np.stack([path_row(k, fp.exit, set(fp.entered)) for fp in forced_paths(k, chained)])


@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_forced_paths_span_every_runtime_path(k):
    x, every = _rows(k), _all_paths(k)
    assert np.linalg.matrix_rank(x) == np.linalg.matrix_rank(np.vstack([x, every])) == 2 * k - 1
    assert x.shape[1] == len(param_names(k)) == 3 * k - 2


def test_chained_forced_paths_are_the_cascades_paths():
    k = 4
    cascade = np.stack([path_row(k, e, set(range(min(e + 1, k - 1)))) for e in range(k)])
    np.testing.assert_array_equal(np.unique(_rows(k, True), axis=0), np.unique(cascade, axis=0))


@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_fit_reproduces_every_path_from_forced_path_times(noise):
    k, g = 4, np.random.default_rng(1)
    true = g.uniform(0.02, 0.3, 3 * k - 2)
    prior = true * g.uniform(0.6, 1.5, len(true))  # segments timed alone: off by up to 50 %
    x, every = _rows(k), _all_paths(k)
    y = x @ true * (1 + noise * g.standard_normal(len(x)))
    theta = fit_in_context(x, y, prior)
    assert (theta >= 0).all()
    err = np.abs(every @ theta / (every @ true) - 1).max()
    assert err < (1e-3 if noise == 0 else 4 * noise)
    assert np.abs(every @ prior / (every @ true) - 1).max() > 0.1  # the prior alone was far off


def test_fit_keeps_the_prior_when_it_already_reproduces_the_paths():
    k, g = 3, np.random.default_rng(2)
    prior = g.uniform(0.02, 0.3, 3 * k - 2)
    x = _rows(k)
    np.testing.assert_allclose(fit_in_context(x, x @ prior, prior), prior, rtol=1e-6)


def test_fit_refuses_bad_path_times():
    x = _rows(3)
    with pytest.raises(ValueError, match="finite and > 0"):
        fit_in_context(x, np.full(len(x), np.nan), np.ones(x.shape[1]))


def _table(k, g):
    import pandas as pd

    rows = [{"segment": s, "k": i, "ms_b1": float(g.uniform(0.01, 0.2))} for i in range(k)
            for s in ("stage", "exit", "buffer")]
    return pd.DataFrame(rows)


def test_corrected_table_is_what_the_simulator_charges():
    from analysis.core.costs import CostModel
    from analysis.core.pathfit import path_params

    k, g = 4, np.random.default_rng(3)
    table, ov = _table(k, g), {"sample_ms": 0.03, "decision_ms": 0.01}
    prior = prior_params(table, ov, k)
    theta = prior * g.uniform(0.8, 1.3, len(prior))
    new, ov2 = apply_params(table, ov, theta, k)
    np.testing.assert_allclose(new["ms_b1_alone"], table["ms_b1"])
    assert ov2["decision_ms"] == 0 and ov2["decision_ms_alone"] == ov["decision_ms"] and ov2["sample_ms_alone"] == ov["sample_ms"]

    class _Cache:  # what CostModel.from_table reads of a cache
        num_exits, path = k, "c"

    for col in ("macs", "act_bytes"):
        new[col] = 1
    cm = CostModel.from_table(_Cache(), "measured", new, ov2)
    np.testing.assert_allclose(path_params(cm), theta, rtol=1e-9)
    np.testing.assert_allclose(cm.read_ms[:-1], theta[-(k - 1):], rtol=1e-9)  # reads apart from writes


@pytest.mark.parametrize("chained", [False, True])
def test_forced_runtimes_take_their_paths_and_costs_come_out_in_context(chained):
    torch.manual_seed(0)
    kw = {"chain": "boost"} if chained else {}
    m = build_model("b-lenet", exits=(0, 1), num_classes=4, **kw).eval()
    k = m.num_exits
    x = torch.randn(1, 1, 28, 28)
    for fp in forced_paths(k, chained):
        t = [float("inf") if leave else float("-inf") for leave in fp.leave]
        _, ex = EarlyExitRuntime(m, t, kept=list(fp.kept))(x)
        assert int(ex[0]) == fp.exit, fp.name
    table = _table(k, np.random.default_rng(4))
    new, ov, rec = in_context_costs(m, table, {"sample_ms": 0.01, "decision_ms": 0.005}, samples=6, reps=3)
    assert set(rec["paths"]) == {fp.name for fp in forced_paths(k, chained)}
    assert all(v["ms"] > 0 for v in rec["paths"].values())
    assert (new["ms_b1"] >= 0).all() and new.loc[new.segment == "buffer", "ms_b1_read"].notna().all()
    # the stored table charges every forced path exactly what the fit says (the fit itself is tested above)
    from analysis.core.costs import CostModel
    from analysis.core.pathfit import path_params

    class _Cache:
        num_exits, path = k, "c"

    for col in ("macs", "act_bytes"):
        new[col] = 1
    theta = path_params(CostModel.from_table(_Cache(), "measured", new, ov))
    for fp in forced_paths(k, chained):
        assert path_row(k, fp.exit, set(fp.entered)) @ theta == pytest.approx(rec["paths"][fp.name]["fit_ms"],
                                                                               rel=1e-4, abs=1e-5), fp.name
