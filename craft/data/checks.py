"""attrs validators for the datasets' configs.

Messages leave out the key: the config loader prefixes its path
(``data.channels: must be 1 (grayscale) or 3 (RGB), got 4``) and reports every
failing field at once; built in Python, the traceback shows the call.
"""

from __future__ import annotations

from craft.validators import Validator, at_least, between, one_of  # noqa: F401  (re-exported)

fraction = between(0, 1, high_open=True)


def channels(instance, attribute, value: int) -> None:
    if value not in (1, 3):
        raise ValueError(f"must be 1 (grayscale) or 3 (RGB), got {value}")


def per_channel(instance, attribute, value: list[float]) -> None:
    """``mean``/``std``: one value for every channel, or one per channel."""
    if len(value) not in (1, instance.channels):
        raise ValueError(f"needs 1 or {instance.channels} (channels) values, got {value}")
    if attribute.name == "std" and not all(v > 0 for v in value):
        raise ValueError(f"must be positive, got {value}")


def check_split(split: str) -> None:
    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}; use 'train' or 'val'")


class UnknownClasses(ValueError):
    """Val data holding classes the train split lacks (``unknown``): ``craft evaluate`` says it as classes the
    run was not trained on."""

    def __init__(self, message: str, unknown: list[str]) -> None:
        super().__init__(message)
        self.unknown = unknown
