"""analysis.present.plots: every plot is ``plot(..., ax=None) -> (fig, ax)`` on one axes, draws the same whether ``ax``
is given or not, and draws what its data says (the artists are counted, not the file size)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from analysis.present import plots
from placement import Gate, Placement


def _labels(ax) -> list[str]:
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg is not None else []


def _drawn(ax) -> dict:
    """What is on the axes: the number of each kind of artist, the texts and labels."""
    return {"lines": len(ax.lines), "patches": len(ax.patches), "collections": len(ax.collections),
            "images": len(ax.images), "texts": [t.get_text() for t in ax.texts], "legend": _labels(ax),
            "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(), "title": ax.get_title(), "yscale": ax.get_yscale()}


def _conf_table() -> pd.DataFrame:
    """A ``FeatureCache.table``-like frame: 3 exits; exit 2 answers every sample right."""
    rows = []
    for e, (n_ok, n_bad) in enumerate([(30, 10), (20, 5), (15, 0)]):
        for i in range(n_ok + n_bad):
            rows.append({"sample": i, "exit": e, "correct": i < n_ok, "entropy": 0.02 * i + 0.1 * e})
    return pd.DataFrame(rows)


SUMMARY = pd.DataFrame({"policy": ["full", "cascade"], "exit0_%": [0.0, 60.0], "exit1_%": [0.0, 30.0],
                        "exit2_%": [100.0, 10.0], "stages_ms": [3.0, 1.5], "exits_ms": [0.2, 0.6],
                        "predictors_ms": [0.0, 0.1], "buffering_ms": [0.0, 0.05]})
POINTS = pd.DataFrame({"policy": ["cascade"] * 3 + ["gated"] * 3, "mean_ms": [1.0, 2.0, 3.0, 0.8, 1.6, 2.5],
                       "accuracy_%": [90.0, 95.0, 97.0, 89.0, 94.0, 96.0], "on_front": [True] * 6,
                       "calib_mean_ms": [1.0, 2.0, 3.0, 0.8, 1.6, 2.5]})
PARETO_SUMMARY = pd.DataFrame({"policy": ["full", "cascade", "gated", "oracle"], "mean_ms": [3.5, 2.0, 1.6, 0.5],
                               "accuracy_%": [97.5, 95.0, 94.0, 99.0]})
CANDIDATES = pd.DataFrame({"mean_ms": [1.0, 2.0, 1.5, 3.0], "accuracy_%": [90.0, 95.0, 80.0, 96.0],
                           "feasible": [True, True, False, True], "chosen": [False, True, False, False],
                           "describe": ["a", "b", "c", "d"]})
PLACEMENT = Placement((True, False, True, True), (Gate("gate@0", 0), None, None, None))

CASES = {
    "entropy_hist": (plots.plot_entropy_hist, (_conf_table(),), {"thresholds": [0.3, np.inf, np.inf]}),
    "exit_distribution": (plots.plot_exit_distribution, (SUMMARY,), {}),
    "latency_breakdown": (plots.plot_latency_breakdown, (SUMMARY,), {}),
    "pareto": (plots.plot_pareto, (POINTS, PARETO_SUMMARY), {}),
    "placement_map": (plots.plot_placement_map, (PLACEMENT,), {}),
    "search_front": (plots.plot_search_front, (CANDIDATES,), {}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_plot_returns_fig_and_one_axes_and_draws_the_same_on_a_given_axes(name):
    fn, args, kw = CASES[name]
    fig, ax = fn(*args, **kw)
    assert isinstance(ax, plt.Axes) and fig.axes == [ax]
    own = _drawn(ax)
    fig2, given = plt.subplots()
    got_fig, got_ax = fn(*args, ax=given, **kw)
    assert got_fig is fig2 and got_ax is given and fig2.axes == [given]
    assert _drawn(given) == own
    plt.close(fig)
    plt.close(fig2)


def test_entropy_hist_draws_correct_and_wrong_per_exit_and_the_finite_thresholds():
    fig, ax = plots.plot_entropy_hist(_conf_table(), thresholds=[0.3, np.inf, np.inf], title="t")
    # one step outline per (exit, correct/wrong) that has samples: exit 2 has no wrong answers
    assert len(ax.patches) == 5
    assert _labels(ax) == ["exit 0 correct", "exit 0 wrong", "exit 1 correct", "exit 1 wrong", "exit 2 correct"]
    heights = [int(p.get_data().values.sum()) for p in ax.patches]
    assert heights == [30, 10, 20, 5, 15]
    assert [p.get_linestyle() for p in ax.patches] == ["-", "--", "-", "--", "-"]
    # exit 0's threshold only (exit 1's is infinite, the final exit has none)
    assert len(ax.lines) == 1 and ax.lines[0].get_xdata()[0] == 0.3
    assert ax.get_xlabel() == "entropy (nats)" and ax.get_yscale() == "log" and ax.get_title() == "t"
    plt.close(fig)


def test_stacked_bars_are_the_summary_values():
    fig, ax = plots.plot_exit_distribution(SUMMARY)
    np.testing.assert_allclose([p.get_width() for p in ax.patches], [0, 60, 0, 30, 100, 10])  # per exit, per policy
    assert _labels(ax) == ["exit0", "exit1", "exit2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["full", "cascade"]
    plt.close(fig)
    fig, ax = plots.plot_latency_breakdown(SUMMARY)
    np.testing.assert_allclose([p.get_width() for p in ax.patches], [3, 1.5, 0.2, 0.6, 0, 0.1, 0, 0.05], atol=1e-12)
    assert _labels(ax) == ["stages", "exits", "predictors", "buffering"]
    plt.close(fig)


def test_pareto_draws_a_front_per_policy_and_the_reference_points():
    fig, ax = plots.plot_pareto(POINTS, PARETO_SUMMARY)
    assert len(ax.lines) == 2  # the cascade's and the gated policy's fronts
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [1.0, 2.0, 3.0])
    # per policy its settings, full and oracle (stars), and the two calibrated operating points
    assert len(ax.collections) == 2 + 2 + 2
    assert _labels(ax) == ["cascade (front)", "gated (front)", "full", "oracle"]
    plt.close(fig)


def test_placement_map_marks_each_exit_and_the_gate():
    fig, ax = plots.plot_placement_map(PLACEMENT)
    assert [t.get_text() for t in ax.texts] == ["gated", "G", "removed", "open", "final"]
    assert len(ax.collections) == 1 and len(ax.images) == 1  # one gate marker on the grid
    np.testing.assert_array_equal(ax.collections[0].get_offsets(), [[0, 0]])  # exit 0, after stage 0
    plt.close(fig)


def test_search_front_draws_candidates_front_and_choice():
    fig, ax = plots.plot_search_front(CANDIDATES)
    sizes = [len(c.get_offsets()) for c in ax.collections]
    assert sizes == [1, 3, 1]  # infeasible, feasible, chosen
    assert sorted(_labels(ax)) == ["chosen: b", "feasible", "front", "infeasible"]
    assert len(ax.lines) == 1
    plt.close(fig)
