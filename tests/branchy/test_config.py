"""Configs defined once: each library config is read from YAML, from the command line and by the API with the same
defaults and the same checks; a new field appears in all three at once."""
import argparse
from dataclasses import MISSING, dataclass, fields

import pytest

from analysis.cli import build_parser
from analysis.study.placement_config import PlacementConfig
from analysis.core.policies import PolicyConfig
from analysis.study.config import StudyConfig
from branchy.core import ConfigError, add_arguments, from_arguments, from_mapping, setting, to_plain
from branchy.data import DataConfig, load_dataset
from branchy.cache import DumpConfig
from branchy.models import BackboneConfig
from branchy.train import TrainConfig
from predictors.grid import PredictorsConfig

# which command exposes which config (every field with a flag must be on one of them)
COMMANDS = {DataConfig: "train", BackboneConfig: "train", TrainConfig: "train", DumpConfig: "dump",
            PredictorsConfig: "fit-predictors", PolicyConfig: "simulate", PlacementConfig: "place"}
SECTIONS = {DataConfig: "data", BackboneConfig: "model", TrainConfig: "train", DumpConfig: "dump",
            PredictorsConfig: "predictors", PolicyConfig: "policies", PlacementConfig: "placement"}
REQUIRED = ["--cache", "c", "--out", "o", "--predictors", "p", "--checkpoint", "m.pt"]


def _parse(command: str, *extra: str) -> argparse.Namespace:
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    known = {o for a in sub._actions for o in a.option_strings}
    need = [v for flag, v in zip(REQUIRED[::2], REQUIRED[1::2]) if flag in known for v in (flag, v)]
    return sub.parse_args(need + list(extra))


@pytest.mark.parametrize("cls", list(COMMANDS), ids=lambda c: c.__name__)
def test_one_default_for_api_yaml_and_cli(cls):
    api = cls()
    assert from_mapping(cls, {}, SECTIONS[cls]) == api  # an empty YAML section
    assert from_arguments(cls, _parse(COMMANDS[cls])) == api  # no option given
    assert from_mapping(cls, to_plain(api), SECTIONS[cls]) == api  # what a study writes reads back
    study_field = {f.name: f for f in fields(StudyConfig)}[SECTIONS[cls]]
    if study_field.default is not MISSING:  # data and model are required sections
        assert getattr(StudyConfig(DataConfig(), BackboneConfig()), SECTIONS[cls]) == api


@pytest.mark.parametrize("cls", list(COMMANDS), ids=lambda c: c.__name__)
def test_every_field_is_a_yaml_key_and_a_cli_option(cls):
    parser = build_parser()._subparsers._group_actions[0].choices[COMMANDS[cls]]
    dests = {a.dest for a in parser._actions}
    for f in fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
        assert f"{cls.__name__}.{f.name}" in dests, f"{cls.__name__}.{f.name} is not an option of {COMMANDS[cls]}"
    with pytest.raises(ConfigError, match=rf"{SECTIONS[cls]}: unknown field\(s\) \['nope'\]"):
        from_mapping(cls, {"nope": 1}, SECTIONS[cls])


def test_cli_values_override_and_are_checked_by_the_same_class():
    a = _parse("train", "--epochs", "3", "--lr", "1e-3", "--exits", "0,1", "--option", "depth=8", "--model",
               "b-resnet", "--data-option", "sizes=[30, 10, 10]", "--no-download", "--exit-weights", "1,0.5,1")
    assert from_arguments(TrainConfig, a) == TrainConfig(epochs=3, lr=1e-3, exit_weights=(1.0, 0.5, 1.0))
    assert from_arguments(BackboneConfig, a) == BackboneConfig("b-resnet", exits=(0, 1), options={"depth": 8})
    assert from_arguments(DataConfig, a).options == {"sizes": [30, 10, 10]}
    with pytest.raises(ConfigError, match="--epochs: epochs must be a whole number >= 1, got 0"):
        from_arguments(TrainConfig, _parse("train", "--epochs", "0"))
    base = DataConfig("mnist5k", seed=3)  # dump: the checkpoint's data, with what is given on top
    assert from_arguments(DataConfig, _parse("dump", "--data-seed", "4"), base=base) == DataConfig(seed=4)
    assert from_arguments(DataConfig, _parse("dump"), base=base) == base
    pol = from_arguments(PolicyConfig, _parse("simulate", "--target-acc", "none", "--overlap"))
    assert pol.target_acc is None and pol.overlap
    assert from_arguments(PlacementConfig, _parse("place", "--strategy", "greedy,budget")).strategies == \
        ("greedy", "budget")


