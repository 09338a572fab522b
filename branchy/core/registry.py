"""A tiny timm/torchvision-style registry: ``register`` / ``get`` / ``names``, open to plugins: a package
installed with an entry point in the registry's group (``branchy.datasets``, ``branchy.models``, ...) adds its
names the first time the registry is asked."""
from __future__ import annotations

import difflib
import warnings
from importlib.metadata import entry_points
from types import ModuleType
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


def closest(word: str, known) -> str | None:
    """The known name most like ``word`` (difflib, similarity >= 0.6), or None: the "did you mean" of every
    unknown-name message."""
    match = difflib.get_close_matches(str(word), [str(k) for k in known], n=1, cutoff=0.6)
    return match[0] if match else None


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class Registry(Generic[T]):
    """Named factories of one kind (backbones, datasets, predictors, profiles, ...).

    >>> SHAPES = Registry("shape")
    >>> @SHAPES.register("square", doc="four equal sides")
    ... def square(side: float) -> float:
    ...     return side * side
    >>> SHAPES.names(), SHAPES.get("Square")(3)
    (['square'], 9)
    >>> SHAPES.get("circle")
    Traceback (most recent call last):
    branchy.core.registry.UnknownNameError: unknown shape 'circle'; known: square
    """

    def __init__(self, kind: str, *, ordered: bool = False, plugins: str | None = None) -> None:
        """``ordered``: :meth:`names` lists in registration order (the order tables, plots and the CLI show),
        instead of sorted. ``plugins``: the entry-point group whose plugins are loaded on first use (see
        :meth:`load_plugins`)."""
        self.kind = kind
        self.ordered = ordered
        self.plugins = plugins
        self._plugins_loaded = plugins is None
        self._items: dict[str, T] = {}
        self._docs: dict[str, str] = {}

    def load_plugins(self) -> None:
        """Load every entry point of the group ``self.plugins`` once. An entry point that names a module
        registers its items on import (``@DATASETS.register("name")``); one that names an object is registered
        under the entry point's name. A plugin that fails to load, or whose name is taken (a built-in wins), is
        skipped with one warning naming it."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True  # before loading: a plugin may use this registry while it loads
        for ep in entry_points(group=self.plugins):
            try:
                obj = ep.load()
                if not isinstance(obj, ModuleType) and self._items.get(ep.name.lower()) is not obj:
                    self.register(ep.name, obj)  # a taken name raises: the warning below says so
            except Exception as e:  # noqa: BLE001 - a broken plugin must not break the toolkit
                warnings.warn(f"{self.kind} plugin {ep.name!r} ({ep.value}, group {self.plugins}) did not load: "
                              f"{type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)

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
        self.load_plugins()
        key = str(name).lower()
        if key not in self._items:
            known = ", ".join(self.names()) or "(none)"
            close = closest(key, self._items)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}{hint}")
        return self._items[key]

    def names(self) -> list[str]:
        self.load_plugins()
        return list(self._items) if self.ordered else sorted(self._items)

    def describe(self) -> dict[str, str]:
        """``{name: one-line description}`` for listings."""
        return {n: self._docs[n] for n in self.names()}

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return str(name).lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.load_plugins()
        return len(self._items)


__all__ = ["Registry", "T", "UnknownNameError", "closest"]
