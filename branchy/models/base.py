"""The branchy-net contract (docs/semantics.md §3.1): K trunk stages, K exits, exit k reads stage k's output."""
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
    chain: str = "none"
    ensemble: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["exits"] = list(self.exits)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(d["name"], int(d["in_channels"]), tuple(d["image_size"]), int(d["num_classes"]),
                   tuple(int(e) for e in d["exits"]), dict(d.get("options", {})), str(d.get("chain", "none")),
                   bool(d.get("ensemble", False)))


CHAINS = ("none", "boost", "cascade")
BOOST_T = 0.5


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
        self.chain, self.cascade, self.cascade_norm, self.ens_w, self.ens_b = "none", None, None, None, None

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def run_stage(self, k: int, h: torch.Tensor) -> torch.Tensor:
        return self.stages[k](h)

    # ------------------------------------------------------------------ chained exits
    def set_chain(self, chain: str = "none", ensemble: bool = False) -> "BranchyNet":
        """Connect the exits (the config records it, so checkpoints rebuild it):

        * ``boost`` (BoostNet): exit k outputs F_k = t·F_{k-1} + f_k(h_k), t = 0.5; in training the
          previous exit's F is detached (the loss sees stop_grad(F_{k-1}) + f_k).
        * ``cascade`` (Zero Time Waste): exit k's last layer also reads exit k-1's logits, detached and
          layer-normalised (ZTW's appendix; their code's ``_cascading_norm``), a parameter-free norm:
          z_k = f_k(h_k) + W_k·LayerNorm(stop_grad(z_{k-1})), W_k zero-initialised (a fresh cascade
          changes nothing). Concatenating into the last linear layer is this sum.
        * ``ensemble`` (Zero Time Waste): exit k answers with the weighted geometric mean of the
          probabilities of exits 0..k, p̂_k ∝ exp(b_k) · Π_i p_i^(exp(w_ki)/(k+1)), computed in log space:
          log p̂_k = mean_{i<=k}(exp(w_ki)·log softmax(z_i)) + b_k (up to the normaliser; the logits
          returned are this, softmax normalises). w (``ens_w``, [K, K], only i <= k used) starts at 0,
          so a fresh ensemble is the plain geometric mean; b (``ens_b``, [K, C]) starts at 0. As in ZTW,
          the trunk's own classifier (the last exit) is not ensembled (its row of w and b is unused), and
          ``ensemble=False`` in :meth:`forward_exits` gives every exit's own (cascaded) logits, on which
          ZTW trains the internal classifiers before it trains the ensemble.
        """
        if chain not in CHAINS:
            raise ValueError(f"unknown exit chain {chain!r}; known: {', '.join(CHAINS)}")
        k, c = self.num_exits, self.config.num_classes
        self.chain = chain
        self.cascade = nn.ModuleList([nn.Linear(c, c, bias=False) for _ in range(k)]) if chain == "cascade" else None
        # no affine part: W_k's columns and the head's own bias already cover a scale and a shift
        self.cascade_norm = nn.ModuleList([nn.LayerNorm(c, elementwise_affine=False) for _ in range(k)]) \
            if chain == "cascade" else None
        if self.cascade is not None:
            for lin in self.cascade:
                nn.init.zeros_(lin.weight)
        if ensemble:
            self.ens_w = nn.Parameter(torch.zeros(k, k))
            self.ens_b = nn.Parameter(torch.zeros(k, c))
        else:
            self.ens_w = self.ens_b = None
        from dataclasses import replace

        self.config = replace(self.config, chain=chain, ensemble=bool(ensemble))
        return self

    @property
    def chained(self) -> bool:
        return getattr(self, "chain", "none") != "none" or getattr(self, "ens_w", None) is not None

    def _link(self, k: int, raw: torch.Tensor, state: dict, ensemble: bool = True) -> torch.Tensor:
        """Exit k's answer from its head's raw output and what earlier exits left in ``state``
        (``prev``: exit k-1's logits or None; ``logp``: {i: log-probabilities of exit i})."""
        chain = getattr(self, "chain", "none")
        prev = state.get("prev")
        z = raw
        if prev is not None and k > 0:
            if chain == "boost":
                z = raw + BOOST_T * (prev.detach() if self.training else prev)
            elif chain == "cascade":
                z = raw + self.cascade[k](self.cascade_norm[k](prev.detach()))
        state["prev"] = z
        if getattr(self, "ens_w", None) is None or not ensemble or k == self.num_exits - 1:
            return z
        logp = state.setdefault("logp", {})
        logp[k] = torch.log_softmax(z, dim=1)
        # mean over the k+1 exits 0..k (an exit missing from ``logp`` would count as log-probabilities 0)
        return sum(self.ens_w[k, i].exp() * lp for i, lp in logp.items() if i <= k) / (k + 1) + self.ens_b[k]

    def run_exit(self, k: int, h: torch.Tensor, state: dict | None = None, *, ensemble: bool = True) -> torch.Tensor:
        """Exit k's logits from the activation ``h`` at branch point k. For chained exits, ``state``
        carries what earlier exits computed (a fresh dict: exit k alone, no earlier contribution)."""
        raw = self.exits[k](h)
        return raw if not self.chained else self._link(k, raw, {} if state is None else state, ensemble)

    def forward_exits(self, x: torch.Tensor, return_features: bool = False, *, ensemble: bool = True):
        """Logits of every exit, a list of K ``[B, C]`` tensors; with ``return_features`` also the
        K branch-point activations. ``ensemble=False`` skips the ZTW ensemble (each exit's own logits)."""
        self._check_input(x)
        logits, feats, h, state = [], [], x, {}
        for k, stage in enumerate(self.stages):
            h = stage(h)
            feats.append(h)
            logits.append(self.run_exit(k, h, state, ensemble=ensemble))
        return (logits, feats) if return_features else logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The final exit's logits (the plain network)."""
        if self.chained:
            return self.forward_exits(x)[-1]
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
        """Side-exit parameters, with the cascade connections (the ensemble is separate)."""
        ps = [p for h in self.exits[:-1] for p in h.parameters()]
        if getattr(self, "cascade", None) is not None:
            ps += list(self.cascade.parameters())
        return ps

    def ensemble_parameters(self):
        return [] if getattr(self, "ens_w", None) is None else [self.ens_w, self.ens_b]

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


__all__ = ["BOOST_T", "BranchyNet", "CHAINS", "ModelConfig", "weights_fingerprint"]
