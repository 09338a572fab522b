"""The five backbones of the exit-prediction thesis, as branchy nets, by name.

Each builder takes ``in_channels``, ``image_size``, ``num_classes``, ``exits`` (block indices after
which a side branch sits; ``None`` for the default) and its own options.
"""
from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Callable, Sequence

import torch
from torch import nn

from ..core import OptionError, Registry, typed_options
from .attach import torchvision_branchy
from .base import BranchyNet, ModelConfig
from .weights import check_weights_file

BACKBONES: Registry[Callable[..., BranchyNet]] = Registry("model", plugins="branchy.models")


def list_models() -> list[str]:
    return BACKBONES.names()


# options naming a file of initial weights and its SHA-256: a rebuild for a checkpoint's state_dict skips them
_INITIAL_WEIGHTS = ("weights", "weights_sha256")
# builder arguments that come from the data or the training scheme, never from --option
_SET_ELSEWHERE = {"in_channels": "the data", "image_size": "the data", "num_classes": "the data",
                  "exits": "--exits", "chain": "the training scheme", "ensemble": "the training scheme"}


def check_options(name: str, options: dict) -> dict:
    """Check backbone ``name``'s ``options`` against its builder's signature before anything is built:
    an unknown option lists the known ones, a value of the wrong type (``depth=abc``) says what it must be.
    Values are read as the option's type by the rules of every config field (:func:`branchy.core.typed_options`:
    ``'56'`` is 56, a bool only true or false). A ``weights`` file (initial weights) must exist; its SHA-256 is
    added as ``weights_sha256`` (checked when given). Returns the converted options."""
    factory = BACKBONES.get(name)
    if not isinstance(options, dict):
        raise ValueError(f"{name} options must be a mapping of option names to values, got {options!r}")
    params = inspect.signature(factory).parameters
    free = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    own = [n for n, p in params.items() if n not in _SET_ELSEWHERE and p.kind is not inspect.Parameter.VAR_KEYWORD]
    known = f"its options: {', '.join(own)}" if own else "it takes no options"
    for key in options:
        if key in _SET_ELSEWHERE:
            raise ValueError(f"{key} is not a backbone option of {name}: it is set by {_SET_ELSEWHERE[key]} ({known})")
        if key not in params and not free:
            raise ValueError(f"{name} has no option {key!r} ({known})")
    try:
        out = typed_options(factory, options, name)  # options it does not type (or **kwargs) pass unchanged
    except OptionError as e:
        default = params[e.key].default
        example = f"{e.key}={default}" if isinstance(default, (int, float, str)) and not isinstance(default, bool) \
            else f"{e.key}=..."
        raise ValueError(f"{e}; e.g. --option {example}") from None
    if out.get("weights") is not None and "weights_sha256" in params:  # which weights: in every saved config
        out["weights_sha256"] = check_weights_file(out["weights"], out.get("weights_sha256"))
    return out


def build_model(name: str, *, in_channels: int = 1, image_size: int | Sequence[int] = 28,
                num_classes: int = 10, exits: Sequence[int] | None = None, chain: str = "none",
                ensemble: bool = False, **options) -> BranchyNet:
    """Build backbone ``name`` for ``in_channels × image_size`` inputs and ``num_classes`` classes;
    ``chain``/``ensemble`` connect the exits (see :meth:`BranchyNet.set_chain`). ``options`` are checked
    and converted by :func:`check_options`."""
    factory = BACKBONES.get(name)
    options = check_options(name, options)
    size = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    model = factory(in_channels=int(in_channels), image_size=size, num_classes=int(num_classes),
                    exits=None if exits is None else tuple(exits), **options)
    if chain != "none" or ensemble:
        model.set_chain(chain, ensemble)
    return model


def build_from_config(cfg: ModelConfig) -> BranchyNet:
    """The architecture ``cfg`` describes, for a caller that loads its trained state_dict next (a checkpoint):
    an initial ``weights`` file in the options is not read (it need not exist any more); ``model.config`` is
    ``cfg`` as recorded."""
    skip = _INITIAL_WEIGHTS if "weights_sha256" in inspect.signature(BACKBONES.get(cfg.name)).parameters else ()
    options = {k: v for k, v in cfg.options.items() if k not in skip}
    model = build_model(cfg.name, in_channels=cfg.in_channels, image_size=cfg.image_size,
                        num_classes=cfg.num_classes, exits=cfg.exits, chain=cfg.chain, ensemble=cfg.ensemble,
                        **options)
    if options != cfg.options:
        model.config = replace(model.config, options=dict(cfg.options))
    return model


