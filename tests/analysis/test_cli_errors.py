"""Bad input on the command line, in a study YAML and in a device profile: one line that names what is wrong
and how to fix it, before any work starts; never a traceback (except with --debug)."""
import json

import pytest

from analysis.cli import main
from analysis.core.costs import load_profile_file, profile_from_dict
from analysis.study.config import StudyConfigError, parse_study

GOOD_PROFILE = {"name": "dev", "macs_per_s": 1e9, "bytes_per_s": 1e9}


def _run(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


@pytest.mark.parametrize("args, phrase", [
    (["simulate", "--target-acc", "150"], "--target-acc: target_acc must be a finite number in (0, 100]"),
    (["simulate", "--target-acc", "-0.2"], "in (0, 100] (an accuracy in percent, e.g. 99 for 99 %), got -0.2"),
    (["explain-gates", "--cache", "c", "--false-skip", "150"],
     "--false-skip: 150 is out of range: must be >= 0 and <= 100 (percent of the samples, e.g. 2 for 2 %)"),
    (["simulate", "--bootstrap", "-1"], "--bootstrap: bootstrap must be a whole number >= 0, got -1"),
    (["simulate", "--max-acc-drop", "nan", "--risk", "0.1"], "argument --max-acc-drop: nan is not a finite number"),
    (["simulate", "--risk", "1.5", "--max-acc-drop", "1"], "--risk: risk must be a finite number in (0, 1) (a probability), got 1.5"),
    (["simulate", "--patience", "0"], "--patience: patience must be a whole number >= 1, got 0"),
    (["fit-predictors", "--cache", "c", "--target", "gate", "--out", "o", "--thresholds", "0.5,abc"],
     "is not a list of numbers"),
    (["dump", "--checkpoint", "m.pt", "--out", "x", "--profile-time", "-1"], "--profile-time: profile_time must be a finite number of seconds > 0"),
    (["dump", "--checkpoint", "m.pt", "--out", "x", "--batch-size", "0"], "--batch-size: batch_size must be a whole number >= 1, got 0"),
    (["train", "--out", "x", "--augment-shift", "-3"], "--augment-shift: augment_shift must be a whole number >= 0, got -3"),
    (["train", "--out", "x", "--epochs", "2.5"], "--epochs: '2.5' is not an integer"),
    (["train", "--out", "x", "--lr", "0"], "--lr: lr must be a finite number > 0"),
    (["train", "--out", "x", "--exits", "a,b"], "argument --exits: 'a' is not an integer"),
    (["profile", "--cache", "c", "--rounds", "2"], "--rounds: 2 is out of range: must be >= 3"),
    (["profile", "--cache", "c", "--threads", "0"], "--threads: 0 is out of range"),
    (["validate", "--run", "r", "--n", "0"], "--n: 0 is out of range"),
    (["place", "--cache", "c", "--predictors", "p", "--strategy", "greedy", "--latency-budget", "-2",
      "--out", "o"], "latency_budget must be > 0 ms, got -2.0"),
])
def test_bad_numbers_are_usage_errors(args, phrase, capsys):
    if args[0] == "simulate":
        args = args + ["--cache", "c", "--out", "o"]
    rc, err = _run(args, capsys)
    assert rc == 2 and phrase in err, err


@pytest.mark.parametrize("at, fors, phrase", [
    ("7", None, "--at 7: a predictor sits after a stage that has a side exit after it, 0..1"),
    ("0", "5", "--for 5: gates and entropy predictors are for side exits, 0..1"),
    ("1", "0", "no gate predictor to fit: every --for exit lies before its --at stage"),
])
def test_fit_predictors_out_of_range_positions_fail_before_fitting(synth_cache, tmp_path, capsys, at, fors, phrase):
    args = ["fit-predictors", "--cache", str(synth_cache.path), "--target", "gate", "--at", at,
            "--out", str(tmp_path / "p")]
    rc, err = _run(args + (["--for", fors] if fors else []), capsys)
    assert rc == 2 and phrase in err, err
    assert not (tmp_path / "p").exists()


def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    rc, err = _run(["cache-info", "--cache", str(tmp_path / "missing")], capsys)
    assert rc == 2 and err.count("\n") == 1 and "no feature cache" in err and "branchy dump" in err
    with pytest.raises(Exception, match="no feature cache"):
        main(["--debug", "cache-info", "--cache", str(tmp_path / "missing")])


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    from analysis import cli

    def interrupted(a):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "models", (cli.COMMANDS["models"][0], interrupted, "x"))
    rc, err = _run(["models"], capsys)
    assert rc == 130 and "interrupted" in err and err.count("\n") == 1


