"""Training branchy nets: the loop, the training schemes (joint, frozen trunk, boosted, ...) and
checkpoints that record the data and model they were made with."""
from .checkpoint import (data_config_of, load_checkpoint, load_weights, read_checkpoint, save_checkpoint,
                         torch_load_failure)
from .loop import TrainConfig, TrainResult, check_trunk_source, evaluate, train
from .schemes import SCHEMES, Phase, Scheme, plan, register_scheme

__all__ = ["Phase", "SCHEMES", "Scheme", "TrainConfig", "TrainResult", "check_trunk_source", "data_config_of",
           "evaluate", "load_checkpoint", "load_weights", "plan", "read_checkpoint", "register_scheme", "save_checkpoint",
           "torch_load_failure", "train"]
