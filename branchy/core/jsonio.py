"""Standard JSON with non-finite floats as strings (``"inf"``, ``"-inf"``, ``"nan"``), written atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .atomic import atomic_write

__all__ = ["NONFINITE", "json_safe", "json_float", "read_json_object", "write_json"]


#: How a non-finite float is written to JSON (which has no Infinity or NaN): as one of these strings.
NONFINITE = {"inf": np.inf, "-inf": -np.inf, "nan": np.nan}
_OLD_NONFINITE = {"infinity": np.inf, "+infinity": np.inf, "-infinity": -np.inf, "+inf": np.inf}


def json_safe(obj):
    """``obj`` with every non-finite float replaced by ``"inf"``, ``"-inf"`` or ``"nan"`` (standard JSON).

    Args:
        obj: a JSON-like value (dicts, lists and tuples are walked; tuples come back as lists).

    >>> json_safe({"t": (0.5, float("inf")), "n": [float("nan")]})
    {'t': [0.5, 'inf'], 'n': ['nan']}
    """
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not np.isfinite(obj):
        return "nan" if np.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def json_float(v) -> float:
    """A number read back from JSON: a number, or ``"inf"`` / ``"-inf"`` / ``"nan"`` (written by
    :func:`write_json`); the old non-standard ``Infinity`` literal is parsed by ``json`` itself.

    Args:
        v: the value read from JSON.

    Raises:
        ValueError: ``v`` is neither a number nor one of those strings (a bool is not a number here).

    >>> json_float("inf"), json_float(3)
    (inf, 3.0)
    >>> json_float(True)
    Traceback (most recent call last):
    ValueError: not a number: True
    """
    if isinstance(v, str):
        key = v.strip().lower()
        if key in NONFINITE or key in _OLD_NONFINITE:
            return float(NONFINITE.get(key, _OLD_NONFINITE.get(key)))
        raise ValueError(f"not a number: {v!r} (want a number, or \"inf\" / \"-inf\")")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"not a number: {v!r}")
    return float(v)


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write standard JSON (infinities as the strings ``"inf"`` / ``"-inf"``, see :func:`json_safe`) to a
    temporary file and rename it into place (never a half-written file)."""
    return atomic_write(path, json.dumps(json_safe(obj), indent=2, allow_nan=False))


def read_json_object(path: Path, *, what: str, fix: str, error: type[Exception] = ValueError) -> dict:
    """The JSON object in the file ``path`` (a missing file is the caller's to explain).

    Args:
        path: the file.
        what: what the file should be, for the message (``"a cache manifest"``).
        fix: what to do about it, ending the message.
        error: the exception class to raise.

    Raises:
        error: the file is not valid JSON (or not UTF-8), or holds something other than a JSON object.
    """
    try:
        value = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise error(f"{path} is not valid JSON ({type(e).__name__}): {fix}") from None
    if not isinstance(value, dict):
        raise error(f"{path} is not {what} (a JSON object expected, found a {type(value).__name__}): {fix}")
    return value
