from .attach import attach_exits, legacy_final_node
from .base import BranchyNet, ModelConfig, weights_fingerprint
from .pooling import Pool, parse_pooling, pool_features
from .spec import BackboneConfig
from .zoo import BACKBONES, build_from_config, build_model, check_options, list_models

__all__ = ["BranchyNet", "BackboneConfig", "ModelConfig", "weights_fingerprint", "BACKBONES", "build_model",
           "build_from_config", "check_options", "list_models", "attach_exits", "legacy_final_node",
           "Pool", "parse_pooling", "pool_features"]
