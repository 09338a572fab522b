"""One unit for accuracy settings (percent; drops in points) with the old fractions read for one version, and one
default device profile for every command, config and function."""
import inspect
import warnings

import numpy as np
import pandas as pd
import pytest

from analysis.cli import main
from analysis.core.costs import DEFAULT_PROFILE
from analysis.core.policies import PolicyConfig


# ----------------------------------------------------------------------------- the API: percent, fractions warned
def test_target_acc_is_percent_and_an_old_fraction_is_read_with_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # percent: no warning
        assert PolicyConfig().target_acc == 99.0
        assert PolicyConfig(target_acc=99).target_acc == 99
        assert PolicyConfig(target_acc=1.5).target_acc == 1.5  # > 1: percent
        assert PolicyConfig(target_acc=None).target_acc is None
    with pytest.warns(FutureWarning, match=r"^target_acc 0\.99 read as a fraction \(99 %\); give percent: 99 \(a "
                                           r"fraction is read until 0\.4\)$"):
        assert PolicyConfig(target_acc=0.99).target_acc == pytest.approx(99.0)
    with pytest.warns(FutureWarning, match=r"target_acc 1 read as a fraction \(100 %\)"):
        assert PolicyConfig(target_acc=1).target_acc == 100  # an accuracy target of 1 % means nothing: 1 is 100 %
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converted once: copies and the saved value do not warn again
        from dataclasses import replace

        assert replace(PolicyConfig(target_acc=99.0), patience=2).target_acc == 99.0


@pytest.mark.parametrize("bad", [150, 100.5, 0, -0.2, float("nan"), "99"])
def test_target_acc_out_of_range_is_refused_in_percent(bad):
    with pytest.raises(ValueError, match=r"target_acc must be a finite number in \(0, 100\] \(an accuracy in percent, "
                                         r"e\.g\. 99 for 99 %\)"):
        PolicyConfig(target_acc=bad)


def test_a_study_config_reads_percent_and_still_reads_a_fraction(tmp_path):
    from branchy.core import ConfigError, from_mapping

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert from_mapping(PolicyConfig, {"target_acc": 99}, "policies").target_acc == 99
    with pytest.warns(FutureWarning, match="target_acc 0.95 read as a fraction"):
        assert from_mapping(PolicyConfig, {"target_acc": 0.95}, "policies").target_acc == pytest.approx(95)
    with pytest.raises(ConfigError, match=r"policies: target_acc must be a finite number in \(0, 100\]"):
        from_mapping(PolicyConfig, {"target_acc": 150}, "policies")


def test_calib_rule_takes_percent_and_reads_a_fraction_the_same(synth_cache):
    from analysis.core.calibrate import calib_rule, how_target, target_how

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rule = calib_rule(synth_cache, 95)
    assert rule.tuned_by == "target-acc 95% sequential" and how_target(rule.tuned_by) == 95
    with pytest.warns(FutureWarning, match=r"target 0\.95 read as a fraction \(95 %\); give percent: 95"):
        old = calib_rule(synth_cache, 0.95)
    assert old.thresholds == rule.thresholds and old.tuned_by == rule.tuned_by
    assert calib_rule(synth_cache).tuned_by == "target-acc final exit's sequential"
    with pytest.raises(ValueError, match=r"target must be a finite number in \(0, 100\]"):
        calib_rule(synth_cache, 120)
    # a rule's description, written now or before 0.3 (a fraction), gives the target in percent
    assert how_target("target-acc 0.99 sequential") == pytest.approx(99)
    assert how_target(target_how(92.5) + " (kept exits)") == 92.5
    assert how_target("budgeted p=0.5") is None and how_target("target-acc final exit's sequential") is None


# ----------------------------------------------------------------------------- the command line: a one-line note
def _parse(command: str, *argv: str):
    """Parse as ``main`` does, with the notes on fractions; returns the namespace."""
    from analysis.cli.base import _note_fractions, build_parser

    parser = build_parser(only=command, full=False)
    need = ["--cache", "c", "--out", "o"] + (["--predictors", "p"] if command == "place" else [])
    a = parser.parse_args([command, *argv, *need])
    _note_fractions(parser, command, a)
    return a