def _out_shape(blocks: Sequence[nn.Module], in_channels: int, size: tuple[int, int]) -> tuple[int, ...]:
    with torch.no_grad():
        h = torch.zeros(1, in_channels, *size)
        seq = nn.Sequential(*blocks).eval()
        return tuple(seq(h).shape[1:])


def _conv(cin: int, cout: int, k: int, *, bn: bool, pool: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    if pool is not None:
        layers.append(pool)
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- B-LeNet
@BACKBONES.register("b-lenet", doc="BranchyNet B-LeNet: conv5 → conv10 → conv20 → fc84 → fc C; branch after conv1")
def b_lenet(*, in_channels, image_size, num_classes, exits=None) -> BranchyNet:
    """Blocks: 0 conv5x5(5)+pool, 1 conv5x5(10)+pool, 2 conv3x3(20)+pool; exits=(0, 1) adds a second branch."""
    blocks = [
        _conv(in_channels, 5, 5, bn=False, pool=nn.MaxPool2d(2)),
        _conv(5, 10, 5, bn=False, pool=nn.MaxPool2d(2)),
        _conv(10, 20, 3, bn=False, pool=nn.MaxPool2d(2)),
    ]
    c, h, w = _out_shape(blocks, in_channels, image_size)
    final = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 84), nn.ReLU(inplace=True), nn.Linear(84, num_classes))
    cfg = ModelConfig("b-lenet", in_channels, image_size, num_classes, tuple(exits or (0,)), {})
    return BranchyNet(blocks, final, cfg.exits, config=cfg, max_head_convs=1, head_norm=False, head_pool=4,
                      head_separable=False)


# ----------------------------------------------------------------------------- B-AlexNet
@BACKBONES.register("b-alexnet", doc="B-AlexNet (CIFAR-size AlexNet, width multiplier); branches after conv1, conv2")
def b_alexnet(*, in_channels, image_size, num_classes, exits=None, width: float = 0.5) -> BranchyNet:
    if not width > 0:
        raise ValueError(f"b-alexnet width must be > 0 (a channel multiplier, e.g. 0.5 or 1), got {width}")
    ch = [max(8, int(c * width)) for c in (64, 192, 384, 256, 256)]
    pool = lambda: nn.MaxPool2d(3, stride=2, padding=1)  # noqa: E731
    blocks = [
        _conv(in_channels, ch[0], 5, bn=True, pool=pool()),
        _conv(ch[0], ch[1], 5, bn=True, pool=pool()),
        _conv(ch[1], ch[2], 3, bn=True),
        _conv(ch[2], ch[3], 3, bn=True),
        _conv(ch[3], ch[4], 3, bn=True, pool=pool()),
    ]
    c, h, w = _out_shape(blocks, in_channels, image_size)
    hidden = max(32, int(512 * width))
    final = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(inplace=True),
                          nn.Dropout(0.5), nn.Linear(hidden, num_classes))
    cfg = ModelConfig("b-alexnet", in_channels, image_size, num_classes, tuple(exits or (0, 1)), {"width": width})
    return BranchyNet(blocks, final, cfg.exits, config=cfg, max_head_convs=2)


