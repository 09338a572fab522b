"""Configs defined once. Every setting is a field of a frozen dataclass with its default, its help text and its
checks (``__post_init__``); the same class is read from a study's YAML (:func:`from_mapping`), turned into
command-line options (:func:`add_arguments` / :func:`from_arguments`) and used by the API. A new field appears in
all three at once.

A field's metadata (set with :func:`setting`): ``help``; ``cli``, the flag (default ``--field-name``; ``False``:
not on the command line); ``choices``, a function returning the known names (a registry's ``names``)."""
from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any, Callable

import numpy as np

from .registry import closest


class ConfigError(ValueError):
    """A config that cannot run; the message names the field and what to fix."""


def setting(default: Any = dataclasses.MISSING, help: str = "", *, cli: str | tuple[str, ...] | bool | None = None,
            choices: Callable[[], list[str]] | None = None) -> Any:
    """A dataclass field with its help text, command-line flag and choices. ``cli``: the flag (default
    ``--field-name``), or a tuple whose first flag is the name and the others old names kept as deprecated aliases;
    False: no flag. A mutable default (dict, list) is copied for every instance."""
    meta = {"help": help, "cli": cli, "choices": choices}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- checks used by __post_init__
def is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def check_int(name: str, v, low: int | None = None) -> None:
    """Refuse a setting that is not a whole number >= ``low`` (``2.5``, ``True``, ``'3'``)."""
    if not is_int(v) or (low is not None and v < low):
        kind = "" if is_int(v) else f" ({type(v).__name__})"
        rule = f" >= {low}" if low is not None else ""
        raise ValueError(f"{name} must be a whole number{rule}, got {v!r}{kind}")


def check_number(name: str, v, rule: str, ok: Callable[[float], bool], example: str = "") -> None:
    """Refuse a setting that is not a finite real number satisfying ``ok`` (NaN is refused)."""
    if not is_real(v) or not math.isfinite(float(v)) or not ok(float(v)):
        raise ValueError(f"{name} must be a finite number {rule}, got {v!r}" + (f"; {example}" if example else ""))


def check_name(name: str, registry, v) -> None:
    """Refuse a name ``registry`` does not hold, listing the known ones (as a ValueError)."""
    if not isinstance(v, str) or v not in registry:
        raise ValueError(f"{name}: unknown {registry.kind} {v!r}; known: {', '.join(registry.names()) or '(none)'}")


# ----------------------------------------------------------------------------- YAML / mappings
def did_you_mean(wrong, known) -> str:
    """`` (did you mean 'epochs' for 'epoch'?)`` for each of ``wrong`` with a close match among ``known``; empty
    when there is none.

    >>> did_you_mean(["epoch", "zzz"], ["epochs", "lr"])
    " (did you mean 'epochs' for 'epoch'?)"
    """
    known = list(known)
    said = [f"{m!r} for {str(w)!r}" for w in wrong if (m := closest(w, known))]
    return f" (did you mean {', '.join(said)}?)" if said else ""


