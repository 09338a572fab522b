import os

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest
import torch

from branchy.data import ArrayDataset, DatasetInfo, Splits

torch.set_num_threads(2)


def make_splits(n=(96, 48, 48), channels=1, size=28, classes=4, seed=0) -> Splits:
    """A tiny learnable dataset: class c has a bright square at a class-specific place."""
    g = np.random.default_rng(seed)
    parts = {}
    for split, m in zip(("train", "calib", "test"), n):
        y = g.integers(0, classes, m)
        x = g.integers(0, 60, (m, channels, size, size)).astype(np.uint8)
        for i, c in enumerate(y):
            r = (c * size // classes)
            x[i, :, r : r + size // classes, 2 : size - 2] = 220
        parts[split] = ArrayDataset(torch.from_numpy(x), torch.from_numpy(y), (0.3,) * channels, (0.3,) * channels)
    info = DatasetInfo("toy", channels, size, size, classes, (0.3,) * channels, (0.3,) * channels)
    return Splits(info, parts["train"], parts["calib"], parts["test"])


@pytest.fixture(scope="session")
def toy_splits() -> Splits:
    return make_splits()
