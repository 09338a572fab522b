from .base import BranchyNet, ModelConfig, weights_fingerprint
from .attach import attach_exits
from .zoo import BACKBONES, build_from_config, build_model, check_options, list_models
from .spec import BackboneConfig

__all__ = ["BranchyNet", "BackboneConfig", "ModelConfig", "weights_fingerprint", "BACKBONES", "build_model",
           "build_from_config", "check_options", "list_models", "attach_exits"]