def test_an_unexpected_error_says_it_is_a_bug(monkeypatch, capsys):
    from analysis import cli

    def broken(a):
        return {}["nope"]

    monkeypatch.setitem(cli.COMMANDS, "models", (cli.COMMANDS["models"][0], broken, "x"))
    rc, err = _run(["models"], capsys)
    assert rc == 1 and "internal error (KeyError" in err and "--debug" in err


@pytest.mark.parametrize("args, code, phrase", [
    (["train", "--out", "OUT", "--device", "tpu"], 2,
     "branchy train: error: --device: device must be one of auto, cpu, cuda, cuda:N (N a GPU index) or mps"),
    (["dump", "--checkpoint", "m.pt", "--out", "OUT", "--device", "tpu"], 2,
     "branchy dump: error: --device: device must be one of auto, cpu, cuda, cuda:N"),
    (["profile", "--cache", "OUT", "--device", "cuda:x"], 2, "argument --device: device must be one of auto, cpu"),
    (["fit-predictors", "--cache", "c", "--out", "OUT", "--target", "exit", "--calibration", "sigmoid"], 2,
     "--calibration: calibration maps a gate's probability; target exit has none (calibrate gates only)"),
    (["fit-predictors", "--cache", "c", "--out", "OUT", "--target", "entropy", "--calibration", "isotonic"], 2,
     "target entropy has none (calibrate gates only)"),
    (["train"], 2, "branchy train: error: the following arguments are required: --out; see `branchy train --help`"),
    (["simulate", "--cache", "c", "--out", "OUT", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["no-such-command"], 2, "branchy: error: argument COMMAND: invalid choice: 'no-such-command'"),
])
def test_bad_inputs_are_one_line_errors_before_any_work(tmp_path, capsys, args, code, phrase):
    """Regressions: --device tpu was an internal error (torch.device's error escaped); --calibration with no
    gate target was dropped silently; argparse printed its whole usage block before the error."""
    out = tmp_path / "out"
    rc, err = _run([str(out) if a == "OUT" else a for a in args], capsys)
    assert rc == code and phrase in err, err
    assert err.count("\n") == 1 and "usage:" not in err, err
    assert not out.exists()


# ----------------------------------------------------------------------------- study YAML
BASE = {"data": {"dataset": "mnist5k"}, "model": {"name": "b-lenet"}}


def _study(**sections):
    raw = json.loads(json.dumps(BASE))
    for k, v in sections.items():
        if isinstance(v, dict):
            raw.setdefault(k, {}).update(v)
        else:
            raw[k] = v
    return raw


def test_yaml_numbers_written_as_strings_and_scalars_for_lists_are_read_as_meant():
    cfg = parse_study(_study(train={"lr": "3e-3", "epochs": "4"}, profiles="measured"))
    assert cfg.train.lr == 0.003 and cfg.train.epochs == 4 and cfg.profiles == ("measured",)


@pytest.mark.parametrize("sections, phrase", [
    ({"train": {"lr": "fast"}}, "train.lr: expected a number, got 'fast'"),
    ({"train": {"epochs": 2.5}}, "train.epochs: expected an integer, got 2.5"),
    ({"train": {"epochs": True}}, "train.epochs: expected an integer, got True"),
    ({"train": {"epochs": float("inf")}}, "train.epochs: expected a finite number, got inf"),
    ({"train": {"epochs": float("nan")}}, "train.epochs: expected a finite number, got nan"),
    ({"train": {"exit_weights": [1.0, float("nan")]}}, "train.exit_weights[1]: expected a finite number"),
    ({"policies": {"bootstrap": -1}}, "policies: bootstrap must be a whole number >= 0, got -1"),
    ({"policies": {"overlap": "yes please"}}, "policies.overlap: expected true or false"),
    ({"dump": {"profile_time": -1}}, "dump: profile_time must be a finite number of seconds > 0"),
    ({"dump": {"feature_dtype": "int8"}}, "dump: feature_dtype must be one of float16"),
    ({"profiles": {"a": 1}}, "profiles: expected a list"),
    ({"profiles": ["nope"]}, "profiles:"),
    ({"model": {"name": 3}}, "model.name: expected a string, got 3"),
])
def test_bad_study_values_name_the_field(sections, phrase):
    with pytest.raises(StudyConfigError) as e:
        parse_study(_study(**sections))
    assert phrase in str(e.value)


@pytest.mark.parametrize("data", [{}, {"root": "data"}, None])
def test_a_study_must_name_its_dataset(tmp_path, capsys, data):
    """Regression: a data section without ``dataset`` ran the whole study on mnist5k."""
    with pytest.raises(StudyConfigError, match=r"data\.dataset is missing: name the dataset"):
        parse_study({**BASE, "data": data})
    import yaml

    f = tmp_path / "study.yaml"
    f.write_text(yaml.safe_dump({**BASE, "data": data, "out": str(tmp_path / "run")}))
    rc, err = _run(["run", str(f)], capsys)
    assert rc == 2 and "data.dataset is missing" in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- suite YAML
SUITE = {"backbones": {"b-lenet": {"model": {"exits": [0]}}}, "datasets": {"clean": {"dataset": "mnist5k"}},
         "schemes": {"joint": {}}, "profiles": ["raspberry-pi-4"]}


@pytest.mark.parametrize("changes, phrase", [
    ({"profiles": []}, "profiles: name at least one device profile"),
    ({"backbones": {"../evil": {"model": {"name": "b-lenet"}}}}, "backbones: key '../evil' names a study folder"),
    ({"backbones": {"b/lenet": {"model": {"name": "b-lenet"}}}}, "backbones: key 'b/lenet'"),
    ({"backbones": {".hidden": {"model": {"name": "b-lenet"}}}}, "backbones: key '.hidden'"),
    ({"datasets": {"a/../../b": {"dataset": "mnist5k"}}}, "datasets: key 'a/../../b'"),
    ({"datasets": {"clean data": {"dataset": "mnist5k"}}}, "datasets: key 'clean data'"),
    ({"schemes": {"joint/x": {}}}, "schemes: key 'joint/x'"),
    ({"datasets": {"clean": {"root": "data"}}}, "datasets.clean.dataset is missing"),
])
def test_bad_suites_are_refused_before_any_work(tmp_path, capsys, changes, phrase):
    import yaml

    from analysis.study.suite import SuiteConfig
    from branchy.core import ConfigError, from_mapping

    raw = {**SUITE, "out": str(tmp_path / "suite" / "out"), **changes}
    with pytest.raises(ConfigError) as e:
        from_mapping(SuiteConfig, raw, "")
    assert phrase in str(e.value) and "\n" not in str(e.value), str(e.value)
    f = tmp_path / "suite.yaml"
    f.write_text(yaml.safe_dump(raw))
    rc, err = _run(["suite", str(f)], capsys)
    assert rc == 2 and phrase in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["suite.yaml"]  # nothing written, in or out of the suite


def test_safe_suite_keys_are_accepted(tmp_path):
    from analysis.study.suite import SuiteConfig
    from branchy.core import from_mapping

    raw = {**SUITE, "out": str(tmp_path), "datasets": {"mnist5k-c.v2+x": {"dataset": "mnist5k-c"}}}
    assert [k for k, _ in from_mapping(SuiteConfig, raw, "").studies()] == ["b-lenet/mnist5k-c.v2+x/joint"]


# ----------------------------------------------------------------------------- device profiles
@pytest.mark.parametrize("extra, phrase", [
    ({"onchip_bytes": -1}, "onchip_bytes must be a finite number >= 0, got -1"),
    ({"spill_bytes_per_s": -5}, "spill_bytes_per_s must be a finite number > 0, got -5"),
    ({"overhead_ms": "nan"}, "overhead_ms must be a finite number >= 0"),
    ({"macs_per_s": "lots"}, "macs_per_s must be a number, got 'lots'"),
    ({"name": "measured"}, "reserved for the cache's own timings"),
    ({"name": "measured-onnxruntime"}, "reserved"),
    ({"name": "../../x"}, "must be letters, digits"),
    ({"color": "red"}, "unknown profile field(s) ['color']"),
])
def test_bad_device_profiles_are_refused(extra, phrase):
    with pytest.raises(ValueError) as e:
        profile_from_dict({**GOOD_PROFILE, **extra}, "dev.json")
    assert phrase in str(e.value) and str(e.value).startswith("dev.json")


@pytest.mark.parametrize("name, text, phrase", [
    ("p.yaml", "name: [unclosed", "not valid YAML"),
    ("p.json", '{"name": "dev", "macs_per_s": 1e9,', "not valid JSON"),
    ("p.json", "[1, 2]", "holds one mapping of fields"),
])
def test_malformed_profile_files_name_the_file(tmp_path, name, text, phrase):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(ValueError) as e:
        load_profile_file(f)
    assert phrase in str(e.value) and str(f) in str(e.value)


@pytest.mark.parametrize("cmd", ["fit-predictors", "simulate", "place"])
def test_an_output_under_a_file_fails_before_any_work(synth_cache, tmp_path, capsys, monkeypatch, cmd):
    from branchy.cache import FeatureCache

    opened = []
    monkeypatch.setattr(FeatureCache, "open", classmethod(lambda cls, *a, **k: opened.append(a) or 1 / 0))
    (tmp_path / "notes.txt").write_text("x")
    out = str(tmp_path / "notes.txt" / "out")
    args = {"fit-predictors": ["--target", "gate"], "simulate": [],
            "place": ["--predictors", "p", "--strategy", "greedy"]}[cmd]
    rc, err = _run([cmd, "--cache", str(synth_cache.path), *args, "--out", out], capsys)
    assert rc == 2 and "is under the file" in err and not opened, err