@pytest.mark.parametrize("command", ["fit-predictors", "simulate", "place", "explain-gates"])
def test_target_acc_on_the_command_line_is_percent_a_fraction_noted_once(command, capsys):
    from branchy.core import from_arguments

    a = _parse(command, "--target-acc", "99")
    assert capsys.readouterr().err == ""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert from_arguments(PolicyConfig, a).target_acc == 99
    a = _parse(command, "--target-acc", "0.99")
    assert capsys.readouterr().err == (f"branchy {command}: note: --target-acc 0.99 read as a fraction (99 %); give "
                                       f"percent: 99 (a fraction is read until 0.4)\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the note replaces the API's warning: said once
        assert from_arguments(PolicyConfig, a).target_acc == pytest.approx(99)
    assert _parse(command, "--target-acc", "none") is not None and capsys.readouterr().err == ""


def test_false_skip_is_percent_a_fraction_noted(capsys):
    assert _parse("explain-gates").false_skip == 2.0  # the default: 2 %
    assert _parse("explain-gates", "--false-skip", "5").false_skip == 5.0
    assert _parse("explain-gates", "--false-skip", "1").false_skip == 1.0  # a rate of 1 % is a setting: not a fraction
    assert _parse("explain-gates", "--false-skip", "0").false_skip == 0.0
    assert capsys.readouterr().err == ""
    assert _parse("explain-gates", "--false-skip", "0.02").false_skip == pytest.approx(2.0)
    assert capsys.readouterr().err == ("branchy explain-gates: note: --false-skip 0.02 read as a fraction (2 %); give "
                                       "percent: 2 (a fraction is read until 0.4)\n")


@pytest.mark.parametrize("argv, phrase", [
    (["simulate", "--target-acc", "150"], "--target-acc: target_acc must be a finite number in (0, 100] (an accuracy "
                                          "in percent, e.g. 99 for 99 %), got 150.0"),
    (["simulate", "--target-acc", "0"], "in (0, 100]"),
    (["explain-gates", "--false-skip", "101"], "argument --false-skip: 101 is out of range: must be >= 0 and <= 100 "
                                               "(percent of the samples, e.g. 2 for 2 %)"),
    (["explain-gates", "--false-skip", "-1"], "must be >= 0 and <= 100"),
])
def test_out_of_range_percent_is_a_one_line_usage_error(argv, phrase, capsys):
    try:
        rc = main(argv + ["--cache", "c", "--out", "o"])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and phrase in err and err.count("\n") == 1, err


def test_explain_gates_reads_false_skip_in_percent(synth_cache, tmp_path, capsys):
    """``--false-skip 5`` and the old ``--false-skip 0.05`` give the same figures; the table's column says 5 %."""
    assert main(["explain-gates", "--cache", str(synth_cache.path), "--false-skip", "5", "--out",
                 str(tmp_path / "a")]) == 0
    new = capsys.readouterr()
    assert main(["explain-gates", "--cache", str(synth_cache.path), "--false-skip", "0.05", "--out",
                 str(tmp_path / "b")]) == 0
    old = capsys.readouterr()
    assert "while wrongly skipping <= 5 %" in new.out and new.out.replace(f"{tmp_path}/a", f"{tmp_path}/b") == old.out
    assert "--false-skip 0.05 read as a fraction (5 %)" in old.err
    df = pd.read_csv(tmp_path / "a" / "breakeven.csv")
    assert {"reach_%", "accept_%", "max_cost_ms_fs5%", "acc_change_pts"} <= set(df.columns)
    assert not any(c.endswith("_pct") for c in df.columns)


def test_break_even_rows_read_from_old_and_new_files(synth_cache):
    from analysis.core.breakeven import BreakEven, break_even_table
    from analysis.core.evidence import Evidence
    from analysis.core.policies import calibrate

    ev = Evidence.build(synth_cache, "calib")
    table = break_even_table(ev, calibrate(synth_cache, PolicyConfig()))
    assert "reach_%" in table.columns and "max_cost_ms_fs2%" in table.columns
    new = [BreakEven.from_row(r) for _, r in table.iterrows()]
    old_file = table.rename(columns={"reach_%": "reach_pct", "accept_%": "accept_pct"})  # written before 0.3
    assert [BreakEven.from_row(r) for _, r in old_file.iterrows()] == new
    assert new[0].row()["reach_%"] == new[0].reach_pct


# ----------------------------------------------------------------------------- one default device profile
def test_every_command_and_config_defaults_to_the_one_profile(synth_cache, tmp_path, monkeypatch):
    from branchy.core import from_arguments

    from analysis.study import outputs
    from analysis.study.config import StudyConfig
    from analysis.study.placement_config import PlacementConfig

    assert DEFAULT_PROFILE == "measured"
    assert PlacementConfig().profile == DEFAULT_PROFILE
    assert from_arguments(PlacementConfig, _parse("place")).profile == DEFAULT_PROFILE
    assert _parse("explain-gates").profile == DEFAULT_PROFILE
    assert StudyConfig.__dataclass_fields__["profiles"].default[0] == DEFAULT_PROFILE
    seen = {}
    monkeypatch.setattr(outputs, "simulate_to", lambda cache, out, **kw: seen.update(kw))
    assert main(["simulate", "--cache", str(synth_cache.path), "--out", str(tmp_path / "s")]) == 0
    assert seen["profiles"] == [DEFAULT_PROFILE]


def test_every_function_defaults_to_the_one_profile():
    from analysis.core.chunked import simulate_chunked
    from analysis.core.costs import CostModel, measured_cost_models
    from analysis.core.evidence import Evidence
    from analysis.study.compare import pareto_points, run_policies, study_policies
    from analysis.study.placement_study import PlacementObjective, run_placement

    for fn in (CostModel.from_cache, measured_cost_models, Evidence.build, simulate_chunked, study_policies,
               run_policies, pareto_points, PlacementObjective, run_placement):
        assert inspect.signature(fn).parameters["profile"].default == DEFAULT_PROFILE, fn


def test_a_cache_without_measured_latency_says_which_profile_to_pass(tmp_path):
    from analysis.core.costs import CostModel, analytic_profiles
    from branchy.cache import cache_from_arrays, cost_table
    from tests.helpers import refused, synthetic_arrays

    counted = cache_from_arrays(tmp_path / "macs", synthetic_arrays(n=(20, 20, 20)),
                                costs=cost_table(3, stage_macs=2e6, exit_macs=1e5))
    msg = refused(ValueError, "has no measured latency for profile 'measured'", CostModel.from_cache, counted)
    assert "pass an analytic profile instead, --device-profile NAME (or profile=NAME)" in msg
    assert "raspberry-pi-4" in analytic_profiles() and not any(n.startswith("measured") for n in analytic_profiles())
    assert all(n in msg for n in analytic_profiles()) and "measured-" not in msg
    assert np.all(CostModel.from_cache(counted, "raspberry-pi-4").stage_ms > 0)
