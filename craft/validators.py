"""attrs validators shared by the configs of every layer.

Messages leave out the key: the config loader prefixes its dotted path
(``train.steps: must be >= 1, got 0``); built in Python, the traceback shows
the call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Validator = Callable[[Any, Any, Any], None]


def at_least(low: int) -> Validator:
    """``value >= low``; ``None`` (an option left off) passes."""

    def check(instance, attribute, value) -> None:
        if value is not None and value < low:
            raise ValueError(f"must be >= {low}, got {value}")

    return check


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Validator:
    """``low <= value <= high``, each end open when asked; ``None`` passes."""
    shown = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"

    def check(instance, attribute, value) -> None:
        if value is None:
            return
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):
            raise ValueError(f"must be in {shown}, got {value}")

    return check


def one_of(*choices: object) -> Validator:
    def check(instance, attribute, value) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(map(repr, choices))}, got {value!r}")

    return check


def not_empty(instance, attribute, value: str) -> None:
    if not value:
        raise ValueError("must not be empty")
