"""Training schemes as a registry: each scheme says which exit chain it trains and plans training as a list
of :class:`Phase` objects (what learns, on which loss, with which optimizer) that one generic runner
(:func:`branchy.train.run_phase`) executes.

Registered: ``joint`` (BranchyNet), ``trunk-first``, ``boostnet`` (BoostNet), ``ic-only`` (Shallow-Deep
Networks) and ``ztw`` (Zero Time Waste); see :class:`branchy.train.TrainConfig` for what each does."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

import torch

from ..core import Registry
from ..models import BranchyNet

DEFAULT_LR = {"adam": 3e-3, "sgd": 0.05}


class TrainSettings(Protocol):
    """The fields of :class:`branchy.train.TrainConfig` a plan reads (this module does not import it)."""

    scheme: str
    epochs: int
    trunk_epochs: int
    ensemble_epochs: int
    init_checkpoint: str | None
    exit_weights: tuple[float, ...] | None
    optimizer: str
    lr: float | None
    momentum: float
    weight_decay: float


@dataclass(frozen=True)
class Optim:
    """Optimizer settings of a phase; the learning rate follows a cosine schedule over the phase's epochs."""

    kind: str  # "adam" or "sgd"
    lr: float  # initial learning rate
    momentum: float  # SGD momentum (unused by Adam)
    weight_decay: float  # L2 penalty coefficient

    def build(self, params: Sequence[torch.nn.Parameter]) -> torch.optim.Optimizer:
        if self.kind == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


@dataclass(frozen=True)
class Phase:
    """One stretch of training. Loss: ``Σ_n w_n · CE(z_n, y)`` over the exits' logits z_n as the model's exit
    chain makes them (BoostNet's boosted F_n, ZTW's cascade), through ZTW's geometric ensemble when
    ``ensemble``; ``w_n = 0`` leaves exit n out (per-exit training of the side heads: the final one at 0)."""

    name: str  # label in history.csv: "trunk", "exits", "ensemble" or "joint"
    epochs: int  # epochs of this phase
    trains: tuple[str, ...]  # names (``model.named_parameters()``) of the parameters that learn; the rest are frozen
    exit_weights: tuple[float, ...]  # w_n, one per exit
    optim: Optim
    eval_modules: tuple[str, ...] = ()  # submodules kept in eval mode (a frozen trunk keeps its batch-norm statistics)
    ensemble: bool = False  # exits answer through ZTW's ensemble (else each exit's own, possibly cascaded, logits)
    grad_scale: tuple[tuple[str, float], ...] = ()  # (parameter name, gradient multiplier); BoostNet: 1/(K-k)


Planner = Callable[[TrainSettings, BranchyNet, Optim], list[Phase]]


@dataclass(frozen=True)
class Scheme:
    """A training scheme: the exit chain it builds (:meth:`BranchyNet.set_chain`) and its plan."""

    name: str
    planner: Planner
    chain: str = "none"  # "none", "boost" or "cascade"
    ensemble: bool = False  # ZTW's geometric ensemble of exits
    needs_trained_trunk: bool = False  # side exits learn on a frozen trunk: trunk_epochs >= 1 or init_checkpoint
    default_optimizer: str = "adam"  # what ``optimizer="auto"`` resolves to
    rescales_gradients: bool = False  # per-parameter gradient scales (a no-op under Adam: a warning says so)

    def plan(self, cfg: TrainSettings, model: BranchyNet) -> list[Phase]:
        """The phases that train ``model`` (already built with this scheme's chain) per ``cfg``, in order."""
        kind = resolve_optimizer(cfg)
        lr = float(cfg.lr) if cfg.lr is not None else DEFAULT_LR[kind]
        return self.planner(cfg, model, Optim(kind, lr, cfg.momentum, cfg.weight_decay))


# the default, ``joint``, listed first
SCHEMES: Registry[Scheme] = Registry("training scheme", ordered=True, plugins="branchy.schemes")


def plan(cfg: TrainSettings, model: BranchyNet) -> list[Phase]:
    """``SCHEMES.get(cfg.scheme).plan(cfg, model)``."""
    return SCHEMES.get(cfg.scheme).plan(cfg, model)


def resolve_optimizer(cfg: TrainSettings) -> str:
    """The optimizer ``cfg`` trains with: ``auto`` is the scheme's default (``sgd`` for ``boostnet``, ``adam``
    otherwise). Warns when a scheme that rescales gradients (``boostnet``) is asked to train with Adam."""
    scheme = SCHEMES.get(cfg.scheme)
    if cfg.optimizer == "auto":
        return scheme.default_optimizer
    if scheme.rescales_gradients and cfg.optimizer == "adam":
        warnings.warn(f"{scheme.name} with optimizer 'adam': BoostNet's 1/(K-k) gradient rescale of trunk stage k "
                      "has no effect under Adam (invariant to a per-parameter gradient scale); use 'sgd' (or 'auto') "
                      "to train as BoostNet does", UserWarning, stacklevel=2)
    return cfg.optimizer


