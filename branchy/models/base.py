"""The branchy-net contract (DESIGN.md §3.1): K trunk stages, K exits, exit k reads stage k's output."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from .heads import branch_head, head_convs


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a backbone: registry name, input, classes, exit positions, options."""

    name: str
    in_channels: int
    image_size: tuple[int, int]
    num_classes: int
    exits: tuple[int, ...]
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["exits"] = list(self.exits)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(d["name"], int(d["in_channels"]), tuple(d["image_size"]), int(d["num_classes"]),
                   tuple(int(e) for e in d["exits"]), dict(d.get("options", {})))


class BranchyNet(nn.Module):
    """A trunk cut into K stages at chosen block boundaries, with a side exit after each of the
    first K-1 stages and the trunk's own classifier as exit K.

    ``blocks`` are the trunk's candidate cut points; ``exits`` lists the block indices (0-based)
    after which a side branch sits. ``forward_exits`` returns the K logits; ``run_stage(k, h)`` and
    ``run_exit(k, h)`` run one segment alone (k is 0-based).
    """

    def __init__(self, blocks: Sequence[nn.Module], final_head: nn.Module, exits: Sequence[int], *,
                 config: ModelConfig, max_head_convs: int = 2, head_norm: bool = True, head_pool: int = 2,
                 head_separable: bool = True,
                 head_factory: Callable[..., nn.Module] | None = None) -> None:
        super().__init__()
        n = len(blocks)
        exits = tuple(int(e) for e in exits)
        if list(exits) != sorted(set(exits)) or any(not 0 <= e < n - 1 for e in exits):
            raise ValueError(f"{config.name}: exits must be increasing block indices in [0, {n - 2}] "
                             f"(a branch after block i; {n} blocks), got {list(exits)}")
        self.config = config
        self.num_blocks = n
        bounds = list(exits) + [n - 1]
        stages, start = [], 0
        for b in bounds:
            stages.append(nn.Sequential(*blocks[start : b + 1]))
            start = b + 1
        self.stages = nn.ModuleList(stages)
        # shapes at every branch point, from a dummy pass
        shapes = []
        with torch.no_grad():
            h = torch.zeros(1, config.in_channels, *config.image_size)
            was = [m.training for m in self.stages]
            self.stages.eval()
            for s in self.stages:
                h = s(h)
                shapes.append(tuple(h.shape[1:]))
            for m, t in zip(self.stages, was):
                m.train(t)
        self.branch_shapes: list[tuple[int, ...]] = shapes
        factory = head_factory or branch_head
        heads = []
        for k, e in enumerate(exits):
            c, hh, ww = shapes[k]
            heads.append(factory(c, (hh, ww), config.num_classes,
                                 n_conv=head_convs((e + 1) / n, max_head_convs), norm=head_norm,
                                 pool=head_pool, separable=head_separable))
        heads.append(final_head)
        self.exits = nn.ModuleList(heads)

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def run_stage(self, k: int, h: torch.Tensor) -> torch.Tensor:
        return self.stages[k](h)

    def run_exit(self, k: int, h: torch.Tensor) -> torch.Tensor:
        return self.exits[k](h)

    def forward_exits(self, x: torch.Tensor, return_features: bool = False):
        """Logits of every exit, a list of K ``[B, C]`` tensors; with ``return_features`` also the
        K branch-point activations."""
        self._check_input(x)
        logits, feats, h = [], [], x
        for stage, head in zip(self.stages, self.exits):
            h = stage(h)
            feats.append(h)
            logits.append(head(h))
        return (logits, feats) if return_features else logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The final exit's logits (the plain network)."""
        self._check_input(x)
        h = x
        for stage in self.stages:
            h = stage(h)
        return self.exits[-1](h)

    def _check_input(self, x: torch.Tensor) -> None:
        want = (self.config.in_channels, *self.config.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"{self.config.name} expects input [B, {', '.join(map(str, want))}], "
                             f"got {tuple(x.shape)}")

    def trunk_parameters(self):
        return list(self.stages.parameters()) + list(self.exits[-1].parameters())

    def branch_parameters(self):
        return [p for h in self.exits[:-1] for p in h.parameters()]

    def fingerprint(self) -> str:
        """sha256 (16 hex) of the weights and buffers, in key order."""
        return weights_fingerprint(self.state_dict())


def weights_fingerprint(state_dict: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k]
        h.update(k.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes() if t.dtype != torch.bfloat16
                 else t.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
