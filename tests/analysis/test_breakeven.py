"""When a gate pays: the break-even model against direct simulation (a gate at the break-even cost ties the
cascade), its words, its map, and `branchy explain-gates`."""
import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest

from analysis.cli import main
from analysis.core.breakeven import (break_even, break_even_table, explain_gates, perfect_gates_outcome,
                                     virtual_gate_outcome)
from analysis.core.costs import DeviceProfile
from analysis.core.evidence import Evidence, outcome
from analysis.core.policies import PolicyConfig, calibrate
from analysis.present.plots import plot_gate_map
from analysis.study.compare import gate_break_even
from placement import Placement
from predictors import PredictorSpec, fit_predictor

DEV = DeviceProfile("slow-heads", macs_per_s=1e6, bytes_per_s=1e7, overhead_ms=0.01)


@pytest.fixture(scope="module")
def setup(synth_cache):
    rule = calibrate(synth_cache, PolicyConfig())
    ev = Evidence.build(synth_cache, "calib", profile=DEV)
    return ev, rule


def _cascade(ev, rule):
    return outcome(ev, Placement.plain(ev.num_exits), rule)


@pytest.mark.parametrize("exit,at", [(0, 0), (1, 0), (1, 1)])
def test_a_gate_at_the_break_even_cost_ties_the_cascade(setup, exit, at):
    ev, rule = setup
    b = break_even(ev, rule, exit, at)
    assert b.saving_ms > 0 and b.penalty_ms > 0 and 0 < b.runs_share <= 1
    cascade = _cascade(ev, rule).latency_ms.mean()
    would = ev.passes(rule)[:, exit]
    tie = virtual_gate_outcome(ev, rule, exit, at, would, b.max_cost_ms(1.0, 0.0))
    assert tie.latency_ms.mean() == pytest.approx(cascade, abs=1e-9)
    cheaper = virtual_gate_outcome(ev, rule, exit, at, would, 0.9 * b.max_cost_ms(1.0, 0.0))
    assert cheaper.latency_ms.mean() < cascade  # below break-even it pays, at no loss of accuracy
    assert cheaper.correct.mean() == _cascade(ev, rule).correct.mean()
    # the break-even quality at a given cost: a gate that skips exactly that share of the non-accepted samples ties
    g = 0.5 * b.max_cost_ms(1.0, 0.0)
    need = b.min_true_skip(g, 0.0)
    assert need == pytest.approx(0.5)
    # removing the exit (every sample skips it) is the model at TS = FS = 1, G = 0, accuracy included
    never = virtual_gate_outcome(ev, rule, exit, at, np.zeros(ev.n, bool), 0.0)
    assert never.latency_ms.mean() - cascade == pytest.approx(b.delta_ms(1.0, 1.0, 0.0), abs=1e-9)
    assert 100 * (never.correct.mean() - _cascade(ev, rule).correct.mean()) == pytest.approx(b.acc_change_pts)


def test_the_model_is_exact_for_any_share_of_true_skips(setup):
    """A true skip saves the same for every sample, so the latency change is linear in the true-skip rate."""
    ev, rule = setup
    b = break_even(ev, rule, 1, 1)
    would = ev.passes(rule)[:, 1]
    reach = _cascade(ev, rule).exit >= 1
    rng = np.random.default_rng(0)
    for share in (0.25, 0.6):
        enter = would | (rng.random(ev.n) >= share)
        ts = (~enter & ~would)[reach].sum() / (~would)[reach].sum()
        o = virtual_gate_outcome(ev, rule, 1, 1, enter, 0.003)
        assert o.latency_ms.mean() - _cascade(ev, rule).latency_ms.mean() == \
            pytest.approx(b.delta_ms(ts, 0.0, 0.003), abs=1e-9)