def resolve_lr(cfg: TrainSettings) -> float:
    """``cfg.lr``, or the default of the optimizer it resolves to (``DEFAULT_LR``)."""
    return float(cfg.lr) if cfg.lr is not None else DEFAULT_LR[resolve_optimizer(cfg)]


def register_scheme(name: str, doc: str, **attrs) -> Callable[[Planner], Planner]:
    """Decorator: register a planner ``(cfg, model, optim) -> phases`` as scheme ``name`` (``attrs``: the
    :class:`Scheme` fields)."""

    def add(planner: Planner) -> Planner:
        SCHEMES.register(name, Scheme(name.lower(), planner, **attrs), doc=doc)
        return planner

    return add


# ----------------------------------------------------------------------------- phase builders
def _names(model: BranchyNet, params: Iterable[torch.nn.Parameter]) -> tuple[str, ...]:
    """The names of ``params`` in ``model``, in the order given (the optimizer's order)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return tuple(by_id[id(p)] for p in params)


def _weights(cfg: TrainSettings, model: BranchyNet) -> tuple[float, ...]:
    return (1.0,) * model.num_exits if cfg.exit_weights is None else tuple(float(w) for w in cfg.exit_weights)


def _joint(cfg: TrainSettings, model: BranchyNet, optim: Optim, **kw) -> Phase:
    """Every parameter at once on ``Σ_n w_n · CE_n`` (BranchyNet)."""
    return Phase("joint", cfg.epochs, _names(model, model.parameters()), _weights(cfg, model), optim, **kw)


def _trunk(cfg: TrainSettings, model: BranchyNet, optim: Optim) -> list[Phase]:
    """The trunk (stages and final exit) on the final exit's loss alone, for ``trunk_epochs``; none when
    ``trunk_epochs`` is 0 or the trunk comes from ``init_checkpoint``."""
    if cfg.trunk_epochs < 1 or cfg.init_checkpoint:
        return []
    k = model.num_exits
    return [Phase("trunk", cfg.trunk_epochs, _names(model, model.trunk_parameters()), (0.0,) * (k - 1) + (1.0,),
                  optim)]


def _side_exits(cfg: TrainSettings, model: BranchyNet, optim: Optim) -> Phase:
    """The side exits (and cascade links) on their own weighted losses, the trunk frozen in eval mode."""
    k = model.num_exits
    side = _weights(cfg, model)[:-1] + (0.0,)
    return Phase("exits", cfg.epochs, _names(model, model.branch_parameters()), side, optim,
                 eval_modules=("stages", f"exits.{k - 1}"))


@register_scheme("joint", "BranchyNet: Σ_n w_n·CE_n, every exit and the trunk trained at once")
def _plan_joint(cfg: TrainSettings, model: BranchyNet, optim: Optim) -> list[Phase]:
    return [_joint(cfg, model, optim)]


@register_scheme("trunk-first", "trunk and final exit for trunk_epochs, then every exit jointly")
def _plan_trunk_first(cfg: TrainSettings, model: BranchyNet, optim: Optim) -> list[Phase]:
    return _trunk(cfg, model, optim) + [_joint(cfg, model, optim)]


@register_scheme("boostnet", "BoostNet: boosted exits F_k = t·F_{k-1} + f_k, stage k's gradients scaled by 1/(K-k)",
                 chain="boost", default_optimizer="sgd", rescales_gradients=True)
def _plan_boostnet(cfg: TrainSettings, model: BranchyNet, optim: Optim) -> list[Phase]:
    k = model.num_exits  # stage i (0-based) feeds exits i..K-1
    scale = tuple((n, 1.0 / (k - i)) for i, st in enumerate(model.stages)
                  for n in _names(model, st.parameters()))
    return [_joint(cfg, model, optim, grad_scale=scale)]


@register_scheme("ic-only", "Shallow-Deep Networks: a trained trunk frozen, only the side exits learn",
                 needs_trained_trunk=True)
def _plan_ic_only(cfg: TrainSettings, model: BranchyNet, optim: Optim) -> list[Phase]:
    return _trunk(cfg, model, optim) + [_side_exits(cfg, model, optim)]


@register_scheme("ztw", "Zero Time Waste: as ic-only with cascaded exits, then the geometric-ensemble weights",
                 chain="cascade", ensemble=True, needs_trained_trunk=True)
def _plan_ztw(cfg: TrainSettings, model: BranchyNet, optim: Optim) -> list[Phase]:
    phases = _trunk(cfg, model, optim) + [_side_exits(cfg, model, optim)]
    if cfg.ensemble_epochs > 0:
        phases.append(Phase("ensemble", cfg.ensemble_epochs, _names(model, model.ensemble_parameters()),
                            _weights(cfg, model)[:-1] + (0.0,), optim, eval_modules=("stages", "exits"),
                            ensemble=True))
    return phases


__all__ = ["DEFAULT_LR", "Optim", "Phase", "Planner", "SCHEMES", "Scheme", "TrainSettings", "plan", "register_scheme",
           "resolve_lr", "resolve_optimizer"]
