"""Initial weights from a local file (a backbone's ``weights=PATH`` option): a ``state_dict`` saved with
``torch.save(net.state_dict(), PATH)``, read with ``torch.load(weights_only=True)`` (no code runs) and loaded
strictly, every mismatch named with the fix; the file's SHA-256 is recorded so configs, checkpoints and caches
say which weights they started from."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

SAVE_HINT = "save one with torch.save(net.state_dict(), PATH)"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (64 hex) of the file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_weights_file(path: str | os.PathLike, sha256: str | None = None) -> str:
    """The SHA-256 of weights file ``path``; refuses a missing file, and one whose SHA-256 is not ``sha256``
    (when given: the hash a config or checkpoint recorded)."""
    p = Path(path).expanduser()
    if not p.is_file():
        why = "is a folder" if p.is_dir() else "does not exist"
        raise FileNotFoundError(f"weights file {str(path)!r} {why}: give the path of a state_dict file "
                                f"({SAVE_HINT}), or leave weights= out for random initial weights")
    digest = file_sha256(p)
    if sha256 is not None and digest != str(sha256).lower():
        raise ValueError(f"weights file {str(path)!r} has SHA-256 {digest[:16]}..., not the {str(sha256)[:16]}... "
                         f"recorded with these options: the file changed since; restore it, or drop "
                         f"weights_sha256 to start from the file as it is now")
    return digest


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of the state_dict in ``path`` (on the CPU), or a one-line error saying what the file is."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's own text advises weights_only=False: say what to do instead
        why = "it holds Python objects, e.g. a whole model (torch.save(net))" \
            if type(e).__name__ == "UnpicklingError" else f"not a torch file ({type(e).__name__})"
        raise ValueError(f"weights file {str(path)!r} cannot be read as a state_dict: {why}; {SAVE_HINT}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        keys = ", ".join(map(str, list(sd)[:4])) if isinstance(sd, dict) else type(sd).__name__
        raise ValueError(f"weights file {str(path)!r} is not a state_dict of tensors (it holds {keys}; a training "
                         f"checkpoint?): {SAVE_HINT}")
    return sd


def _mismatch(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> list[str]:
    """What differs between the net's state_dict ``own`` and the file's ``sd`` (empty: they fit)."""
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    shape = [k for k in own if k in sd and own[k].shape != sd[k].shape]
    out = []
    if missing:
        out.append(f"{len(missing)} keys missing from the file (e.g. {missing[0]})")
    if extra:
        prefix = " (a 'module.' prefix: saved from DataParallel; save net.module.state_dict())" \
            if all(k.startswith("module.") for k in extra) else ""
        out.append(f"{len(extra)} keys the net does not have (e.g. {extra[0]}){prefix}")
    if shape:
        k = shape[0]
        out.append(f"{len(shape)} tensors of another shape (e.g. {k}: {tuple(sd[k].shape)} in the file, {tuple(own[k].shape)} "
                   f"here; a classifier for another number of classes is the usual cause: replace the last layer "
                   f"with one for the data's classes before saving)")
    return out


def load_weights_file(net: nn.Module, path: str | os.PathLike, *, what: str) -> None:
    """Load the state_dict in ``path`` into ``net`` strictly; ``what`` names the net in errors
    (``"torchvision resnet18 with 10 classes"``)."""
    sd = _read_state_dict(path)
    problems = _mismatch(net.state_dict(), sd)
    if problems:
        raise ValueError(f"weights file {str(path)!r} does not fit the {what}: {'; '.join(problems)}. Save the "
                         f"state_dict of a {what}: torch.save(net.state_dict(), PATH)")
    net.load_state_dict(sd, strict=True)


__all__ = ["check_weights_file", "file_sha256", "load_weights_file"]
