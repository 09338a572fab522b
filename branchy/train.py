"""BranchyNet joint training (L = Σ_n w_n · CE_n) and checkpoints that rebuild the model alone."""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import Splits, load_dataset
from .models import BranchyNet, ModelConfig, build_from_config, build_model, check_options, weights_fingerprint
from .paths import check_writable

CHECKPOINT_FORMAT = "branchy-checkpoint"
CHECKPOINT_VERSION = 1
SCHEMES = ("joint", "trunk-first", "boostnet", "ic-only", "ztw")
# the exit chain each scheme trains (see BranchyNet.set_chain)
SCHEME_CHAIN = {"joint": ("none", False), "trunk-first": ("none", False), "boostnet": ("boost", False),
                "ic-only": ("none", False), "ztw": ("cascade", True)}
OPTIMIZERS = ("auto", "adam", "sgd")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _check_int(name: str, v, low: int) -> None:
    """Refuse a setting that is not a whole number >= ``low`` (``2.5``, ``True``, ``'3'``)."""
    if not _is_int(v) or v < low:
        kind = "" if _is_int(v) else f" ({type(v).__name__})"
        raise ValueError(f"{name} must be a whole number >= {low}, got {v!r}{kind}")


def _check_number(name: str, v, rule: str, ok, example: str) -> None:
    """Refuse a setting that is not a finite real number satisfying ``ok`` (NaN is refused)."""
    if not _is_real(v) or not np.isfinite(float(v)) or not ok(float(v)):
        raise ValueError(f"{name} must be a finite number {rule}, got {v!r}; {example}")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings. ``exit_weights`` are BranchyNet's w_n (one per exit; ``None`` = all 1).

    Schemes: ``joint`` (BranchyNet: Σ w_n·CE_n, everything at once); ``trunk-first`` (trunk + final exit
    for ``trunk_epochs``, then every exit jointly); ``boostnet`` (boosted exits F_k = t·F_{k-1} + f_k,
    loss on stop_grad(F_{k-1}) + f_k, trunk stage k's gradients scaled by 1/(K-k)); ``ic-only``
    (Shallow-Deep Networks: the trunk is trained first, or taken from ``init_checkpoint``, then frozen
    while only the side exits learn); ``ztw`` (Zero Time Waste: as ic-only with cascade connections
    between exits, then ``ensemble_epochs`` of geometric-ensemble weights with everything else frozen).

    ``optimizer``: ``auto`` (the default) is SGD with ``momentum`` for ``boostnet`` (as BoostNet trains:
    its 1/(K-k) gradient rescale is a no-op under Adam, which is invariant to a per-parameter gradient
    scale) and Adam for every other scheme; see :func:`resolve_optimizer`. ``lr`` is used as given
    whichever optimizer that resolves to: SGD usually wants a larger one than Adam (bench/bench_schemes.py
    trains boostnet with SGD at lr 0.05, the other schemes with Adam at 3e-3)."""

    model: str = "b-lenet"
    dataset: str = "mnist5k"
    exits: tuple[int, ...] | None = None
    model_options: dict = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 64
    lr: float | None = None
    optimizer: str = "auto"
    momentum: float = 0.9
    weight_decay: float = 0.0
    exit_weights: tuple[float, ...] | None = None
    scheme: str = "joint"
    augment_shift: int = 0
    ensemble_epochs: int = 2
    init_checkpoint: str | None = None
    trunk_epochs: int = 0
    seed: int = 0
    device: str = "auto"
    data_root: str = "data"
    download: bool = False
    data_path: str | None = None

    def __post_init__(self) -> None:
        for name, low in (("epochs", 1), ("batch_size", 1), ("augment_shift", 0), ("ensemble_epochs", 0),
                          ("trunk_epochs", 0), ("seed", 0)):
            _check_int(name, getattr(self, name), low)
        if self.lr is not None:
            _check_number("lr", self.lr, "> 0", lambda v: v > 0, "e.g. lr=0.003 (or None for the optimizer's default)")
        _check_number("momentum", self.momentum, "in [0, 1)", lambda v: 0 <= v < 1, "e.g. momentum=0.9")
        _check_number("weight_decay", self.weight_decay, ">= 0", lambda v: v >= 0, "e.g. weight_decay=5e-4 or 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown training scheme {self.scheme!r}; known: {', '.join(SCHEMES)}")
        if not isinstance(self.model_options, dict):
            raise ValueError(f"model_options must be a dict of backbone options (e.g. {{'depth': 56}}), got "
                            f"{type(self.model_options).__name__} {self.model_options!r}")
        if self.exits is not None:
            if isinstance(self.exits, (str, bytes)) or not all(_is_int(e) and e >= 0 for e in self.exits):
                raise ValueError(f"exits must be block indices (whole numbers >= 0, e.g. (0, 1)), got {self.exits!r}")
        if self.exit_weights is not None:
            self._check_exit_weights()

    def _check_exit_weights(self) -> None:
        w = self.exit_weights
        if isinstance(w, (str, bytes)) or not all(_is_real(v) for v in w):
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
        if self.exits is not None and len(vals) != len(self.exits) + 1:
            raise ValueError(f"exit_weights has {len(vals)} values but {self.model} with exits {list(self.exits)} "
                             f"has {len(self.exits) + 1} exits (the side exits and the final one): give one weight "
                             f"per exit")

    def dataset_kwargs(self) -> dict:
        return {"root": self.data_root, "download": self.download, "path": self.data_path, "seed": self.seed}


def resolve_optimizer(cfg: TrainConfig) -> str:
    """The optimizer ``cfg`` trains with: ``auto`` is ``sgd`` for ``boostnet`` and ``adam`` otherwise.
    Warns when ``boostnet`` is asked to train with Adam (its gradient rescale then does nothing)."""
    if cfg.optimizer == "auto":
        return "sgd" if cfg.scheme == "boostnet" else "adam"
    if cfg.scheme == "boostnet" and cfg.optimizer == "adam":
        warnings.warn("boostnet with optimizer 'adam': BoostNet's 1/(K-k) gradient rescale of trunk stage k has "
                      "no effect under Adam (invariant to a per-parameter gradient scale); use 'sgd' (or 'auto') "
                      "to train as BoostNet does", UserWarning, stacklevel=2)
    return cfg.optimizer


DEFAULT_LR = {"adam": 3e-3, "sgd": 0.05}


def resolve_lr(cfg: TrainConfig) -> float:
    """``cfg.lr``, or the default of the optimizer it resolves to (``DEFAULT_LR``)."""
    return float(cfg.lr) if cfg.lr is not None else DEFAULT_LR[resolve_optimizer(cfg)]


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
    return torch.device(device)


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


def train(cfg: TrainConfig, *, splits: Splits | None = None, out_dir: str | os.PathLike | None = None,
          progress: bool = True) -> TrainResult:
    """Train a branchy net per ``cfg``; writes ``model.pt`` and ``history.csv`` (one row per epoch and
    exit: train/calib accuracy and loss) into ``out_dir`` when given."""
    from .data import DATASETS

    check_options(cfg.model, cfg.model_options)  # unknown names and ill-typed options fail before any work
    if out_dir is not None:
        check_writable(out_dir, folder=True, what="training output folder")
    if splits is None:
        DATASETS.get(cfg.dataset)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = resolve_device(cfg.device)
    if splits is None:
        splits = load_dataset(cfg.dataset, **cfg.dataset_kwargs())
    info = splits.info
    chain, ensemble = SCHEME_CHAIN[cfg.scheme]
    model = build_model(cfg.model, in_channels=info.channels, image_size=(info.height, info.width),
                        num_classes=info.num_classes, exits=cfg.exits, chain=chain, ensemble=ensemble,
                        **cfg.model_options).to(device)
    k = model.num_exits
    frozen_trunk = cfg.scheme in ("ic-only", "ztw")
    if cfg.init_checkpoint:
        _load_trunk(model, cfg.init_checkpoint)
    elif frozen_trunk and cfg.trunk_epochs < 1:
        raise ValueError(f"scheme {cfg.scheme!r} trains exits on a frozen trunk: give trunk_epochs >= 1 or an "
                         f"init_checkpoint holding a trained trunk")
    w = torch.ones(k) if cfg.exit_weights is None else torch.tensor(cfg.exit_weights, dtype=torch.float32)
    if len(w) != k:
        raise ValueError(f"exit_weights has {len(w)} values but {cfg.model} with exits {list(model.config.exits)} "
                         f"has {k} exits")
    w = w.to(device)
    trunk_only = torch.zeros(k, device=device)
    trunk_only[-1] = 1.0
    optimizer = resolve_optimizer(cfg)
    lr = resolve_lr(replace(cfg, optimizer=optimizer))

    def make_opt(params):
        if optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    side_only = w.clone()
    side_only[-1] = 0.0
    trunk_params = model.trunk_parameters()
    phases = []  # (name, epochs, loss weights, trainable parameters, frozen modules kept in eval mode)
    if cfg.scheme in ("trunk-first", "ic-only", "ztw") and cfg.trunk_epochs > 0 and not cfg.init_checkpoint:
        phases.append(("trunk", cfg.trunk_epochs, trunk_only, trunk_params, []))
    if frozen_trunk:
        phases.append(("exits", cfg.epochs, side_only, model.branch_parameters(), [model.stages, model.exits[-1]]))
        if ensemble and cfg.ensemble_epochs > 0:
            phases.append(("ensemble", cfg.ensemble_epochs, side_only, model.ensemble_parameters(),
                           [model.stages, model.exits]))
    else:
        phases.append(("joint", cfg.epochs, w, list(model.parameters()), []))
    # BoostNet: stage k (0-based) feeds exits k..K-1; its gradients are scaled by 1/(K-k)
    grad_scale = {id(p): 1.0 / (k - i) for i, st in enumerate(model.stages) for p in st.parameters()} \
        if cfg.scheme == "boostnet" else {}
    rows, epoch = [], 0
    bar = tqdm(total=sum(p[1] for p in phases), desc=f"train {cfg.model}", disable=not progress, unit="epoch")
    for phase, n_epochs, weights, params, frozen in phases:
        trainable = {id(p) for p in params}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
        opt = make_opt(params)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_epochs)
        for _ in range(n_epochs):
            model.train()
            for mod in frozen:  # a frozen backbone keeps its batch-norm statistics
                mod.eval()
            t0, n = time.perf_counter(), 0
            corr, ce_sum = np.zeros(k), np.zeros(k)
            gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
            for x, y in splits.train.iter_batches(cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch):
                x = random_shift(x, cfg.augment_shift, gen)
                x, y = x.to(device), y.to(device)
                # ZTW trains its internal classifiers on their own outputs, the ensemble only in its phase
                logits = model.forward_exits(x, ensemble=phase == "ensemble")
                loss, ce = joint_loss(logits, y, weights)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for p in params if grad_scale else ():
                    if p.grad is not None and id(p) in grad_scale:
                        p.grad.mul_(grad_scale[id(p)])
                opt.step()
                corr += np.array([(z.argmax(1) == y).sum().item() for z in logits])
                ce_sum += ce.cpu().numpy() * len(y)
                n += len(y)
            sched.step()
            ev = evaluate(model, splits.calib, device=device)
            for i in range(k):
                rows.append({"epoch": epoch, "phase": phase, "exit": i, "train_accuracy": corr[i] / n,
                             "train_loss": ce_sum[i] / n, "calib_accuracy": ev.accuracy[i], "calib_loss": ev.loss[i],
                             "seconds": time.perf_counter() - t0})
            bar.set_postfix(calib_acc=" ".join(f"{a:.3f}" for a in ev.accuracy))
            bar.update(1)
            epoch += 1
    bar.close()
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    history = pd.DataFrame(rows)
    ckpt = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        history.to_csv(out / "history.csv", index=False)
        ckpt = save_checkpoint(model, out / "model.pt", train_config=cfg, splits=splits)
    return TrainResult(model, history, ckpt, splits)


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(model: BranchyNet, path: str | os.PathLike, *, train_config: TrainConfig | None = None,
                    splits: Splits | None = None) -> Path:
    """Weights, full config and weights fingerprint; written to a temp file then renamed (atomic)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint path {str(path)!r} is a folder: give a file name such as "
                                f"{str(path / 'model.pt')!r}")
    check_writable(path, what="checkpoint")
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "model_config": model.config.to_dict(), "state_dict": sd, "fingerprint": weights_fingerprint(sd),
        "train_config": asdict(train_config) if train_config else None,
        "dataset_info": splits.info.to_dict() if splits else None,
        "dataset_fingerprint": splits.fingerprint() if splits else None,
        "torch_version": str(torch.__version__),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


