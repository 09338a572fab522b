"""Study configs (``branchy run STUDY.yaml``): frozen dataclasses, validated before any work starts."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml


@dataclass(frozen=True)
class DataSection:
    dataset: str
    root: str = "data"
    path: str | None = None
    download: bool = False
    seed: int = 0


@dataclass(frozen=True)
class ModelSection:
    name: str
    exits: tuple[int, ...] | None = None
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainSection:
    epochs: int = 30
    batch_size: int = 64
    lr: float | None = None
    optimizer: str = "auto"
    weight_decay: float = 0.0
    exit_weights: tuple[float, ...] | None = None
    scheme: str = "joint"
    trunk_epochs: int = 0
    augment_shift: int = 2
    ensemble_epochs: int = 2
    init_checkpoint: str | None = None
    device: str = "auto"


@dataclass(frozen=True)
class DumpSection:
    batch_size: int = 256
    pooling: str = "grid:3"
    feature_dtype: str = "float16"
    profile_time: float = 0.2
    device: str = "auto"


@dataclass(frozen=True)
class PredictorSection:
    model: str = "nn"
    targets: tuple[str, ...] = ("gate", "exit", "entropy")
    positions: tuple[int, ...] | None = None
    class_weight: str | None = "balanced"
    with_confidences: bool = False
    folds: int = 5


@dataclass(frozen=True)
class PolicySection:
    measure: str = "entropy"
    target_acc: float | None = 0.99
    patience: int = 1
    overlap: bool = False
    bootstrap: int = 1000
    gate_max_drop: float = 0.0
    max_acc_drop: float | None = None
    risk: float | None = None


@dataclass(frozen=True)
class PlacementSection:
    strategies: tuple[str, ...] = ("budget",)
    max_acc_drop: float | None = 0.5
    latency_budget: float | None = None
    profile: str = "raspberry-pi-4"
    n_jobs: int = 1
    seed: int = 0


@dataclass(frozen=True)
class StudyConfig:
    """One study: data, backbone, training, dump, predictors, policies, device profiles, placement."""

    data: DataSection
    model: ModelSection
    out: str = "runs/study"
    name: str = "study"
    train: TrainSection = TrainSection()
    dump: DumpSection = DumpSection()
    predictors: PredictorSection = PredictorSection()
    policies: PolicySection = PolicySection()
    profiles: tuple[str, ...] = ("measured", "raspberry-pi-4")
    placement: PlacementSection = PlacementSection()
    report: bool = True
    validate: int = 300  # test samples the real runtime runs to check the simulator (0: skip)
    backends: tuple[str, ...] = ("eager",)  # runtime backends measured (profile measured-BACKEND) and validated

    def to_dict(self) -> dict:
        return _plain(asdict(self))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


class StudyConfigError(ValueError):
    """A study config that cannot run; the message says what to fix."""


_SECTIONS = {"data": DataSection, "model": ModelSection, "train": TrainSection, "dump": DumpSection,
             "predictors": PredictorSection, "policies": PolicySection, "placement": PlacementSection}


def _build(cls, raw, where: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise StudyConfigError(f"{where}: expected a mapping of fields, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise StudyConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(fields)}")
    missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and n not in raw]
    if missing:
        raise StudyConfigError(f"{where}: missing required field(s) {missing}")
    kw = {}
    hints = typing.get_type_hints(cls)
    for name, value in raw.items():
        here = f"{where}.{name}" if where != "study" else name
        if name in _SECTIONS and cls is StudyConfig:
            value = _build(_SECTIONS[name], value, here)
        else:
            value = _coerce(value, hints[name], here)
        kw[name] = value
    return cls(**kw)


def _coerce(value, hint, where: str):
    """``value`` read from YAML as the field's annotated type: numbers written as strings (YAML 1.1 reads
    ``3e-3`` as one) converted, a scalar where a list goes taken as a one-element list, anything else that
    does not fit refused with the field named."""
    import math
    import types

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where) if len(inner) == 1 else value
    if origin is tuple:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise StudyConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else typing.Any
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise StudyConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, str):
            try:
                value = float(value) if hint is float else int(value)
            except ValueError:
                raise StudyConfigError(f"{where}: expected {'an integer' if hint is int else 'a number'}, got "
                                       f"{value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise StudyConfigError(f"{where}: expected {'an integer' if hint is int else 'a number'}, got "
                                   f"{value!r}")
        if not math.isfinite(value):
            raise StudyConfigError(f"{where}: expected a finite number, got {value!r}")
        if hint is int and value != int(value):
            raise StudyConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value) if hint is int else float(value)
    if hint is str:
        if not isinstance(value, str):
            raise StudyConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise StudyConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    return value


def parse_study(raw: dict, origin: str = "study") -> StudyConfig:
    """Build and validate a :class:`StudyConfig` from a mapping (a parsed YAML file)."""
    if not isinstance(raw, dict):
        raise StudyConfigError(f"{origin}: a study config is a mapping with at least 'data' and 'model'")
    cfg = _build(StudyConfig, raw, "study")
    validate(cfg)
    return cfg


def load_study(path: str | Path) -> StudyConfig:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no study config at {str(p)!r}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise StudyConfigError(f"{p}: not valid YAML ({e})") from e
    return parse_study(raw, str(p))


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise StudyConfigError(msg)


def validate(cfg: StudyConfig) -> None:
    """Every name known, every number in range: fail before any work starts."""
    from branchy.data import DATASETS
    from branchy.measures import LOWER_IS_CONFIDENT
    from branchy.models import BACKBONES
    from placement.search import STRATEGIES
    from predictors.models import PREDICTOR_MODELS
    from predictors.targets import TARGETS

    from .costs import get_profile

    def known(registry, name, where):
        try:
            registry.get(name)
        except KeyError as e:
            raise StudyConfigError(f"{where}: {e}") from None

    known(DATASETS, cfg.data.dataset, "data.dataset")
    _check(cfg.data.dataset != "npz" or cfg.data.path is not None, "data.path: the npz dataset needs the file's path")
    known(BACKBONES, cfg.model.name, "model.name")
    t = cfg.train
    _check(isinstance(t.epochs, int) and t.epochs >= 1, f"train.epochs must be an integer >= 1, got {t.epochs!r}")
    _check(isinstance(t.batch_size, int) and t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size!r}")
    _check(t.lr is None or (isinstance(t.lr, (int, float)) and t.lr > 0),
           f"train.lr must be > 0 (or null: the optimizer's default), got {t.lr!r}")
    _check(t.optimizer in ("auto", "adam", "sgd"), f"train.optimizer must be auto, adam or sgd, got {t.optimizer!r}")
    from branchy.schemes import SCHEMES

    _check(t.scheme in SCHEMES.names(), f"train.scheme must be one of {', '.join(SCHEMES.names())}; got {t.scheme!r}")
    _check(not SCHEMES.get(t.scheme).needs_trained_trunk or t.trunk_epochs >= 1 or t.init_checkpoint is not None,
           f"train.scheme {t.scheme} freezes a trained trunk: set train.trunk_epochs >= 1 or train.init_checkpoint")
    _check(t.augment_shift >= 0, f"train.augment_shift must be >= 0, got {t.augment_shift}")
    _check(t.trunk_epochs >= 0 and t.ensemble_epochs >= 0,
           f"train.trunk_epochs and train.ensemble_epochs must be >= 0, got {t.trunk_epochs}, {t.ensemble_epochs}")
    _check(t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}")
    _check(t.exit_weights is None or all(w >= 0 for w in t.exit_weights) and any(w > 0 for w in t.exit_weights),
           f"train.exit_weights must be >= 0 with one > 0, got {t.exit_weights}")
    _check(cfg.dump.batch_size >= 1, f"dump.batch_size must be >= 1, got {cfg.dump.batch_size}")
    _check(cfg.dump.profile_time > 0, f"dump.profile_time must be > 0 seconds, got {cfg.dump.profile_time}")
    from branchy.dump import FEATURE_DTYPES

    _check(cfg.dump.feature_dtype in FEATURE_DTYPES,
           f"dump.feature_dtype must be one of {', '.join(FEATURE_DTYPES)} (integers would truncate features), got "
           f"{cfg.dump.feature_dtype!r}")
    _check(cfg.policies.bootstrap >= 0, f"policies.bootstrap must be >= 0 resamples, got {cfg.policies.bootstrap}")
    from branchy.dump import parse_pooling

    try:
        parse_pooling(cfg.dump.pooling)
    except ValueError as e:
        raise StudyConfigError(f"dump.pooling: {e}") from None
    known(PREDICTOR_MODELS, cfg.predictors.model, "predictors.model")
    for tg in cfg.predictors.targets:
        _check(tg in TARGETS.names(),
               f"predictors.targets: unknown target {tg!r}; known: {', '.join(TARGETS.names())}")
    _check(cfg.policies.measure in LOWER_IS_CONFIDENT,
           f"policies.measure must be one of entropy, max_prob, margin; got {cfg.policies.measure!r}")
    ta = cfg.policies.target_acc
    _check(ta is None or 0 < ta <= 1, f"policies.target_acc is a fraction in (0, 1], got {ta}")
    _check(cfg.policies.patience >= 1, f"policies.patience must be >= 1, got {cfg.policies.patience}")
    _check(cfg.predictors.folds >= 2, f"predictors.folds (cross-fitting on calib) must be >= 2, got "
                                      f"{cfg.predictors.folds}")
    pol = cfg.policies
    _check(pol.gate_max_drop >= 0, f"policies.gate_max_drop must be >= 0 points, got {pol.gate_max_drop}")
    _check(pol.risk is None or (0 < pol.risk < 1 and pol.max_acc_drop is not None and 0 < pol.max_acc_drop < 100),
           f"policies.risk (delta in (0, 1)) needs policies.max_acc_drop in (0, 100) points; got risk={pol.risk}, "
           f"max_acc_drop={pol.max_acc_drop}")
    _check(isinstance(cfg.validate, int) and cfg.validate >= 0,
           f"validate: the number of test samples to run for real (0: skip), got {cfg.validate!r}")
    from branchy.backends import BACKENDS

    for b in cfg.backends:
        known(BACKENDS, b, "backends")
    _check("eager" in cfg.backends, "backends: eager is always measured (it is the cache's own 'measured' profile)")
    _check(len(cfg.profiles) >= 1, "profiles: name at least one device profile (e.g. measured)")
    for p in (*cfg.profiles, cfg.placement.profile):
        try:
            get_profile(p)
        except (KeyError, FileNotFoundError, ValueError) as e:
            raise StudyConfigError(f"profiles: {e}") from None
    for s in cfg.placement.strategies:
        known(STRATEGIES, s, "placement.strategies")
    pl = cfg.placement
    _check(pl.max_acc_drop is not None or pl.latency_budget is not None,
           "placement: give max_acc_drop (points) or latency_budget (ms)")
    _check(pl.max_acc_drop is None or pl.max_acc_drop >= 0, f"placement.max_acc_drop must be >= 0, got {pl.max_acc_drop}")
    _check(pl.latency_budget is None or pl.latency_budget > 0,
           f"placement.latency_budget must be > 0 ms, got {pl.latency_budget}")


def policy_config(cfg: StudyConfig):
    """The study's policies section as the analysis's :class:`~analysis.study.PolicyConfig`."""
    from .study import PolicyConfig

    pol = cfg.policies
    return PolicyConfig(pol.measure, pol.target_acc, pol.patience, pol.overlap, pol.bootstrap, pol.gate_max_drop,
                        pol.max_acc_drop if pol.risk is not None else None, pol.risk)