def from_mapping(cls, raw, where: str):
    """``cls`` built from a mapping (a parsed YAML section): unknown keys refused, values read as the fields'
    annotated types, nested dataclass fields built the same way, and the class's own checks run; every
    error names ``where.field``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {type(raw).__name__} {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, raw)) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(fields)}{did_you_mean(unknown, fields)}")
    missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and n not in raw]
    if missing:
        raise ConfigError(f"{where}: missing required field(s) {missing}")
    hints = typing.get_type_hints(cls)
    kw = {name: coerce_value(value, hints[name], f"{where}.{name}" if where else name) for name, value in raw.items()}
    try:
        return cls(**kw)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, OSError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        raise ConfigError(f"{where}: {msg}" if where else msg) from None


def coerce_value(value, hint, where: str):
    """``value`` read as the field's annotated type: numbers written as strings (YAML 1.1 reads ``3e-3`` as one)
    converted, a scalar where a list goes taken as a one-element list, a nested dataclass built, anything else
    that does not fit refused with the field named."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_mapping(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce_value(value, inner[0], where) if len(inner) == 1 else value
    if origin is tuple:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else typing.Any
        return tuple(coerce_value(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint in (int, float):
        what = "an integer" if hint is int else "a number"
        if isinstance(value, str):
            try:
                value = float(value) if hint is float else int(value)
            except ValueError:
                raise ConfigError(f"{where}: expected {what}, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected {what}, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        if hint is int and value != int(value):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value) if hint is int else float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def read_yaml(path, what: str = "config"):
    """The parsed YAML file at ``path``; a missing file or bad YAML is a one-line error naming it."""
    from pathlib import Path

    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no {what} at {str(p)!r}")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from e


def to_plain(v):
    """A config as plain YAML/JSON data (dicts, lists, scalars)."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: to_plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, dict):
        return {k: to_plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_plain(x) for x in v]
    return v


# ----------------------------------------------------------------------------- command line
def _flags(f: dataclasses.Field) -> tuple[str, ...]:
    """The field's command-line flags: its name first, then deprecated aliases; none when ``cli=False``."""
    cli = f.metadata.get("cli")
    if cli is False:
        return ()
    if isinstance(cli, tuple):
        return cli
    return (cli or "--" + f.name.replace("_", "-"),)


def _dest(cls, name: str) -> str:
    return f"{cls.__name__}.{name}"


def _scalar(kind, nullable: bool, choices):
    def parse(s: str):
        if nullable and s.lower() in ("none", "null"):
            return None
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not {'an integer' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{s} is not a finite number")
        if choices is not None and v not in (known := choices()):
            raise argparse.ArgumentTypeError(f"unknown value {s!r}; known: {', '.join(known)}"
                                             f"{did_you_mean([s], known)}")
        return v
    parse.__name__ = {int: "integer", float: "number"}.get(kind, "value")
    return parse


def _listing(kind, choices):
    one = _scalar(kind, False, choices)

    def parse(s: str) -> tuple:
        return tuple(one(v) for v in s.replace(",", " ").split())
    parse.__name__ = f"list of {one.__name__}s"
    return parse


class _KeyValue(argparse.Action):
    """Repeatable ``KEY=VALUE`` (the value read as YAML: ``depth=56`` gives an int) into one dict."""

    def __call__(self, parser, ns, value, option_string=None):
        import yaml

        if "=" not in value:
            parser.error(f"{option_string} wants KEY=VALUE, got {value!r}")
        k, v = value.split("=", 1)
        d = dict(getattr(ns, self.dest, None) or {})
        try:
            d[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError:
            d[k.strip()] = v
        setattr(ns, self.dest, d)


def add_arguments(parser, cls, *, only: tuple[str, ...] | None = None, exclude: tuple[str, ...] = (),
                  title: str | None = None) -> None:
    """One option per field of ``cls`` (``only`` these, less ``exclude``), typed from its annotation, with its
    help, choices and default. Options left out keep the dataclass default (or the ``base`` given to
    :func:`from_arguments`)."""
    target = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flags = _flags(f)
        if not flags or f.name in exclude or (only is not None and f.name not in only):
            continue
        hint, nullable = hints[f.name], False
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            inner = [a for a in typing.get_args(hint) if a is not type(None)]
            hint, nullable = inner[0], True
        choices = f.metadata.get("choices")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        shown = "none" if default is None else (",".join(map(str, default)) if isinstance(default, tuple)
                                                else default)
        text = f.metadata.get("help", "").replace("%", "%%")  # plain text: argparse %-formats help
        if choices is not None:
            text += f" [{', '.join(choices())}]"
        kw: dict[str, Any] = {"dest": _dest(cls, f.name), "default": argparse.SUPPRESS, "metavar": f.name.upper()}
        if hint is bool:
            kw.pop("metavar")
            kw.update(action=argparse.BooleanOptionalAction, help=f"{text} (default: {'yes' if default else 'no'})")
        elif hint is dict or typing.get_origin(hint) is dict:
            kw.update(action=_KeyValue, metavar="KEY=VALUE", help=f"{text} (repeatable)")
        elif typing.get_origin(hint) is tuple:
            kind = (typing.get_args(hint) or (str,))[0]
            kw.update(type=_listing(kind, choices),
                      help=f"{text} (comma-separated; default: {shown})")
        else:
            kw.update(type=_scalar(hint, nullable, choices), help=f"{text} (default: {shown})")
        action = target.add_argument(*flags, **kw)
        action.deprecated_flags = flags[1:]  # old names: the command notes the new one when they are used


def from_arguments(cls, ns: argparse.Namespace, base=None, **fixed):
    """``cls`` from the options :func:`add_arguments` added: the fields given on the command line replace those
    of ``base`` (default: the dataclass defaults); ``fixed`` fields are set by the caller."""
    given = {f.name: getattr(ns, _dest(cls, f.name)) for f in dataclasses.fields(cls)
             if hasattr(ns, _dest(cls, f.name))}
    given.update(fixed)
    try:
        return dataclasses.replace(base, **given) if base is not None else cls(**given)
    except ValueError as e:  # name the option the message is about
        msg = str(e)
        for f in dataclasses.fields(cls):
            if f.name in given and f.name not in fixed and msg.startswith(f.name) and _flags(f):
                raise ConfigError(f"{_flags(f)[0]}: {msg}") from None
        raise


__all__ = ["ConfigError", "add_arguments", "check_int", "check_name", "check_number", "coerce_value", "did_you_mean",
           "from_arguments", "from_mapping", "is_int", "is_real", "read_yaml", "setting", "to_plain"]
