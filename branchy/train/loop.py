"""Training a branchy net: :func:`train` validates its :class:`TrainConfig`, asks the scheme's registry entry
(:mod:`branchy.train.schemes`) for a plan of phases, runs each with one generic runner (:func:`run_phase`) and
reports per-epoch history and a checkpoint (:mod:`branchy.train.checkpoint`)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core import (check_device, check_int, check_number, check_writable, is_real, resolve_device, setting,
                    show_progress)
from ..data import DataConfig, Splits
from ..models import BackboneConfig, BranchyNet
from .checkpoint import load_trunk, save_checkpoint
from .schemes import SCHEMES, Phase

OPTIMIZERS = ("auto", "adam", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the net is a :class:`~branchy.models.BackboneConfig`, the data a
    :class:`~branchy.data.DataConfig`). ``exit_weights`` are BranchyNet's w_n (one per exit; ``None`` = all 1).

    Schemes: ``joint`` (BranchyNet: Σ w_n·CE_n, everything at once); ``trunk-first`` (trunk + final exit
    for ``trunk_epochs``, then every exit jointly); ``boostnet`` (boosted exits F_k = t·F_{k-1} + f_k,
    loss on stop_grad(F_{k-1}) + f_k, trunk stage k's gradients scaled by 1/(K-k)); ``ic-only``
    (Shallow-Deep Networks: the trunk is trained first, or taken from ``init_checkpoint``, then frozen
    while only the side exits learn); ``ztw`` (Zero Time Waste: as ic-only with cascade connections
    between exits, then ``ensemble_epochs`` of geometric-ensemble weights with everything else frozen).

    ``optimizer``: ``auto`` (the default) is SGD with ``momentum`` for ``boostnet`` (as BoostNet trains:
    its 1/(K-k) gradient rescale is a no-op under Adam, which is invariant to a per-parameter gradient
    scale) and Adam for every other scheme; see :func:`branchy.train.schemes.resolve_optimizer`. ``lr`` is used as given
    whichever optimizer that resolves to: SGD usually wants a larger one than Adam (bench/bench_schemes.py
    trains boostnet with SGD at lr 0.05, the other schemes with Adam at 3e-3)."""

    epochs: int = setting(30, "training epochs")
    batch_size: int = setting(64, "training batch size")
    lr: float | None = setting(None, "learning rate (none: 3e-3 for Adam, 0.05 for SGD)")
    optimizer: str = setting("auto", "auto: sgd with momentum for boostnet (Adam ignores its gradient rescale), "
                                     "adam otherwise", choices=lambda: list(OPTIMIZERS))
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(0.0, "weight decay")
    exit_weights: tuple[float, ...] | None = setting(None, "BranchyNet loss weights w_n, one per exit (none: all 1)")
    scheme: str = setting("joint", "training scheme (see branchy.train.schemes)", choices=lambda: SCHEMES.names())
    augment_shift: int = setting(2, "random translation in pixels during training (0: off)")
    ensemble_epochs: int = setting(2, "epochs of ZTW ensemble weights (ztw)")
    init_checkpoint: str | None = setting(None, "take the trained trunk from this checkpoint (ic-only, ztw) instead "
                                                "of training it")
    trunk_epochs: int = setting(0, "epochs of trunk-only training first (trunk-first, ic-only, ztw)")
    seed: int = setting(0, "seed of initialisation, shuffling and shifts")
    device: str = setting("auto", "auto (cuda when present, else cpu), cpu, cuda, cuda:1")

    def __post_init__(self) -> None:
        for name, low in (("epochs", 1), ("batch_size", 1), ("augment_shift", 0), ("ensemble_epochs", 0),
                          ("trunk_epochs", 0), ("seed", 0)):
            check_int(name, getattr(self, name), low)
        if self.lr is not None:
            check_number("lr", self.lr, "> 0", lambda v: v > 0, "e.g. lr=0.003 (or None for the optimizer's default)")
        check_number("momentum", self.momentum, "in [0, 1)", lambda v: 0 <= v < 1, "e.g. momentum=0.9")
        check_number("weight_decay", self.weight_decay, ">= 0", lambda v: v >= 0, "e.g. weight_decay=5e-4 or 0")
        check_device("device", self.device)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
        if self.scheme not in SCHEMES.names():
            raise ValueError(f"unknown training scheme {self.scheme!r}; known: {', '.join(SCHEMES.names())}")
        if self.exit_weights is not None:
            self._check_exit_weights()

    def _check_exit_weights(self) -> None:
        w = self.exit_weights
        if isinstance(w, (str, bytes)) or not all(is_real(v) for v in w):
            raise ValueError(f"exit_weights must be numbers, one per exit (e.g. (1.0, 0.5, 1.0)), got {w!r}")
        vals = [float(v) for v in w]
        if not vals:
            raise ValueError("exit_weights is empty: give one weight per exit, or None for all 1")
        if any(not np.isfinite(v) for v in vals):
            raise ValueError(f"exit_weights must be finite numbers >= 0, got {tuple(w)}: a NaN or inf weight makes "
                             f"the loss NaN; give numbers such as (1.0, 0.5, 1.0)")
        if any(v < 0 for v in vals):
            raise ValueError(f"exit_weights must be >= 0, got {tuple(w)}")
        if not any(v > 0 for v in vals):
            raise ValueError("exit_weights are all 0, so nothing would train: give at least one weight > 0")


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by a random whole number of pixels in [-max_shift, max_shift] (zero fill)."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    d = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator).float()
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 2 * d[:, 0] / w
    theta[:, 1, 2] = 2 * d[:, 1] / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False).to(x.device)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)


