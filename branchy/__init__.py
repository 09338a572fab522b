"""branchy: the ground floor of the toolkit, in subpackages that each own one job:

- ``core``: registries, configuration, paths, one atomic writer, JSON, the device (no torch);
- ``data``: datasets and their splits; ``models``: branchy backbones, exit heads, pooling; ``exits``: confidence
  measures and the exit rule;
- ``train``: the training loop, schemes and checkpoints; ``runtime``: the early-exit runtime, backends, timing and
  cost profiles;
- ``cache``: the feature cache (reader, writer, dump, re-profiling).

A subpackage imports only from floors below it (core < data, models, exits < train, runtime < cache). Names are
imported when first used, so ``branchy.cache`` (the cache reader) needs only numpy and pandas."""
import importlib.abc
import importlib.util
import sys
import warnings
from importlib import import_module

from .core.lazy import lazy_exports

__version__ = "0.3.0"

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "DATASETS": "data", "DatasetInfo": "data", "Splits": "data", "list_datasets": "data", "load_dataset": "data",
    "BACKBONES": "models", "BranchyNet": "models", "ModelConfig": "models", "build_model": "models",
    "list_models": "models", "attach_exits": "models",
    "Registry": "core", "UnknownNameError": "core",
    "FeatureCache": "cache", "CacheError": "cache",
    "ExitRule": "exits", "EarlyExitRuntime": "runtime", "TrainConfig": "train",
})

#: Where the modules of 0.2 (one flat package) live now. ``import branchy.dump`` still works: it warns and
#: returns the new module.
MOVED = {
    "registry": "core.registry", "config": "core.config", "paths": "core.paths", "atomic": "core.atomic",
    "faults": "core.faults", "loaders": "data.loaders", "splits": "data.splits", "corruptions": "data.corruptions",
    "mnist_c": "data.mnist_c", "measures": "exits.measures", "rule": "exits.rule", "schemes": "train.schemes",
    "checkpoint": "train.checkpoint", "backends": "runtime.backends", "timing": "runtime.timing",
    "profile": "runtime.profile", "pathtime": "runtime.pathtime", "cache_writer": "cache.writer",
    "arrays_cache": "cache.arrays", "dump": "cache.dumping", "dump_dist": "cache.distributed",
    "reprofile": "cache.reprofiling",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``branchy.OLD`` (a 0.2 module path) as its new module, with a DeprecationWarning."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname[len(__name__) + 1:] if fullname.startswith(__name__ + ".") else None
        return importlib.util.spec_from_loader(fullname, self) if old in MOVED else None

    def create_module(self, spec):
        new = f"{__name__}.{MOVED[spec.name[len(__name__) + 1:]]}"
        warnings.warn(f"{spec.name} moved to {new}; import it from there (or from its package)",
                      DeprecationWarning, stacklevel=2)
        return import_module(new)

    def exec_module(self, module) -> None:
        pass


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())
