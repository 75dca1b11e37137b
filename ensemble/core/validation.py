"""Rules for one value each: the checks every spec dataclass runs beside its fields.

Every message has one shape: ``"{key} must be {rule}. Received: {key}={value!r}"``; the spec
loader puts the file and section in front (``members/cpu/x.toml: schedule.epochs must be …``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ensemble.core.errors import ConfigError


def require(condition: bool, key: str, rule: str, value: Any) -> None:
    """Raise a :class:`ConfigError` saying what ``key`` must be, unless ``condition`` holds.

    Args:
        condition: the rule holds.
        key: the setting's name as the user writes it (e.g. ``"learning_rate"``).
        rule: what the value must be (e.g. ``"> 0"``, ``"one of ['a', 'b']"``).
        value: the value received.

    Raises:
        ConfigError: ``"{key} must be {rule}. Received: {key}={value!r}"``.

    Example:
        >>> require(3 >= 1, "epochs", ">= 1", 3)
    """
    if not condition:
        raise ConfigError(f"{key} must be {rule}. Received: {key}={value!r}")


def check_range(
    owner: Any,
    key: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Require ``owner.<key>`` to lie between ``low`` and ``high`` (inclusive unless ``*_open``).

    Raises:
        ConfigError: the value is outside the range; the rule is written as ``>= 1``, ``> 0``
            or ``in [0, 1)``.
    """
    value = getattr(owner, key)
    above = low is None or (value > low if low_open else value >= low)
    below = high is None or (value < high if high_open else value <= high)
    if high is None:
        rule = f"{'>' if low_open else '>='} {low:g}"
    elif low is None:
        rule = f"{'<' if high_open else '<='} {high:g}"
    else:
        rule = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    require(above and below, key, rule, value)


def check_choice(owner: Any, key: str, choices: Iterable[str]) -> None:
    """Require ``owner.<key>`` to be one of ``choices``.

    Raises:
        ConfigError: ``"{key} must be one of [...]. Received: ..."``.
    """
    choices = list(choices)
    value = getattr(owner, key)
    require(value in choices, key, f"one of {choices}", value)