def joint_loss(logits: Sequence[torch.Tensor], y: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BranchyNet's ``Σ_n w_n · CE(z_n, y)``; also the per-exit CE values ``[K]`` (detached)."""
    if len(weights) != len(logits):
        raise ValueError(f"{len(weights)} exit weights for {len(logits)} exits")
    ce = torch.stack([F.cross_entropy(z, y) for z in logits])
    return (weights.to(ce) * ce).sum(), ce.detach()


@torch.no_grad()
def evaluate(model: BranchyNet, ds, *, batch_size: int = 256, device: torch.device | str = "cpu") -> pd.DataFrame:
    """Per-exit accuracy (fraction) and mean cross-entropy (nats) on a split."""
    model.eval()
    k = model.num_exits
    correct, loss, n = np.zeros(k), np.zeros(k), 0
    for x, y in ds.iter_batches(batch_size):
        x, y = x.to(device), y.to(device)
        for i, z in enumerate(model.forward_exits(x)):
            correct[i] += (z.argmax(1) == y).sum().item()
            loss[i] += F.cross_entropy(z, y, reduction="sum").item()
        n += len(y)
    return pd.DataFrame({"exit": np.arange(k), "accuracy": correct / n, "loss": loss / n})




@dataclass
class TrainResult:
    model: BranchyNet
    history: pd.DataFrame
    checkpoint: Path | None
    splits: Splits


def check_trunk_source(cfg: TrainConfig) -> None:
    """A scheme that trains exits on a frozen trunk (``ic-only``, ``ztw``) needs the trunk trained from somewhere:
    ``trunk_epochs >= 1``, an ``init_checkpoint``, or a trained net passed to :func:`train`."""
    if SCHEMES.get(cfg.scheme).needs_trained_trunk and cfg.trunk_epochs < 1 and not cfg.init_checkpoint:
        raise ValueError(f"scheme {cfg.scheme!r} trains exits on a frozen trunk: give trunk_epochs >= 1 or an "
                         f"init_checkpoint holding a trained trunk, or pass the trained net itself to train()")


def _given_net(model: BranchyNet, info, scheme) -> BranchyNet:
    """A net the caller built (e.g. :func:`branchy.models.attach_exits` on a pretrained network), checked against
    the data and given the scheme's exit chain."""
    c = model.config
    want = (info.channels, (info.height, info.width), info.num_classes)
    if (c.in_channels, tuple(c.image_size), c.num_classes) != want:
        raise ValueError(f"the net given to train() takes {c.in_channels} channels of {tuple(c.image_size)} images "
                         f"and {c.num_classes} classes; the data has {want[0]} channels of {want[1]} and {want[2]} "
                         f"classes")
    if (model.chain, bool(c.ensemble)) != (scheme.chain, scheme.ensemble):
        model.set_chain(scheme.chain, scheme.ensemble)
    return model


def train(cfg: TrainConfig, backbone: BackboneConfig | BranchyNet, data: DataConfig | Splits, *,
          splits: Splits | None = None,
          out_dir: str | os.PathLike | None = None, progress: bool = True) -> TrainResult:
    """Train ``backbone`` on ``data`` per ``cfg`` (its scheme plans the phases: joint, trunk first, ...).

    Args:
        cfg: epochs, batch size, optimiser, scheme, exit weights, seed.
        backbone: which net and where its side exits sit (``BackboneConfig("b-lenet", exits=(0, 1))``), or a
            :class:`~branchy.models.BranchyNet` to train as it is: e.g. :func:`~branchy.models.attach_exits` on a
            pretrained network, whose trunk ``ic-only`` and ``ztw`` then keep frozen (a checkpoint of a net that is
            not a registered backbone holds its weights: load them into the same net with ``load_weights``).
        data: a :class:`~branchy.data.DataConfig`, or splits already loaded.
        splits: the data config's splits, when the caller has loaded them already.
        out_dir: where ``model.pt`` (with the configs) and ``history.csv`` go (one row per epoch and exit:
            train/calib accuracy as a fraction, loss in nats, seconds per epoch); nothing is written without it.
        progress: show a progress bar per epoch.

    Returns:
        :class:`TrainResult`: ``.model`` (eval mode), ``.history``, ``.checkpoint`` (or None).
    """
    given = isinstance(backbone, BranchyNet)
    if not given:
        check_trunk_source(cfg)
    if out_dir is not None:
        check_writable(out_dir, folder=True, what="training output folder")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = resolve_device(cfg.device)
    if isinstance(data, Splits):
        splits = data
    elif splits is None:
        splits = data.load()
    info = splits.info
    scheme = SCHEMES.get(cfg.scheme)
    if given:
        model = _given_net(backbone, info, scheme).to(device)
    else:
        model = backbone.build(in_channels=info.channels, image_size=(info.height, info.width),
                               num_classes=info.num_classes, chain=scheme.chain, ensemble=scheme.ensemble).to(device)
    name = model.config.name
    k = model.num_exits
    if cfg.init_checkpoint:
        load_trunk(model, cfg.init_checkpoint)
    if cfg.exit_weights is not None and len(cfg.exit_weights) != k:
        raise ValueError(f"exit_weights has {len(cfg.exit_weights)} values but {name} with exits "
                         f"{list(model.config.exits)} has {k} exits (the side exits and the final one): give one "
                         f"weight per exit")
    # plan, run
    phases = scheme.plan(cfg, model)
    rows: list[dict] = []
    epoch = 0  # epochs are numbered across phases (they seed shuffling and shifts)
    bar = tqdm(total=sum(p.epochs for p in phases), desc=f"train {name}", disable=not show_progress(progress),
               unit="epoch")
    for phase in phases:
        rows += run_phase(model, phase, splits, cfg, first_epoch=epoch, device=device, bar=bar)
        epoch += phase.epochs
    bar.close()
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    # report
    history = pd.DataFrame(rows)
    ckpt = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        history.to_csv(out / "history.csv", index=False)
        configs = {"train_config": cfg, "backbone_config": None if given else backbone}
        if not isinstance(data, Splits):
            configs["data_config"] = data
        ckpt = save_checkpoint(model, out / "model.pt", configs=configs, splits=splits)
    return TrainResult(model, history, ckpt, splits)


def run_phase(model: BranchyNet, phase: Phase, splits: Splits, cfg: TrainConfig, *, first_epoch: int = 0,
              device: torch.device | str = "cpu", bar: tqdm | None = None) -> list[dict]:
    """Train ``model`` for one :class:`~branchy.train.Phase`: only ``phase.trains`` learn, on
    ``Σ_n w_n · CE_n`` with a cosine learning-rate schedule over its epochs; batches, shuffling and shifts
    are seeded by ``cfg.seed`` and the run's epoch number (``first_epoch`` + epochs done in this phase).
    Returns the history rows: one per epoch and exit."""
    named = dict(model.named_parameters())
    params = [named[n] for n in phase.trains]
    trainable = set(phase.trains)
    for n, p in named.items():
        p.requires_grad_(n in trainable)
    scale = [(named[n], s) for n, s in phase.grad_scale if n in trainable]
    frozen = [model.get_submodule(m) for m in phase.eval_modules]
    weights = torch.tensor(phase.exit_weights, dtype=torch.float32).to(device)
    opt = phase.optim.build(params)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=phase.epochs)
    k, rows = model.num_exits, []
    for epoch in range(first_epoch, first_epoch + phase.epochs):
        model.train()
        for mod in frozen:  # a frozen backbone keeps its batch-norm statistics
            mod.eval()
        t0, n = time.perf_counter(), 0
        corr, ce_sum = np.zeros(k), np.zeros(k)
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        for x, y in splits.train.iter_batches(cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch):
            x = random_shift(x, cfg.augment_shift, gen)
            x, y = x.to(device), y.to(device)
            logits = model.forward_exits(x, ensemble=phase.ensemble)
            loss, ce = joint_loss(logits, y, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for p, s in scale:
                if p.grad is not None:
                    p.grad.mul_(s)
            opt.step()
            corr += np.array([(z.argmax(1) == y).sum().item() for z in logits])
            ce_sum += ce.cpu().numpy() * len(y)
            n += len(y)
        sched.step()
        ev = evaluate(model, splits.calib, device=device)
        for i in range(k):
            rows.append({"epoch": epoch, "phase": phase.name, "exit": i, "train_accuracy": corr[i] / n,
                         "train_loss": ce_sum[i] / n, "calib_accuracy": ev.accuracy[i], "calib_loss": ev.loss[i],
                         "seconds": time.perf_counter() - t0})
        if bar is not None:
            bar.set_postfix(calib_acc=" ".join(f"{a:.3f}" for a in ev.accuracy))
            bar.update(1)
    return rows


__all__ = ["OPTIMIZERS", "TrainConfig", "TrainResult", "check_trunk_source", "evaluate", "joint_loss", "random_shift",
           "run_phase", "train"]
