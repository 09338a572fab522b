"""BranchyNet-style exit heads: earlier branches get more conv layers."""
from __future__ import annotations

from torch import nn


def head_convs(position: float, max_convs: int) -> int:
    """Conv layers for a branch at relative depth ``position`` in (0, 1): more for earlier branches."""
    return max(0, int(max_convs * (1.0 - position) + 0.5))


def branch_head(in_channels: int, hw: tuple[int, int], num_classes: int, *, n_conv: int, norm: bool = True,
                separable: bool = True, max_width: int = 128, pool: int = 2) -> nn.Sequential:
    """``n_conv`` conv layers, then adaptive average pooling to ``pool×pool`` and a linear classifier.

    ``separable`` (the default, for the deep backbones): each conv is a depthwise 3x3 with stride 2
    followed by a pointwise 1x1 that doubles the width (capped at ``max_width``), so a branch stays
    well under the cost of the trunk after it. Otherwise (B-LeNet, as BranchyNet): conv3x3 → ReLU →
    maxpool 2 with doubled width.
    """
    layers: list[nn.Module] = []
    c, (h, w) = in_channels, hw
    for _ in range(n_conv):
        out = min(max(2 * c, 8), max_width)
        shrink = min(h, w) >= 4
        if separable:
            layers += [nn.Conv2d(c, c, 3, stride=2 if shrink else 1, padding=1, groups=c, bias=False),
                       nn.Conv2d(c, out, 1, bias=not norm)]
        else:
            layers.append(nn.Conv2d(c, out, 3, padding=1, bias=not norm))
        if norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU(inplace=True))
        if not separable and shrink:
            layers.append(nn.MaxPool2d(2))
        if shrink:
            h, w = (h + 1) // 2 if separable else h // 2, (w + 1) // 2 if separable else w // 2
        c = out
    p = pool if min(h, w) >= pool else 1
    layers += [nn.AdaptiveAvgPool2d(p), nn.Flatten(), nn.Linear(c * p * p, num_classes)]
    return nn.Sequential(*layers)


__all__ = ["branch_head", "head_convs"]