# ----------------------------------------------------------------------------- B-ResNet
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential() if stride == 1 and cin == cout else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNeXtBlock(nn.Module):
    """Bottleneck with a grouped 3x3 conv (cardinality × group width)."""

    def __init__(self, cin: int, cout: int, stride: int, cardinality: int, group_width: int) -> None:
        super().__init__()
        mid = cardinality * group_width
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=cardinality, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (nn.Sequential() if stride == 1 and cin == cout else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        return torch.relu(self.body(x) + self.short(x))


def _stem(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _gap_head(c: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))


@BACKBONES.register("b-resnet", doc="CIFAR ResNet with 6n+2 layers (depth=20, 56, 110, ...); branches after groups 1, 2")
def b_resnet(*, in_channels, image_size, num_classes, exits=None, depth: int = 20) -> BranchyNet:
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"b-resnet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    blocks: list[nn.Module] = [_stem(in_channels, 16)]
    cin = 16
    for g, cout in enumerate((16, 32, 64)):
        for i in range(n):
            blocks.append(BasicBlock(cin, cout, 2 if (g > 0 and i == 0) else 1))
            cin = cout
    cfg = ModelConfig("b-resnet", in_channels, image_size, num_classes, tuple(exits or (n, 2 * n)), {"depth": depth})
    return BranchyNet(blocks, _gap_head(64, num_classes), cfg.exits, config=cfg, max_head_convs=2)


@BACKBONES.register("b-resnext", doc="small CIFAR ResNeXt (bottleneck, grouped conv); branches after groups 1, 2")
def b_resnext(*, in_channels, image_size, num_classes, exits=None, blocks_per_group: int = 1,
              cardinality: int = 4, group_width: int = 4) -> BranchyNet:
    if blocks_per_group < 1:
        raise ValueError(f"b-resnext blocks_per_group must be >= 1, got {blocks_per_group}")
    if cardinality < 1 or group_width < 1:
        raise ValueError(f"b-resnext cardinality and group_width must be >= 1, got {cardinality} and {group_width}")
    blocks: list[nn.Module] = [_stem(in_channels, 32)]
    cin = 32
    for g, cout in enumerate((64, 128, 256)):
        for i in range(blocks_per_group):
            blocks.append(ResNeXtBlock(cin, cout, 2 if (g > 0 and i == 0) else 1, cardinality, group_width * 2 ** g))
            cin = cout
    n = blocks_per_group
    cfg = ModelConfig("b-resnext", in_channels, image_size, num_classes, tuple(exits or (n, 2 * n)),
                      {"blocks_per_group": blocks_per_group, "cardinality": cardinality, "group_width": group_width})
    return BranchyNet(blocks, _gap_head(256, num_classes), cfg.exits, config=cfg, max_head_convs=2)


# ----------------------------------------------------------------------------- B-DenseNet
class DenseLayer(nn.Module):
    """DenseNet-BC layer: BN-ReLU-conv1x1(4g)-BN-ReLU-conv3x3(g), output concatenated to the input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), nn.ReLU(inplace=True), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


@BACKBONES.register("b-densenet", doc="small DenseNet-BC (depth=22, growth=12); branches after transitions 1, 2")
def b_densenet(*, in_channels, image_size, num_classes, exits=None, depth: int = 22, growth: int = 12,
               compression: float = 0.5) -> BranchyNet:
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"b-densenet depth must be 6n+4 (BC: 2 convs per layer), e.g. 22, 40, 100; got {depth}")
    if growth < 1 or not 0 < compression <= 1:
        raise ValueError(f"b-densenet needs growth >= 1 and compression in (0, 1], got growth={growth}, "
                         f"compression={compression}")
    n = (depth - 4) // 6
    c = 2 * growth
    blocks: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, padding=1, bias=False)]
    transition_idx = []
    for b in range(3):
        for _ in range(n):
            blocks.append(DenseLayer(c, growth))
            c += growth
        if b < 2:
            cout = int(c * compression)
            blocks.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, cout, 1, bias=False),
                                        nn.AvgPool2d(2)))
            transition_idx.append(len(blocks) - 1)
            c = cout
    final = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(c, num_classes))
    cfg = ModelConfig("b-densenet", in_channels, image_size, num_classes, tuple(exits or transition_idx),
                      {"depth": depth, "growth": growth, "compression": compression})
    return BranchyNet(blocks, final, cfg.exits, config=cfg, max_head_convs=2)



BACKBONES.register("torchvision", torchvision_branchy,
                   doc="any torchvision classifier (option arch=resnet18, ...) with exits at named nodes "
                       "(nodes=[...]); weights=PATH starts it from a local state_dict file")


__all__ = ["BACKBONES", "BasicBlock", "DenseLayer", "ResNeXtBlock", "b_alexnet", "b_densenet", "b_lenet", "b_resnet",
           "b_resnext", "build_from_config", "build_model", "check_options", "list_models"]
