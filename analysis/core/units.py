"""One unit for accuracy-valued settings: **percent** (accuracy, rates) and **points** (differences of accuracies).
``target_acc 99`` means 99 % accuracy, ``false_skip 2`` means 2 % of the samples, ``max_acc_drop 0.5`` half a
point. Until 0.4 a value written the old way, as a fraction (``target_acc 0.99``), is still read, times 100, with
a note saying so (:func:`percent_setting` in the API, a one-line note in the command line)."""
from __future__ import annotations

import math
import warnings

from branchy.core import is_real

UNTIL = "0.4"  # the version that stops reading fractions


def is_fraction(v, *, one_is_fraction: bool = True) -> bool:
    """Whether ``v`` is an accuracy or rate written the old way, as a fraction: in (0, 1] (``one_is_fraction``;
    an accuracy target of 1 % means nothing, so 1 is 100 %) or in (0, 1) (a rate, where 1 % is a real setting)."""
    if not is_real(v) or not math.isfinite(float(v)):
        return False
    v = float(v)
    return 0 < v < 1 or (one_is_fraction and v == 1)


def as_percent(fraction: float) -> float:
    """``fraction`` times 100, without the float residue (0.07 is 7.0, not 7.000000000000001)."""
    return round(100 * float(fraction), 10)


def fraction_note(name: str, v: float) -> str:
    """``target_acc 0.99 read as a fraction (99 %); give percent: 99``."""
    p = as_percent(v)
    return f"{name} {float(v):g} read as a fraction ({p:g} %); give percent: {p:g}"


def percent_setting(name: str, v, *, one_is_fraction: bool = True, stacklevel: int = 3):
    """``v`` in percent: a fraction (see :func:`is_fraction`) is taken times 100 with a ``FutureWarning`` (it is read
    until 0.4); anything else is returned as it is (the caller checks the range)."""
    if not is_fraction(v, one_is_fraction=one_is_fraction):
        return v
    warnings.warn(f"{fraction_note(name, v)} (a fraction is read until {UNTIL})", FutureWarning,
                  stacklevel=stacklevel)
    return as_percent(v)


__all__ = ["UNTIL", "as_percent", "fraction_note", "is_fraction", "percent_setting"]
