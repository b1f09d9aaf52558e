"""Words in messages: counted nouns (``plural(1, "image")`` is ``"1 image"``, ``plural(3, "class", "classes")``
``"3 classes"``) and the first few of many names (``listed``: "and 3 more"; ``few``: "... 8 in all"),
and a failed write with the fix its cause points to (``cannot_write``).

A folder of one image, a sweep of one member and a run of one step are
ordinary; their messages should not read "1 images".
"""

from __future__ import annotations

import errno


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


WRITE_FIXES = {
    errno.ENOSPC: "free some space", errno.EDQUOT: "free some space",
    errno.EACCES: "make the folder writable", errno.EPERM: "make the folder writable", errno.EROFS: "make the folder writable",
}


def cannot_write(what: str, error: OSError, then: str = "") -> str:
    """``cannot write WHAT: CAUSE; FIX and THEN``: a failed write in one line, the fix the one its ``errno`` points to
    (a full disk: free some space; permissions or a read-only file system: make the folder writable)."""
    fix = " and ".join(filter(None, [WRITE_FIXES.get(error.errno), then]))
    return f"cannot write {what}: {error.strerror or error}" + (f"; {fix}" if fix else "")
