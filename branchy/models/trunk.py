"""Where a network's feature trunk ends: the default node after which :func:`~branchy.models.attach_exits` puts
the final exit (the network's own head), so a user never has to name it.

A network with timm's ``forward_features``/``forward_head`` pair: where ``forward_features`` ends. Any other
network (torchvision's, your own): by a rule on the node names ``get_graph_node_names`` lists (in eval mode),
grouped by the network's top-level child each node belongs to (a function called in ``forward`` itself, such as
``flatten``, is a group of its own). The **head** starts at the first group that is

- a global pooling or a flatten: a top-level child that is ``nn.AdaptiveAvgPool*``/``nn.AdaptiveMaxPool*``/
  ``nn.Flatten`` or whose class name says adaptive or global pooling (timm's ``SelectAdaptivePool2d``), or a
  ``flatten``/``mean``/``adaptive_*_pool*d`` call in ``forward`` itself; or
- the top-level child holding the network's last layer with parameters (``fc``, ``classifier``, ``head``);

and the trunk ends at the last node before it: ``layer4`` for torchvision's ResNets (before ``avgpool``),
``features`` for VGG/MobileNet/EfficientNet/SqueezeNet, ``relu`` (the call after ``features``) for DenseNet; for
timm ``blocks`` for MobileNetV3 (before ``global_pool``), ``bn2`` for EfficientNet, ``norm`` for ViT. Nothing of
the head is cut: the final exit is the network's whole head (pooling, flatten, classifier) and the activation it
reads keeps its spatial size. When that leaves no trunk (a network wrapped in one container), the default is the
node feeding the network's last layer. Pass ``final_node=`` to choose another.
"""
from __future__ import annotations

import re

from torch import nn
from torchvision.models.feature_extraction import get_graph_node_names

_POOL_TYPES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
               nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Flatten)
# functions called in forward() itself that pool globally or flatten (node names lose their _N suffix)
_POOL_CALLS = {"flatten", "mean", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
               "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d"}


def _owner(name: str, modules: dict[str, nn.Module]) -> str:
    """The qualified name of the innermost module node ``name`` belongs to ('' for ``forward`` itself)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in modules:
            return ".".join(parts[:i])
    return ""


def _is_pooling(group: str, modules: dict[str, nn.Module]) -> bool:
    """Whether top-level group ``group`` (a child's name, or a call in ``forward``) pools globally or flattens."""
    m = modules.get(group)
    if m is None:
        return re.sub(r"_\d+$", "", group) in _POOL_CALLS
    cls = type(m).__name__.lower()
    return isinstance(m, _POOL_TYPES) or ("pool" in cls and ("adaptive" in cls or "global" in cls))


def _last_layer(names: list[str], modules: dict[str, nn.Module]) -> int:
    """Index in ``names`` of the last node that runs a module with parameters of its own (-1: none)."""
    for i in range(len(names) - 1, -1, -1):
        own = _owner(names[i], modules)
        if own and any(True for _ in modules[own].parameters(recurse=False)):
            return i
    return -1


def _compact(names: list[str], i: int, modules: dict[str, nn.Module]) -> str:
    """``names[i]``, or the shortest enclosing module name whose last node it is (``layer4.1.relu_1`` is
    ``layer4``), as ``create_feature_extractor`` reads a module name."""
    parts = names[i].split(".")
    for k in range(1, len(parts)):
        prefix = ".".join(parts[:k])
        if prefix in modules and not any(n == prefix or n.startswith(prefix + ".") for n in names[i + 1:]):
            return prefix
    return names[i]


class _Features(nn.Module):
    """``net.forward_features`` as a module's forward, to trace where it ends."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.forward_features(x)


def _features_end(network: nn.Module, names: list[str]) -> int | None:
    """Index in ``names`` of the last node of timm's ``network.forward_features`` (None: no
    ``forward_features``/``forward_head`` pair, or it does not trace to a node of the whole network)."""
    if not (callable(getattr(network, "forward_features", None)) and callable(getattr(network, "forward_head", None))):
        return None
    wrapper = _Features(network).train(network.training)
    try:
        _, ev = get_graph_node_names(wrapper, suppress_diff_warning=True)
    except Exception:  # noqa: BLE001 - untraceable alone: the rule decides
        return None
    end = ev[-1].removeprefix("net.") if len(ev) > 1 else None
    return names.index(end) if end in names[1:] else None


def default_final_node(network: nn.Module, names: list[str]) -> str:
    """The node after which the feature trunk of ``network`` ends (the rule in this module's docstring);
    ``names`` are its eval-mode graph node names (``get_graph_node_names(network)[1]``: input first, output
    last)."""
    modules = dict(network.named_modules())
    end = _features_end(network, names)
    if end is not None:
        return _compact(names, end, modules)
    groups = [n.split(".")[0] for n in names]
    last = _last_layer(names, modules)
    head = len(names) - 1
    for i in range(1, len(names)):
        if _is_pooling(groups[i], modules) or (last >= 0 and groups[i] == groups[last] and groups[i] in modules):
            head = i
            break
    if head <= 1:  # no trunk before it (one container): the node feeding the last layer
        own = _owner(names[-1], modules)
        head = next((i for i in range(1, len(names)) if own and _owner(names[i], modules) == own), len(names) - 1)
        if head <= 1:
            raise ValueError(f"cannot tell where the trunk of {type(network).__name__} ends: pass final_node= "
                             f"(a node name as get_graph_node_names lists it)")
    return _compact(names, head - 1, modules)


__all__ = ["default_final_node"]
