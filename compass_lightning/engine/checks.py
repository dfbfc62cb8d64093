"""Argument checks shared by every callback and analysis.

Each check raises a ``ValueError`` (or ``TypeError`` for a wrong type) whose message starts with the
argument's name and says what is accepted, so bad configuration fails at construction, before
training starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from numbers import Integral, Real
from typing import Any


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an ``int`` that is at least ``minimum`` (and at most ``maximum``)."""
    accepted = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    if not _is_int(value):
        raise TypeError(f"{name} must be an integer {accepted}, got {value!r} ({type(value).__name__})")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer {accepted}, got {value}")
    return int(value)


def check_real(
    name: str,
    value: object,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
) -> float:
    """``value`` as a finite ``float`` inside the interval given by ``low``/``high`` (closed unless
    ``*_open``). Infinities are refused whatever the bounds (an infinite budget, range or scale of a
    monitor makes every loss NaN later, not now), unless ``finite=False``: the pure functions take
    ``eps=inf`` (an unbudgeted minimal attack) and unbounded ``bounds`` (embedding space)."""
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if not _is_real(value):
        raise TypeError(f"{name} must be a number in {interval}, got {value!r} ({type(value).__name__})")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if finite and math.isinf(value):
        raise ValueError(f"{name} must be a finite number in {interval}, got {value}")
    if math.isnan(value) or too_low or too_high:
        raise ValueError(f"{name} must be a number in {interval}, got {value}")
    return value


def check_interval(
    name: str,
    value: object,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    strict: bool = True,
    finite: bool = True,
) -> tuple[float, float]:
    """A pair ``(a, b)`` with ``low <= a < b <= high`` (``a <= b`` unless ``strict``; ``low < a`` if ``low_open``)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (low, high), got {value!r}")
    a = check_real(f"{name}[0]", value[0], low=low, high=high, low_open=low_open, finite=finite)
    b = check_real(f"{name}[1]", value[1], low=low, high=high, low_open=low_open, finite=finite)
    if a > b or (strict and a == b):
        relation = "<" if strict else "<="
        raise ValueError(f"{name} must be a pair (low, high) with low {relation} high, got {tuple(value)!r}")
    return a, b


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a ``bool``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_reals(name: str, value: object, **interval: Any) -> tuple[float, ...]:
    """A number or a non-empty list of numbers, each checked by :func:`check_real` with ``interval``."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ValueError(f"{name} must be a number or a non-empty list of numbers")
    return tuple(check_real(f"{name}[{i}]" if len(values) > 1 else name, v, **interval) for i, v in enumerate(values))


# Named checks of the ``(name, value)`` form that registries take for operation parameters.
positive = partial(check_real, low=0.0, low_open=True)
non_negative = partial(check_real, low=0.0)
probability = partial(check_real, low=0.0, high=1.0)
at_least_one = partial(check_int, minimum=1)


def optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """A check that also accepts ``None`` (meaning: derived from other parameters)."""
    return lambda name, value: None if value is None else check(name, value)


def module_name(name: str, value: object) -> str | None:
    """A submodule name (``str``) or ``None`` (the analysis picks a default layer)."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a module name (str) or None, got {value!r}")
    return value
