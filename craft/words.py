"""Words in messages: counted nouns (``plural(1, "image")`` is ``"1 image"``, ``plural(3, "class", "classes")``
``"3 classes"``) and the first few of many names (``listed``: "and 3 more"; ``few``: "... 8 in all").

A folder of one image, a sweep of one member and a run of one step are
ordinary; their messages should not read "1 images".
"""

from __future__ import annotations


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``n`` (thousands separated) and ``noun``, or its plural ``many`` (``noun + "s"`` if not given) unless ``n`` is 1."""
    return f"{n:,} {noun if n == 1 else many or noun + 's'}"


def listed(items: list, limit: int = 10) -> str:
    """``'a', 'b' and 3 more``: the first ``limit`` of ``items``, repr'd."""
    shown = ", ".join(map(repr, items[:limit]))
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def few(names, shown: int = 5) -> str:
    """``'a', 'b', ... 8 in all``: at most ``shown`` of ``names`` repr'd, then how many there are (a message
    stays one short line)."""
    names = list(names)
    head = ", ".join(map(repr, names[:shown]))
    return head if len(names) <= shown else f"{head}, ... {len(names)} in all"


def clipped(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters with ``...``: a value in a message (a row's encoded image is kilobytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
