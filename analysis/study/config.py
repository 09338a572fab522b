"""Study configs (``branchy run STUDY.yaml``). Each section **is** a library config: ``data`` a
:class:`~branchy.data.DataConfig`, ``model`` a :class:`~branchy.models.BackboneConfig`, ``train`` a
:class:`~branchy.train.TrainConfig`, ``dump`` a :class:`~branchy.cache.DumpConfig`, ``predictors`` a
:class:`~predictors.grid.PredictorsConfig`, ``policies`` a :class:`~analysis.core.policies.PolicyConfig` and ``placement``
a :class:`~analysis.study.placement_study.PlacementConfig`; each default and check lives there once. Unknown keys are
refused and every value is checked before any work starts."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from branchy.runtime import BACKENDS
from branchy.core import ConfigError, check_int, check_name, from_mapping, read_yaml, to_plain
from branchy.data import DataConfig
from branchy.cache import DumpConfig
from branchy.models import BackboneConfig
from branchy.train import TrainConfig, check_trunk_source
from predictors.grid import PredictorsConfig

from ..core.costs import DEFAULT_PROFILE, get_profile
from .placement_config import PlacementConfig
from ..core.policies import PolicyConfig

StudyConfigError = ConfigError  # the name earlier versions raised


@dataclass(frozen=True)
class StudyConfig:
    """One study: data, backbone, training, dump, predictors, policies, device profiles, placement."""

    data: DataConfig
    model: BackboneConfig
    out: str = "runs/study"
    name: str = "study"
    train: TrainConfig = TrainConfig()
    dump: DumpConfig = DumpConfig()
    predictors: PredictorsConfig = PredictorsConfig()
    policies: PolicyConfig = PolicyConfig()
    profiles: tuple[str, ...] = (DEFAULT_PROFILE, "raspberry-pi-4")
    placement: PlacementConfig = PlacementConfig()
    report: bool = True
    validate: int = 300  # test samples the real runtime runs to check the simulator (0: skip)
    realrun: int = 0  # test samples on which the real runtime runs the references comparison of every measured profile
    # (full, default cascade, best free, best gated at batch 1; real ratios with CIs beside the simulated ones; 0: skip)
    backends: tuple[str, ...] = ("eager",)  # runtime backends measured (profile measured-BACKEND) and validated
    profilings: int = 1  # independent profilings of the measured costs (the dump's + re-profilings, kept in
    # costs_history/): the comparison's ratio CIs resample them with the test samples (a suite asks for >= 4)

    def __post_init__(self) -> None:
        try:
            check_trunk_source(self.train)  # a study builds its net from the config: the trunk must be trained
        except ValueError as e:
            raise ValueError(f"train: {e}") from None
        w, exits = self.train.exit_weights, self.model.exits
        if w is not None and exits is not None and len(w) != len(exits) + 1:
            raise ValueError(f"train.exit_weights has {len(w)} values but model.exits {list(exits)} makes "
                             f"{len(exits) + 1} exits (the side exits and the final one): give one weight per exit")
        check_int("validate (test samples the real runtime runs, 0: skip)", self.validate, 0)
        check_int("realrun (test samples the references comparison runs for real, 0: skip)", self.realrun, 0)
        check_int("profilings (independent profilings of the measured costs)", self.profilings, 1)
        for b in self.backends:
            check_name("backends", BACKENDS, b)
        if "eager" not in self.backends:
            raise ValueError("backends: eager is always measured (it is the cache's own 'measured' profile)")
        if not self.profiles:
            raise ValueError("profiles: name at least one device profile (e.g. measured)")
        for p in self.profiles:
            try:
                get_profile(p)
            except (KeyError, OSError, ValueError) as e:
                raise ValueError(f"profiles: {e.args[0] if isinstance(e, KeyError) else e}") from None

    def to_dict(self) -> dict:
        return to_plain(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def parse_study(raw: dict, origin: str = "study") -> StudyConfig:
    """Build and check a :class:`StudyConfig` from a mapping (a parsed YAML file)."""
    if not isinstance(raw, dict):
        raise StudyConfigError(f"{origin}: a study config is a mapping with at least 'data' and 'model'")
    if "data" in raw:  # a missing section is refused by from_mapping
        check_dataset_named(raw["data"], "data")
    return from_mapping(StudyConfig, raw, "")


def check_dataset_named(data, where: str) -> None:
    """Refuse a data mapping without ``dataset`` (or an empty one): a study never falls back to a default
    dataset unnoticed."""
    if data is None or (isinstance(data, dict) and "dataset" not in data):
        raise StudyConfigError(f"{where}.dataset is missing: name the dataset the study runs on, e.g. "
                               f"{where}: {{dataset: mnist5k}} (see `branchy datasets`)")


def load_study(path: str | Path) -> StudyConfig:
    return parse_study(read_yaml(path, "study config"), str(path))


__all__ = ["StudyConfig", "StudyConfigError", "check_dataset_named", "load_study", "parse_study"]