def test_perfect_gates_bound_every_gate_and_match_a_direct_sum(setup):
    """Free perfect gates in front of every side exit: the cascade's answers, each sample paying only the trunk to
    the exit that lets it out plus that one head (buffering included); no single gate does better."""
    ev, rule = setup
    cascade = _cascade(ev, rule)
    perfect = perfect_gates_outcome(ev, rule)
    assert (perfect.correct == cascade.correct).all() and (perfect.exit == cascade.exit).all()
    assert (perfect.latency_ms <= cascade.latency_ms + 1e-12).all() and perfect.latency_ms.mean() < \
        cascade.latency_ms.mean()
    # naive: the cascade's path minus every head (and its buffer write and read) it entered and left again
    c = ev.costs
    naive = cascade.latency_ms.copy()
    for i in range(ev.num_exits - 1):
        entered_and_left = cascade.exit > i
        naive[entered_and_left] -= c.exit_ms[i] + c.write_ms[i] + c.read_ms[i] + c.decision_ms
    np.testing.assert_allclose(perfect.latency_ms, naive, atol=1e-9)
    for exit, at in [(0, 0), (1, 0), (1, 1)]:
        one = virtual_gate_outcome(ev, rule, exit, at, ev.passes(rule)[:, exit], 0.0)
        assert perfect.latency_ms.mean() <= one.latency_ms.mean() + 1e-12
    # a gate's cost is paid once per gate a sample runs
    costly = perfect_gates_outcome(ev, rule, cost_ms=0.25)
    np.testing.assert_allclose(costly.latency_ms - perfect.latency_ms,
                               0.25 * np.minimum(cascade.exit + 1, ev.num_exits - 1), atol=1e-9)


def test_break_even_refuses_what_cannot_be_gated(setup):
    ev, rule = setup
    with pytest.raises(ValueError, match="0 <= at <= exit <= 1"):
        break_even(ev, rule, 2, 0)  # the final exit has no gate
    with pytest.raises(ValueError, match="0 <= at <= exit"):
        break_even(ev, rule, 0, 1)


def test_words_table_and_map_from_real_predictors(synth_cache, setup, tmp_path, capsys):
    ev, rule = setup
    t = rule.thresholds
    preds = {}
    for spec in (PredictorSpec("gate", 1, "linear", 1, tuple(t)), PredictorSpec("gate", 0, "linear", 0, tuple(t))):
        preds[spec.name] = fit_predictor(synth_cache, spec, timing=0.01)
    evp = Evidence.build(synth_cache, "calib", profile=DEV, predictors=preds)
    table, gates, lines = gate_break_even(evp, rule)
    assert list(zip(table.exit, table["at"])) == [(0, 0), (1, 0), (1, 1)] and len(gates) == 2
    assert len(lines) == 2 and all("pays if it costs <" in line and "The best predictor here" in line
                                   for line in lines)
    be0 = table[table.exit == 0].iloc[0]
    assert f"< {be0['max_cost_ms_fs2%']:.3g} ms" in lines[0]
    assert "No gate predictor is fitted" in explain_gates(break_even_table(ev, rule))[0]
    fig, ax = plot_gate_map(table, gates)
    (im,) = ax.get_images()
    need = im.get_array()
    assert need.shape == (3, 200) and need.mask[:, -1].all() and not need.mask[:, 0].any()  # pays only when cheap
    assert [t.get_text() for t in ax.get_yticklabels()] == ["exit 0 ← stage 0", "exit 1 ← stage 0", "exit 1 ← stage 1"]
    assert len(ax.collections) == 2  # one marker per real gate
    # the command, with the same figures
    out = tmp_path / "p"
    from predictors.store import save_predictors

    save_predictors(list(preds.values()), out)
    assert main(["explain-gates", "--cache", str(synth_cache.path), "--predictors", str(out), "--profile",
                 "jetson-nano", "--out", str(tmp_path / "eg")]) == 0
    text = capsys.readouterr().out
    assert "when a gate pays" in text and "- exit 0 (reached by 100 %" in text and "- exit 1" in text
    assert (tmp_path / "eg" / "breakeven.csv").exists() and (tmp_path / "eg" / "gate_map.png").exists()