CHECKPOINT_KEYS = ("model_config", "state_dict", "fingerprint")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint's payload, loaded with ``weights_only=True``; anything that is not a complete branchy
    checkpoint (text, another pickle, a damaged file, missing keys) is refused in one line."""
    path = Path(path)
    if not path.is_file():
        hint = f" ({str(path)!r} is a folder: give the model.pt inside it)" if path.is_dir() else ""
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}{hint}; train one with `branchy train --out DIR`")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes: the error below says it all
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds here; never pass on its weights_only advice
        raise ValueError(f"{path} is not a readable branchy checkpoint (torch could not read it as weights: "
                         f"{_load_failure(e)}): give a file written by `branchy train`") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a branchy checkpoint (no '{CHECKPOINT_FORMAT}' header): give a file "
                         f"written by `branchy train`")
    version = payload.get("version", 0)
    if not isinstance(version, int):
        raise ValueError(f"{path} has a damaged checkpoint version {version!r}: write it again with `branchy train`")
    if version > CHECKPOINT_VERSION:
        raise ValueError(f"{path} has checkpoint version {payload['version']}, newer than this toolkit's "
                         f"{CHECKPOINT_VERSION}: upgrade branchy-study")
    missing = [k for k in CHECKPOINT_KEYS if k not in payload]
    if missing:
        raise ValueError(f"{path} is an incomplete branchy checkpoint (no {', '.join(missing)}): write it again "
                         f"with `branchy train`")
    if not isinstance(payload["state_dict"], dict) or not isinstance(payload["model_config"], dict):
        raise ValueError(f"{path} is a damaged branchy checkpoint (state_dict or model_config is not a mapping): "
                         f"write it again with `branchy train`")
    return payload


def _load_failure(e: BaseException) -> str:
    """A short, safe reason for a failed ``torch.load`` (torch's own text advises ``weights_only=False``)."""
    if isinstance(e, EOFError):
        return "the file is empty or cut short"
    if type(e).__name__ == "UnpicklingError":
        return "it holds Python objects that are not tensors or plain data"
    if isinstance(e, RuntimeError) and "zip" in str(e).lower():
        return "a damaged archive"
    return f"not a torch file ({type(e).__name__})"


def load_checkpoint(path: str | os.PathLike, *, expect: ModelConfig | str | None = None,
                    device: str | torch.device = "cpu") -> tuple[BranchyNet, dict]:
    """Rebuild the model from the checkpoint alone; ``expect`` (a model name or config) refuses a
    checkpoint of another model. Returns ``(model in eval mode, checkpoint metadata)``."""
    payload = read_checkpoint(path)
    try:
        cfg = ModelConfig.from_dict(payload["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is a damaged branchy checkpoint (its model_config lacks or garbles "
                         f"{e}): write it again with `branchy train`") from None
    if expect is not None:
        want = expect if isinstance(expect, ModelConfig) else None
        name = expect.name if isinstance(expect, ModelConfig) else str(expect)
        if cfg.name != name or (want is not None and want != cfg):
            raise ValueError(f"{path} holds a {cfg.name} (exits {list(cfg.exits)}, {cfg.in_channels}x"
                             f"{cfg.image_size[0]}x{cfg.image_size[1]}, {cfg.num_classes} classes), not the "
                             f"expected {want if want else name}: pass the checkpoint of the right model")
    model = build_from_config(cfg)
    sd = payload["state_dict"]
    if weights_fingerprint(sd) != payload["fingerprint"]:
        raise ValueError(f"{path}: the weights do not match the fingerprint stored with them (corrupt file?)")
    load_weights(model, sd, source=str(path))
    model.to(device).eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, meta


def load_weights(model: BranchyNet, state_dict: dict, *, source: str = "state dict") -> None:
    """``load_state_dict`` with a message that names the mismatch instead of a wall of keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    extra = sorted(set(state_dict) - set(own))
    shape = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or extra or shape:
        detail = "; ".join(x for x in [
            f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
            f"{len(extra)} unexpected (e.g. {extra[0]})" if extra else "",
            f"{len(shape)} of another shape (e.g. {shape[0]}: {tuple(state_dict[shape[0]].shape)} vs "
            f"{tuple(own[shape[0]].shape)})" if shape else ""] if x)
        raise ValueError(f"{source} is from another model than {model.config.name} with exits "
                         f"{list(model.config.exits)}: {detail}")
    model.load_state_dict(state_dict)


def _load_trunk(model: BranchyNet, path: str) -> None:
    """Take the trunk (stages and final exit) from a checkpoint of the same backbone and exits."""
    payload = read_checkpoint(path)
    sd = payload["state_dict"]
    k = model.num_exits
    own = model.state_dict()
    take = {n: v for n, v in sd.items() if n.startswith("stages.") or n.startswith(f"exits.{k - 1}.")}
    missing = [n for n in own if (n.startswith("stages.") or n.startswith(f"exits.{k - 1}.")) and n not in take]
    bad = [n for n, v in take.items() if n not in own or own[n].shape != v.shape]
    if missing or bad:
        raise ValueError(f"{path} does not hold the trunk of this {model.config.name} with exits "
                         f"{list(model.config.exits)} ({len(missing)} trunk tensors missing, {len(bad)} mismatched)")
    model.load_state_dict(take, strict=False)


def with_updates(cfg: TrainConfig, **kw) -> TrainConfig:
    return replace(cfg, **kw)