def test_a_new_field_appears_in_yaml_cli_and_api_at_once():
    @dataclass(frozen=True)
    class Knobs:
        depth: int = setting(3, "how deep")
        rate: float | None = setting(None, "how fast")
        names: tuple[str, ...] = setting(("a",), "which", choices=lambda: ["a", "b", "c"])
        fancy: bool = setting(False, "fancy or not")
        extra: dict = setting({}, "anything else", cli="--extra-option")
        hidden: str = setting("x", "not on the command line", cli=False)

        def __post_init__(self):
            if self.depth < 1:
                raise ValueError(f"depth must be >= 1, got {self.depth}")

    p = argparse.ArgumentParser()
    add_arguments(p, Knobs)
    a = p.parse_args(["--depth", "5", "--rate", "0.5", "--names", "b,c", "--fancy", "--extra-option", "k=2"])
    want = Knobs(5, 0.5, ("b", "c"), True, {"k": 2})
    assert from_arguments(Knobs, a) == want
    assert from_mapping(Knobs, {"depth": "5", "rate": 0.5, "names": ["b", "c"], "fancy": True, "extra": {"k": 2}},
                        "knobs") == want
    assert "--hidden" not in p.format_help() and "how deep (default: 3)" in p.format_help()
    with pytest.raises(SystemExit):
        p.parse_args(["--names", "d"])  # choices checked per item
    with pytest.raises(ConfigError, match="knobs: depth must be >= 1, got 0"):
        from_mapping(Knobs, {"depth": 0}, "knobs")
    with pytest.raises(ConfigError, match="knobs.fancy: expected true or false"):
        from_mapping(Knobs, {"fancy": "yes"}, "knobs")


def test_loaders_refuse_options_they_do_not_take():
    with pytest.raises(ValueError, match="dataset mnist5k takes no option root; its options: seed, sizes"):
        load_dataset("mnist5k", root="data")
    with pytest.raises(ValueError, match="dataset cifar10 has no option sizes; its options: root, download, seed, "
                                         "calib_size"):
        DataConfig("cifar10", options={"sizes": (1, 2, 3)})
    assert DataConfig("mnist5k", options={"sizes": (30, 10, 10)}).load().sizes() == \
        {"train": 30, "calib": 10, "test": 10}


def test_a_backbone_weights_file_is_an_option_like_any_other(tmp_path):
    """``--option weights=PATH`` (or ``weights:`` in the YAML) reads the same as in the API, and the file's SHA-256
    joins the options, so a saved config names the weights it started from."""
    import hashlib

    import torch
    import torchvision

    torch.save(torchvision.models.squeezenet1_1(num_classes=3).state_dict(), tmp_path / "w.pt")
    digest = hashlib.sha256((tmp_path / "w.pt").read_bytes()).hexdigest()
    want = {"arch": "squeezenet1_1", "nodes": ["features.5"], "weights": str(tmp_path / "w.pt"),
            "weights_sha256": digest}
    a = _parse("train", "--backbone", "torchvision", "--option", "arch=squeezenet1_1", "--option", "nodes=features.5",
               "--option", f"weights={tmp_path / 'w.pt'}")
    assert from_arguments(BackboneConfig, a).options == want
    yaml_section = {"name": "torchvision", "options": {"arch": "squeezenet1_1", "nodes": ["features.5"],
                                                       "weights": str(tmp_path / "w.pt")}}
    assert from_mapping(BackboneConfig, yaml_section, "model").options == want
    assert from_mapping(BackboneConfig, to_plain(BackboneConfig("torchvision", options=want)), "model").options == want
