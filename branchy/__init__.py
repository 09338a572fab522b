"""branchy: datasets, branchy backbones, training, cost profiling, the feature cache and the runtime."""
from .data import DATASETS, DatasetInfo, Splits, list_datasets, load_dataset
from .models import BACKBONES, BranchyNet, ModelConfig, build_model, list_models
from .registry import Registry, UnknownNameError

__all__ = ["DATASETS", "DatasetInfo", "Splits", "list_datasets", "load_dataset", "BACKBONES", "BranchyNet",
           "ModelConfig", "build_model", "list_models", "Registry", "UnknownNameError"]
__version__ = "0.1.0"
