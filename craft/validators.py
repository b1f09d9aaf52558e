"""attrs validators shared by the configs of every layer.

Messages leave out the key: the config loader prefixes its dotted path
(``train.steps: must be >= 1, got 0``); built in Python, the traceback shows
the call.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import PurePosixPath, PureWindowsPath
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


def divides(field: str) -> Validator:
    """``value`` divides the instance's ``field`` (e.g. ``n_head`` divides ``n_embd``); ``None`` and
    values under 1 pass (``at_least`` reports those)."""

    def check(instance, attribute, value) -> None:
        total = getattr(instance, field)
        if value is not None and value >= 1 and total is not None and total % value:
            raise ValueError(f"must divide {field}={total}, got {value}; pick {field} a multiple of {attribute.name}")

    return check


def not_empty(instance, attribute, value: str) -> None:
    if not value:
        raise ValueError("must not be empty")


def channel_widths(instance, attribute, value: list[int]) -> None:
    """A non-empty list of channel counts, each >= 1."""
    if not value or min(value) < 1:
        raise ValueError(f"must be a non-empty list of positive channel counts, e.g. [16, 32], got {value}")


def seed_value(instance, attribute, value: int) -> None:
    """A seed torch accepts: it must fit in 64 bits."""
    if not -(2**63) <= value < 2**64:
        shown = value if value.bit_length() < 128 else f"a {value.bit_length()}-bit number"
        raise ValueError(f"must fit in 64 bits (-2**63 <= seed < 2**64), got {shown}")


_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def device_name(instance, attribute, value: str) -> None:
    """``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    if not _DEVICE.fullmatch(value):
        raise ValueError(f"must be 'auto', 'cpu', 'cuda' or 'cuda:N' (N a device index), got {value!r}")


def path_component(instance, attribute, value: str) -> None:
    """One plain path component: a folder name, not a path (no separator, not ``.``/``..``)."""
    if not value:
        raise ValueError("must not be empty")
    if "\0" in value:
        raise ValueError(f"must not contain a NUL byte, got {value!r}")
    if value in (".", ".."):
        raise ValueError(f"must name a folder, not {value!r}; give a plain name such as 'exp1'")
    if "/" in value or "\\" in value or PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute():
        raise ValueError(f"must be one folder name, without '/' or '\\' (out_dir says where runs go), got {value!r}")


def each_one_of(*choices: str) -> Validator:
    """Every item of a list is one of ``choices``, and none repeats."""

    def check(instance, attribute, value) -> None:
        for item in value or []:
            if item not in choices:
                raise ValueError(f"unknown {item!r}; choose from {', '.join(map(repr, choices))}")
        if value and len(set(value)) < len(value):
            raise ValueError(f"lists an entry twice: {value!r}")

    return check


def only_with(field: str) -> Validator:
    """A value other than empty only where the instance's ``field`` is set (``init_skip`` needs ``init_from``)."""

    def check(instance, attribute, value) -> None:
        if value and getattr(instance, field) is None:
            raise ValueError(f"takes effect only with {field}; set {field} = \"PATH\" or drop {attribute.name}")

    return check
