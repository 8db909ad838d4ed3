"""Argument checks run in constructors: one message shape, naming the argument and the value."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

__all__ = ["check_choice", "check_int", "check_positive_number"]


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    none: str | None = None,
    optional: bool = False,
) -> Any:
    """``value`` if it is an int (not a bool) in ``[minimum, maximum]``; or None when ``optional``, or when
    ``none`` says what None means (e.g. ``"keep all"``, then named in the message).

    Raises:
        ValueError: e.g. ``keep_last must be an int >= 1, or None to keep all (got keep_last=0)``.
    """
    if value is None and (optional or none is not None):
        return None
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and ((minimum is not None and value < minimum) or (maximum is not None and value > maximum)):
        ok = False
    if not ok:
        bounds = [f">= {minimum}"] if minimum is not None else []
        bounds += [f"<= {maximum}"] if maximum is not None else []
        expected = "an int" + (" " + " and ".join(bounds) if bounds else "")
        if none is not None:
            expected += f", or None to {none}"
        raise ValueError(f"{name} must be {expected} (got {name}={value!r})")
    return value


def check_positive_number(name: str, value: Any, *, optional: bool = False) -> Any:
    """``value`` if it is a finite int or float > 0 (not a bool), or None when ``optional``.

    Raises:
        ValueError: e.g. ``every_n_seconds must be a finite number > 0 (got every_n_seconds=0)``.
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0 (got {name}={value!r})")
    return value


def check_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    """``value`` if it is one of ``choices``.

    Raises:
        ValueError: e.g. ``policy must be one of 'a', 'b' (got policy='c')``.
    """
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))} (got {name}={value!r})")
    return value
