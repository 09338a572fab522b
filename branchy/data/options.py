"""Dataset loader options: read as their types and range-checked before any work (one rule for every loader)."""
from __future__ import annotations

import inspect
import math


from ..core import check_int, typed_options as core_typed_options


def typed_options(fn, options: dict, name: str | None = None) -> dict:
    """``options`` of dataset loader ``fn`` read as its parameters' types (:func:`branchy.core.typed_options`, the
    rules of every config field), ``seed`` a whole number >= 0, then checked by the loader's own
    ``check_options`` (if it has one; called with every option, defaults filled in) before any work. A bad value
    is a one-line ValueError ``NAME dataset option KEY: ...``."""
    label = name or getattr(fn, "dataset_name", None) or getattr(fn, "__name__", "?")
    params = inspect.signature(fn).parameters
    out = core_typed_options(fn, options, f"{label} dataset")
    try:
        if "seed" in out and "seed" in params:
            check_int("seed", out["seed"], 0)
        check = getattr(fn, "check_options", None)
        if check is not None:
            check({**{k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}, **out})
    except ValueError as e:
        raise ValueError(f"{label} dataset option {e}") from None
    return out


def own_options(fn, values: dict) -> dict:
    """The loader's own arguments (``values``: its ``locals()``) typed and checked by :func:`typed_options`."""
    return typed_options(fn, {k: values[k] for k in inspect.signature(fn).parameters})


def min_per_class(fractions: tuple[float, float, float]) -> int:
    """Samples each class needs for the stratified train/calib/test split by ``fractions``: two left after
    train is taken (so calib/test can be stratified) and one expected in each of calib and test."""
    _, f_calib, f_test = fractions
    eps = 1e-9
    return max(2, math.ceil(2 / (f_calib + f_test) - eps), math.ceil(1 / f_calib - eps), math.ceil(1 / f_test - eps))


def fractions_ok(fractions) -> tuple[float, ...] | None:
    """``fractions`` as three positive floats summing to 1, or None."""
    try:
        fr = tuple(float(v) for v in fractions)
    except (TypeError, ValueError):
        return None
    if len(fr) != 3 or not all(math.isfinite(v) and v > 0 for v in fr) or abs(sum(fr) - 1) > 1e-6:
        return None
    return fr


__all__ = ["fractions_ok", "min_per_class", "own_options", "typed_options"]
