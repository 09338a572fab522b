"""A tiny timm/torchvision-style registry: ``register`` / ``get`` / ``names``."""
from __future__ import annotations

from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class Registry(Generic[T]):
    """Named factories of one kind (backbones, datasets, predictors, profiles, ...)."""

    def __init__(self, kind: str, *, ordered: bool = False) -> None:
        """``ordered``: :meth:`names` lists in registration order (the order tables, plots and the CLI show),
        instead of sorted."""
        self.kind = kind
        self.ordered = ordered
        self._items: dict[str, T] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, obj: T | None = None, *, doc: str | None = None):
        """Register ``obj`` under ``name``; usable as a decorator. A duplicate name raises."""

        def _add(o: T) -> T:
            key = name.lower()
            if key in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[key] = o
            self._docs[key] = (doc or (getattr(o, "__doc__", None) or "")).strip().split("\n")[0]
            return o

        return _add(obj) if obj is not None else _add

    def get(self, name: str) -> T:
        key = str(name).lower()
        if key not in self._items:
            known = ", ".join(self.names()) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._items[key]

    def names(self) -> list[str]:
        return list(self._items) if self.ordered else sorted(self._items)

    def describe(self) -> dict[str, str]:
        """``{name: one-line description}`` for listings."""
        return {n: self._docs[n] for n in self.names()}

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


__all__ = ["Registry", "T", "UnknownNameError"]
