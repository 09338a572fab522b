"""Facades that import a name's module only when the name is first used (PEP 562), so that a light
part of a package (the cache reader, timing) does not pull in torch."""
from __future__ import annotations

from importlib import import_module
from typing import Callable

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[list[str], Callable, Callable]:
    """``(__all__, __getattr__, __dir__)`` for ``package``, whose public name ``n`` lives in the submodule
    ``exports[n]`` (relative to ``package``). Assign them at the facade's top level."""

    def __getattr__(name: str):
        if name in exports:
            value = getattr(import_module(f".{exports[name]}", package), name)
            import_module(package).__dict__[name] = value  # looked up once
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(exports) | set(import_module(package).__dict__))

    return sorted(exports), __getattr__, __dir__
