"""Optional parts of the toolkit behind pip extras (``setup.cfg [options.extras_require]``): importing one that
is not installed is a one-line :class:`MissingExtraError` naming the extra that installs it."""
from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec
from types import ModuleType

from .paths import SetupError

PROJECT = "branchy-study"  # the distribution name in setup.cfg


class MissingExtraError(SetupError, ImportError):
    """An optional package is not installed; the message says which extra installs it (a SetupError for the CLI's
    one-line errors, an ImportError for code that catches those)."""


def extra_hint(extra: str) -> str:
    """``pip install 'branchy-study[EXTRA]'``."""
    return f"pip install '{PROJECT}[{extra}]'"


def require_extra(module: str, *, extra: str, purpose: str) -> ModuleType:
    """``import module``, or :class:`MissingExtraError` ``"<purpose> needs <module>: pip install
    'branchy-study[<extra>]'"`` when that module (not something it imports in turn) is not installed."""
    try:
        return import_module(module)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != module.split(".")[0]:
            raise  # the package is there but broken: its own error says more
        raise MissingExtraError(f"{purpose} needs {module.split('.')[0]}, which is not installed: "
                                f"{extra_hint(extra)}") from None


def check_extra(module: str, *, extra: str, purpose: str) -> None:
    """:class:`MissingExtraError` now when ``module`` is not installed (found without importing it), so a config
    that will need it fails before any work, not after training."""
    if find_spec(module.split(".")[0]) is None:
        raise MissingExtraError(f"{purpose} needs {module.split('.')[0]}, which is not installed: {extra_hint(extra)}")


__all__ = ["MissingExtraError", "PROJECT", "check_extra", "extra_hint", "require_extra"]
