"""The command line: every subcommand's help, and simulate, fit-predictors and place end to end."""
import pandas as pd
import pytest

from analysis.cli import main


def test_simulate_cli(synth_cache, tmp_path, capsys):
    rc = main(["simulate", "--cache", str(synth_cache.path), "--profile", "raspberry-pi-4", "--bootstrap", "20",
               "--out", str(tmp_path / "sim")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "cascade" in out and "oracle" in out
    df = pd.read_csv(tmp_path / "sim" / "summary.csv")
    assert set(df.policy) == {"full", "cascade", "patience", "matched-oracle", "oracle"}
    assert (tmp_path / "sim" / "pareto_raspberry-pi-4.png").exists()
    assert main(["simulate", "--cache", str(synth_cache.path), "--profile", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown device profile 'nope'" in capsys.readouterr().err
    assert main(["simulate", "--cache", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "branchy dump" in capsys.readouterr().err


def test_every_subcommand_has_help(capsys):
    from analysis.cli import COMMANDS

    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "usage: branchy " + name in capsys.readouterr().out
    assert main(["models"]) == 0 and "b-resnet" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # a usage error, before anything runs
        main(["train", "--model", "b-vgg", "--out", "x"])
    assert e.value.code == 2 and "--model: unknown value 'b-vgg'; known: b-alexnet" in capsys.readouterr().err


LIGHT = ("torch", "pandas", "sklearn", "scipy", "matplotlib")


def _fresh(code: str) -> str:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_help_and_a_usage_error_import_nothing_heavy():
    """``branchy --help``, ``--version`` and an unknown command build no command's options, so they import none of
    torch, pandas, scikit-learn, scipy, matplotlib (what makes a start take seconds); a ``simulate`` error needs
    pandas, not torch."""
    heavy = ("import sys\nfrom analysis.cli import main\n"
             "for argv in ({argv}):\n"
             "    try:\n        main(list(argv))\n    except SystemExit:\n        pass\n"
             f"print(sorted(m for m in {LIGHT!r} if m in sys.modules))")
    assert _fresh(heavy.format(argv="['--help'], ['--version'], ['nosuch']")).strip().endswith("[]")
    assert _fresh(heavy.format(argv="['simulate', '--cache', 'c', '--out', 'o', '--target-acc', '150'],")) \
        .strip().endswith("['pandas']")


def test_version_and_python_dash_m(capsys):
    import subprocess
    import sys

    import branchy

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("branchy-study ")
    out = subprocess.run([sys.executable, "-m", "branchy", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split()[0] == "branchy-study", out.stderr
    assert out.stdout.split()[1] == branchy.__version__  # the distribution's version is the package's (setup.cfg)


def test_fit_predictors_and_place_cli(synth_cache, tmp_path, capsys):
    assert main(["fit-predictors", "--cache", str(synth_cache.path), "--target", "gate", "--model", "linear",
                 "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "gate_at0_for0_linear" in out and "false_enter" in out
    assert main(["fit-predictors", "--cache", str(synth_cache.path), "--target", "exit", "--model", "linear",
                 "--out", str(tmp_path / "p")]) == 0
    assert main(["fit-predictors", "--cache", str(synth_cache.path), "--target", "exit", "--fit-split", "test",
                 "--out", str(tmp_path / "q")]) == 2
    assert "test split is refused" in capsys.readouterr().err
    assert main(["place", "--cache", str(synth_cache.path), "--predictors", str(tmp_path / "p"), "--strategy",
                 "exhaustive", "--profile", "jetson-nano", "--out", str(tmp_path / "pl")]) == 0
    assert "chosen:" in capsys.readouterr().out
    from placement import Placement

    chosen = Placement.load(tmp_path / "pl" / "placement.json")
    assert chosen.num_exits == 3
    assert (tmp_path / "pl" / "placement_map.png").exists() and (tmp_path / "pl" / "candidates.csv").exists()
    import json

    plan = json.loads((tmp_path / "pl" / "plan.json").read_text())  # the decision that runs it, standard JSON
    assert plan["describe"] == chosen.describe() and len(plan["rule"]["thresholds"]) == 3
    assert plan["kept"][-1] and plan["rule"]["tuned_on"] == "calib" and plan["pooling"]
    json.dumps(plan, allow_nan=False)


@pytest.mark.parametrize("command,new,old,value", [
    ("train", "--backbone", "--model", "b-resnet"),
    ("fit-predictors", "--predictor-model", "--model", "linear"),
    ("simulate", "--device-profile", "--profile", "mcu-npu"),
    ("place", "--device-profile", "--profile", "mcu-npu"),
    ("explain-gates", "--device-profile", "--profile", "mcu-npu"),
])
def test_renamed_options_keep_their_old_name_for_one_version(command, new, old, value, capsys):
    from analysis.cli.base import _note_renamed, build_parser

    parser = build_parser(only=command, full=False)
    need = (["--cache", "c"] if command != "train" else []) + ["--out", "o"] + \
        (["--predictors", "p"] if command == "place" else [])
    a_new = parser.parse_args([command, new, value] + need)
    a_old = parser.parse_args([command, old, value] + need)
    assert vars(a_new) == vars(a_old)
    _note_renamed(parser, command, [command, old, value])
    assert capsys.readouterr().err == f"branchy {command}: note: {old} is now {new} (the old name works until 0.4)\n"
    _note_renamed(parser, command, [command, new, value])
    assert capsys.readouterr().err == ""


def test_unknown_names_and_keys_say_the_closest_known_one(capsys):
    from branchy.core import ConfigError, from_mapping
    from branchy.models import BACKBONES, BackboneConfig
    from branchy.train import TrainConfig

    with pytest.raises(KeyError, match=r"unknown model 'b-lenett'; known: .* \(did you mean 'b-lenet'\?\)"):
        BACKBONES.get("b-lenett")
    with pytest.raises(ConfigError, match=r"train: unknown field\(s\) \['epoch'\]; known: .* \(did you mean 'epochs' "
                                          r"for 'epoch'\?\)"):
        from_mapping(TrainConfig, {"epoch": 3}, "train")
    with pytest.raises(SystemExit):
        main(["train", "--backbone", "b-resnett", "--out", "x"])
    assert "(did you mean 'b-resnet' for 'b-resnett'?)" in capsys.readouterr().err
    assert BackboneConfig("b-lenet").name == "b-lenet"


def test_suite_takes_out(tmp_path):
    from analysis.cli.base import build_parser

    a = build_parser(only="suite", full=False).parse_args(["suite", "s.yaml", "--out", str(tmp_path)])
    assert a.out == str(tmp_path)


def test_the_study_log_is_a_logger_seen_by_default_and_silenced_by_quiet(caplog):
    import logging
    import warnings

    from analysis.cli.base import _setup_output
    from analysis.study.steps import log, start_clock

    # a fresh process that configured nothing sees the log lines on stderr
    out = __import__("subprocess").run([__import__("sys").executable, "-c",
                                        "from analysis.study.steps import start_clock, log; start_clock(); log('hello')"],
                                       capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr.strip() == "[study +0 s] hello" and out.stdout == "", out.stderr
    start_clock()
    with caplog.at_level(logging.INFO, logger="branchy"):
        log("a step")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [("branchy.study", logging.INFO,
                                                                              "[study +0 s] a step")]
    top, fmt = logging.getLogger("branchy"), warnings.formatwarning
    level = top.level
    restore = _setup_output(quiet=True, verbose=False, debug=False)
    assert top.level == logging.WARNING and not top.isEnabledFor(logging.INFO)
    assert warnings.formatwarning("boom", UserWarning, "x.py", 3) == "branchy: warning: boom\n"  # one line, no source
    restore()
    assert top.level == level and warnings.formatwarning is fmt
    restore = _setup_output(quiet=False, verbose=True, debug=True)
    assert top.isEnabledFor(logging.DEBUG) and warnings.formatwarning is fmt  # --debug keeps the source line
    restore()
