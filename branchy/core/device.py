"""The torch device a name asks for (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), checked before use."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .paths import SetupError

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICES", "check_device", "resolve_device"]

DEVICES = "auto, cpu, cuda, cuda:N (N a GPU index) or mps"
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(name: str, device) -> None:
    """Refuse a device string :func:`resolve_device` cannot use (``tpu``, ``cuda:x``), naming the valid ones."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ValueError(f"{name} must be one of {DEVICES}, got {device!r}")


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device ``device`` names (``auto``: cuda when present, else cpu); a name that is not one of
    :data:`DEVICES` is a ValueError, cuda without CUDA a :class:`SetupError`."""
    import torch  # here, so that checking a name needs no torch

    check_device("device", device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SetupError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
    return torch.device(device)
