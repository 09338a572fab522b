"""Checkpoint I/O: a branchy net saved with its full config and weights fingerprint, rebuilt from the file
alone, with one-line refusals of anything that is not a complete branchy checkpoint."""
from __future__ import annotations

import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..core import atomic_path, check_version, check_writable, to_plain
from ..data import DataConfig, Splits
from ..models import BranchyNet, ModelConfig, build_from_config, legacy_final_node, weights_fingerprint

CHECKPOINT_FORMAT = "branchy-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_KEYS = ("model_config", "state_dict", "fingerprint")


def save_checkpoint(model: BranchyNet, path: str | os.PathLike, *, configs: dict[str, Any] | None = None,
                    splits: Splits | None = None) -> Path:
    """Weights, full config and weights fingerprint; written to a temp file then renamed (atomic).
    ``configs`` (``{"train_config": TrainConfig, "backbone_config": ..., "data_config": ...}``, any dataclasses)
    are stored as plain dicts."""
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
        **{k: to_plain(v) for k, v in (configs or {}).items()},
        "dataset_info": splits.info.to_dict() if splits else None,
        "dataset_fingerprint": splits.fingerprint() if splits else None,
        "torch_version": str(torch.__version__),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


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
                         f"{torch_load_failure(e)}): give a file written by `branchy train`") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a branchy checkpoint (no '{CHECKPOINT_FORMAT}' header): give a file "
                         f"written by `branchy train`")
    check_version(str(path), "checkpoint", payload.get("version", 0), reads=range(0, CHECKPOINT_VERSION + 1),
                  fix="write it again with `branchy train`")
    missing = [k for k in CHECKPOINT_KEYS if k not in payload]
    if missing:
        raise ValueError(f"{path} is an incomplete branchy checkpoint (no {', '.join(missing)}): write it again "
                         f"with `branchy train`")
    if not isinstance(payload["state_dict"], dict) or not isinstance(payload["model_config"], dict):
        raise ValueError(f"{path} is a damaged branchy checkpoint (state_dict or model_config is not a mapping): "
                         f"write it again with `branchy train`")
    return payload


def torch_load_failure(e: BaseException) -> str:
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
    sd = payload["state_dict"]
    if weights_fingerprint(sd) != payload["fingerprint"]:
        raise ValueError(f"{path}: the weights do not match the fingerprint stored with them (corrupt file?)")
    model = _rebuild(cfg, sd)
    load_weights(model, sd, source=str(path))
    model.to(device).eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, meta


def _rebuild(cfg: ModelConfig, sd: dict) -> BranchyNet:
    """The architecture of ``cfg`` for state_dict ``sd``. A torchvision checkpoint written by 0.2 with the default
    final node split the head where 0.2's default did (:func:`branchy.models.legacy_final_node`): rebuilt so."""
    model = build_from_config(cfg)
    o = cfg.options
    if cfg.name != "torchvision" or o.get("final_node") is not None or set(model.state_dict()) == set(sd):
        return model
    old = replace(cfg, options={**o, "final_node": legacy_final_node(o.get("arch", "resnet18"), cfg.num_classes,
                                                                       o.get("arch_kwargs"))})
    legacy = build_from_config(old)
    if set(legacy.state_dict()) != set(sd):
        return model  # neither fits: load_weights names the mismatch
    legacy.config = cfg
    return legacy


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


def load_trunk(model: BranchyNet, path: str | os.PathLike) -> None:
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


def data_config_of(meta: dict) -> DataConfig | None:
    """The :class:`DataConfig` a checkpoint was trained on (``None`` if it does not say); checkpoints written
    before configs were split keep the data settings inside ``train_config``."""
    if meta.get("data_config"):
        d = dict(meta["data_config"])
        return DataConfig(**{**d, "options": dict(d.get("options") or {})})
    tc = meta.get("train_config") or {}
    if not tc.get("dataset"):
        return None
    return DataConfig(tc["dataset"], root=tc.get("data_root") or "data", path=tc.get("data_path"),
                      download=bool(tc.get("download", False)), seed=int(tc.get("seed", 0)))


__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_KEYS", "CHECKPOINT_VERSION", "data_config_of", "load_checkpoint",
           "load_trunk", "load_weights", "read_checkpoint", "save_checkpoint", "torch_load_failure"]
