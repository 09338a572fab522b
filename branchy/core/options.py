"""Keyword options of a function (a dataset loader, a backbone builder) read as their types by the rules of
every config field (:func:`branchy.core.config.coerce_value`), so every option in the toolkit is read one way."""
from __future__ import annotations

import collections.abc
import inspect
import types
import typing

from .config import ConfigError, coerce_value

__all__ = ["OptionError", "option_hints", "typed_options"]


class OptionError(ValueError):
    """A keyword option of the wrong type; ``key`` names it."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


def option_hints(fn) -> dict:
    """The type of each keyword option of ``fn``: its annotation, else the type of its default (``depth=20``
    is an int); an option with neither (or annotations that do not resolve) is left out, so it passes
    unchanged."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # a user's function whose annotations do not resolve: its options pass untyped
        hints = {}
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in hints:
            out[name] = hints[name]
        elif type(p.default) in (bool, int, float, str, dict):
            out[name] = type(p.default)
        elif isinstance(p.default, (list, tuple)):
            out[name] = tuple
    return out


def typed_options(fn, options: dict, label: str) -> dict:
    """``options`` (keyword arguments of ``fn``) read as their types (:func:`option_hints`) by the rules of every
    config field (:func:`coerce_value`: ``'3'`` is 3, ``'0.5'`` is 0.5, a bool is only true or false, a whole
    number where an int goes; a comma-separated string where a list goes is split first). Options ``fn`` does
    not type, or does not take, pass unchanged.

    Args:
        fn: the function whose keyword options these are (a dataset loader, a backbone builder).
        options: ``{name: value}``, as a YAML file or the command line gives them.
        label: what the error message calls ``fn`` (``"b-resnet"``, ``"cifar10 dataset"``).

    Raises:
        OptionError: a value of the wrong type (a ValueError; ``.key`` names the option).

    >>> def net(*, depth: int = 20, nodes: tuple[str, ...] = ("a",), pretrained=False): ...
    >>> typed_options(net, {"depth": "56", "nodes": "l1,l2", "pretrained": True}, "net")
    {'depth': 56, 'nodes': ('l1', 'l2'), 'pretrained': True}
    >>> typed_options(net, {"pretrained": "yes"}, "net")
    Traceback (most recent call last):
    branchy.core.options.OptionError: net option pretrained: expected true or false, got 'yes'
    """
    hints = option_hints(fn)
    out = {}
    for key, value in options.items():
        hint = hints.get(key)
        if hint is None:
            out[key] = value
            continue
        inner = [a for a in typing.get_args(hint) if a is not type(None)] \
            if typing.get_origin(hint) in (typing.Union, types.UnionType) else [hint]
        listy = len(inner) == 1 and (inner[0] in (list, tuple) or typing.get_origin(inner[0]) in (
            list, tuple, collections.abc.Sequence))
        if listy and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]  # as the command line reads a list
        try:
            out[key] = coerce_value(value, hint, key)
        except ConfigError as e:
            raise OptionError(f"{label} option {e}", key) from None
    return out
