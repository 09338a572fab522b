import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

from branchy.data import Splits
from tests.helpers import make_splits, priced_cache, synthetic_arrays

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def toy_splits() -> Splits:
    return make_splits()


@pytest.fixture(scope="session")
def synth_cache(tmp_path_factory):

    return priced_cache(tmp_path_factory.mktemp("synth") / "cache", synthetic_arrays(), model_name="synthetic")
