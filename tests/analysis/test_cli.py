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

    assert Placement.load(tmp_path / "pl" / "placement.json").num_exits == 3
    assert (tmp_path / "pl" / "placement_map.png").exists() and (tmp_path / "pl" / "candidates.csv").exists()
