"""Datasets by name (the way in): :class:`DataConfig` says which dataset and where, :func:`load_dataset` loads it
as train / calib / test :class:`Splits`. Loaders: the embedded ``mnist5k`` default, torchvision sets, ``npz``
(:mod:`branchy.data.loaders`) and ``imagefolder`` (:mod:`branchy.data.folders`), ``mnist5k-c`` (:mod:`branchy.data.mnist_c`).

Images are held in memory as uint8 ``[N, C, H, W]`` (or float32 in [0, 1] for ``npz`` floats) and normalised
per batch."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, fields

from ..core import check_int, setting
from .options import typed_options
from .splits import DATASETS, Splits


def list_datasets() -> list[str]:
    return DATASETS.names()


def _loader_params(name: str) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(DATASETS.get(name)).parameters)


def load_dataset(name: str, **options) -> Splits:
    """Load dataset ``name`` as train/calib/test splits. Options are the loader's keywords (``root``,
    ``download``, ``seed``, ``path``, ...); one it does not take is refused with the ones it does, and each is
    read as its annotated type and checked before the loader runs (:func:`branchy.data.options.typed_options`)."""
    params = _loader_params(name)
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"dataset {name} takes no option {', '.join(unknown)}; its options: "
                         f"{', '.join(params) or '(none)'}")
    fn = DATASETS.get(name)
    return fn(**typed_options(fn, options, str(name).lower()))


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, and where. ``root``, ``path`` and ``download`` go to loaders that take them (left at their
    defaults otherwise); ``options`` are the loader's other keywords (``calib_size=5000``, ``sizes=...``), read as
    the loader's annotated types by the rules of every other setting (``in_memory=maybe`` is refused) and checked
    by the loader's own ranges (``image_size=-5`` is refused) when the config is made; the config keeps them as
    given, :meth:`loader_options` hands them on converted."""

    dataset: str = setting("mnist5k", "dataset (see `branchy datasets`)", cli="--dataset", choices=list_datasets)
    root: str = setting("data", "folder of torchvision datasets, image folder or generated data", cli="--data-root")
    path: str | None = setting(None, "the .npz file for --dataset npz", cli="--data-path")
    download: bool = setting(False, "let torchvision download the dataset", cli="--download")
    seed: int = setting(0, "seed of the stratified train/calib/test split", cli="--data-seed")
    options: dict = setting({}, "another option of the dataset's loader", cli="--data-option")

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; known: {', '.join(DATASETS.names())}")
        check_int("seed", self.seed, 0)
        if not isinstance(self.options, dict):
            raise ValueError(f"options must be a mapping of the loader's options, got {self.options!r}")
        self.loader_options()

    def loader_options(self) -> dict:
        """The keywords the loader is called with, typed and checked; a setting it does not take is refused."""
        params = _loader_params(self.dataset)
        own = {f.name: f.default for f in fields(self) if f.name in ("root", "path", "download")}
        kw = {"seed": self.seed} if "seed" in params else {}
        for name, default in own.items():
            value = getattr(self, name)
            if name in params:
                kw[name] = value
            elif value != default:
                raise ValueError(f"dataset {self.dataset} takes no {name} (its options: {', '.join(params)}): "
                                 f"drop {name}={value!r}")
        clash = sorted(set(self.options) & {"seed", *own})
        if clash:
            raise ValueError(f"options: set {', '.join(clash)} as its own field, not as a loader option")
        unknown = sorted(set(self.options) - set(params))
        if unknown:
            raise ValueError(f"dataset {self.dataset} has no option {', '.join(unknown)}; its options: "
                             f"{', '.join(params)}")
        kw.update(self.options)
        kw = typed_options(DATASETS.get(self.dataset), kw, self.dataset.lower())
        need = [n for n, p in params.items() if p.default is inspect.Parameter.empty and kw.get(n) is None]
        if need:
            flags = {"path": "data.path, CLI --data-path", "root": "data.root, CLI --data-root"}
            named = ", ".join(f"{n} ({flags.get(n, 'data.options')})" for n in need)
            raise ValueError(f"dataset {self.dataset} needs {named}")
        return kw

    def load(self) -> Splits:
        """The train / calib / test splits."""
        return DATASETS.get(self.dataset)(**self.loader_options())


__all__ = ["DataConfig", "list_datasets", "load_dataset"]
