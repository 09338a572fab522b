"""Exits on any traceable network at named nodes (``torchvision.models.feature_extraction``), behind
the same branchy-net interface: the traced graph is cut into K stages at the named nodes, each stage
a ``GraphModule`` that takes the previous branch point's activation."""
from __future__ import annotations

from typing import Sequence

from torch import fx, nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from ..core import UnknownNameError
from .base import BranchyNet, ModelConfig
from .heads import branch_head
from .trunk import default_final_node
from .weights import check_weights_file, load_weights_file


def _segment(root: fx.GraphModule, nodes: list[fx.Node], start: fx.Node | None, end: fx.Node) -> fx.GraphModule:
    """A module computing ``end`` from ``start``'s value (or the network input when ``start`` is None)."""
    order = {n: i for i, n in enumerate(nodes)}
    lo = order[start] if start is not None else -1
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    if start is None:
        for n in nodes:
            if n.op == "placeholder":
                env[n] = g.node_copy(n)
    else:
        env[start] = g.placeholder("h")

    def arg(a: fx.Node) -> fx.Node:
        if a in env:
            return env[a]
        if a.op == "get_attr":  # parameters/buffers used here: copy the fetch
            env[a] = g.node_copy(a)
            return env[a]
        raise ValueError(f"cannot cut the network at {start.name if start else 'the input'}: node {a.name} "
                         f"computed before it is still needed after it (a skip connection crosses the cut); "
                         f"choose nodes at block boundaries")

    for n in nodes[lo + 1 : order[end] + 1]:
        if n.op in ("placeholder", "output"):
            continue
        env[n] = g.node_copy(n, arg)
    g.output(env[end])
    return fx.GraphModule(root, g)


def attach_exits(network: nn.Module, nodes: Sequence[str], *, in_channels: int, image_size: tuple[int, int],
                 num_classes: int, final_node: str | None = None, name: str = "custom", options: dict | None = None,
                 max_head_convs: int = 2) -> BranchyNet:
    """Side exits after the named ``nodes`` (names as ``get_graph_node_names`` lists them, or a module
    name such as ``layer2`` for its last node). The final exit is the part after ``final_node``; by default
    that is the network's whole head, the trunk ending before its global pooling/flatten/classifier (``layer4``
    of a ResNet, ``features`` of a MobileNet, where timm's ``forward_features`` ends; the rule:
    :mod:`branchy.models.trunk`)."""
    network = network.eval()
    _, eval_names = get_graph_node_names(network)
    if not nodes:
        raise ValueError("attach_exits needs at least one node to branch at")
    final_node = final_node or default_final_node(network, eval_names)
    names = list(nodes) + [final_node, eval_names[-1]]
    for n in names:
        if not any(e == n or e.startswith(n + ".") for e in eval_names):
            raise UnknownNameError(f"unknown node {n!r} of {type(network).__name__}; known (e.g.): "
                                   f"{', '.join(eval_names[1:12])}, ... ({len(eval_names)} in all; "
                                   f"see torchvision.models.feature_extraction.get_graph_node_names)")
    fe = create_feature_extractor(network, return_nodes={n: f"n{i}" for i, n in enumerate(names)})
    graph_nodes = list(fe.graph.nodes)
    out_node = next(n for n in graph_nodes if n.op == "output")
    returned = out_node.args[0]
    cuts = [returned[f"n{i}"] for i in range(len(names))]
    order = {n: i for i, n in enumerate(graph_nodes)}
    if [order[c] for c in cuts] != sorted(order[c] for c in cuts) or len(set(cuts)) != len(cuts):
        raise ValueError(f"nodes {list(nodes)} and the final node {final_node!r} (where the trunk ends) must be "
                         f"distinct and in network order")
    stages, prev = [], None
    for c in cuts[:-1]:
        stages.append(_segment(fe, graph_nodes, prev, c))
        prev = c
    final = _segment(fe, graph_nodes, cuts[-2], cuts[-1])
    cfg = ModelConfig(name, in_channels, tuple(image_size), num_classes, tuple(range(len(nodes))), options or {})

    def head(c, hw, nc, *, n_conv, norm, pool, separable):
        return branch_head(c, hw, nc, n_conv=n_conv, norm=norm, pool=pool, separable=separable)

    return BranchyNet(stages, final, cfg.exits, config=cfg, max_head_convs=max_head_convs, head_factory=head)


def torchvision_branchy(*, in_channels, image_size, num_classes, exits=None, arch: str = "resnet18",
                        nodes: Sequence[str] = ("layer1", "layer2", "layer3"), final_node: str | None = None,
                        arch_kwargs: dict | None = None, weights: str | None = None,
                        weights_sha256: str | None = None) -> BranchyNet:
    """A torchvision classification model (``arch``) with side exits at ``nodes``. Its trunk and head start from
    random weights, or from ``weights``: a local file holding that model's state_dict (``torch.save(
    torchvision.models.get_model(arch, num_classes=C).state_dict(), PATH)``, C the data's classes), loaded
    strictly; its SHA-256 is recorded in the options as ``weights_sha256`` (given, it must match). The side exits
    always start from random weights."""
    import torchvision

    if exits is not None and tuple(exits) != tuple(range(len(nodes))):
        raise ValueError("for torchvision models choose exits by node names (option nodes=[...]), not indices")
    if weights_sha256 is not None and weights is None:
        raise ValueError("weights_sha256 pins a weights file: give the file too (option weights=PATH)")
    try:
        net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **(arch_kwargs or {}))
    except ValueError as e:
        raise UnknownNameError(f"unknown torchvision model {arch!r}: {e}") from None
    if in_channels != 3:
        raise ValueError(f"torchvision models take 3-channel input; the data has {in_channels} "
                         f"(repeat grayscale channels or use a b-* backbone)")
    options = {"arch": arch, "nodes": list(nodes), "final_node": final_node, "arch_kwargs": dict(arch_kwargs or {})}
    if weights is not None:
        digest = check_weights_file(weights, weights_sha256)
        load_weights_file(net, weights, what=f"torchvision {arch} with {num_classes} classes")
        options.update(weights=str(weights), weights_sha256=digest)
    return attach_exits(net, list(nodes), in_channels=in_channels, image_size=image_size, num_classes=num_classes,
                        final_node=final_node, name="torchvision", options=options)


def legacy_final_node(arch: str, num_classes: int, arch_kwargs: dict | None = None) -> str:
    """The final node branchy 0.2 chose by default for torchvision model ``arch``: the node feeding its last layer
    (0.3 ends the trunk before the head: :mod:`branchy.models.trunk`). Rebuilds a 0.2 checkpoint of a model whose
    head has layers with parameters before the last one (VGG, AlexNet, MobileNetV3)."""
    import torchvision

    net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **(arch_kwargs or {}))
    return get_graph_node_names(net.eval())[1][-2]


__all__ = ["attach_exits", "legacy_final_node", "torchvision_branchy"]
