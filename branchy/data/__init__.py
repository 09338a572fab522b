"""Datasets: the registry of named datasets (MNIST-5k embedded, torchvision sets, image folders, npz files,
MNIST-5k-C), their train/calib/test splits and normalisation."""
from .load import DataConfig, list_datasets, load_dataset
from .options import min_per_class
from .splits import DATASETS, SPLITS, ArrayDataset, DatasetInfo, Splits, register_dataset
from . import folders, loaders, mnist_c  # noqa: F401 - registers the built-in loaders and mnist5k-c

__all__ = ["ArrayDataset", "DATASETS", "DataConfig", "DatasetInfo", "SPLITS", "Splits", "list_datasets",
           "load_dataset", "min_per_class", "register_dataset"]
