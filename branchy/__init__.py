"""branchy: datasets, branchy backbones, training, cost profiling, the feature cache and the runtime.

Attributes are imported lazily, so ``branchy.cache`` (the cache reader) needs only numpy and pandas."""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "DATASETS": "data", "DatasetInfo": "data", "Splits": "data", "list_datasets": "data", "load_dataset": "data",
    "BACKBONES": "models", "BranchyNet": "models", "ModelConfig": "models", "build_model": "models",
    "list_models": "models", "attach_exits": "models",
    "Registry": "registry", "UnknownNameError": "registry",
    "FeatureCache": "cache", "CacheError": "cache",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'branchy' has no attribute {name!r}")
