"""Config problems: the ``ConfigError`` a user sees, and the ``(path, message)``
pairs structuring collects on the way to it.

Structuring raises ``Invalid`` (a problem at the current path) or ``Problems``
(problems below it); ``flatten`` turns those and cattrs' own errors into pairs
whose paths are relative to where they were caught, and callers prefix their
own key with ``join``.
"""

from __future__ import annotations

import difflib
from typing import Any

import attrs
from cattrs.errors import AttributeValidationNote, ClassValidationError, ForbiddenExtraKeysError


class ConfigError(ValueError):
    """Everything wrong with a config: ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(list(problems))
        self.problems = list(problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


class Invalid(ValueError):
    """A value problem at the path where it is raised."""


class Problems(ValueError):
    """Problems below the path where it is raised: ``(relative path, message)`` pairs."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        super().__init__(items)
        self.items = items


def show(value: Any) -> str:
    """``value``'s repr for a message, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def join(prefix: str, rel: str) -> str:
    """The dotted path ``prefix.rel`` (``prefix[i]`` for an index, ``prefix`` alone when ``rel`` is empty)."""
    if not rel:
        return prefix
    if not prefix or rel.startswith("["):
        return prefix + rel
    return f"{prefix}.{rel}"


def unknown_key(key: str, known: list[str]) -> str:
    """"unknown key", with the closest of ``known`` as a suggestion."""
    close = difflib.get_close_matches(key, known, n=1)
    return "unknown key" + (f"; did you mean {close[0]!r}?" if close else "")


def flatten(exc: BaseException, known: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """Flatten a structuring error into ``(relative path, message)`` pairs.

    ``known`` are keys the caller handled itself (``kind``, ``lr``), offered as
    did-you-mean candidates for unknown keys at this level.
    """
    if isinstance(exc, Problems):
        return exc.items
    if isinstance(exc, ForbiddenExtraKeysError):
        names = [a.name for a in attrs.fields(exc.cl)] + list(known)
        return [(str(k), unknown_key(str(k), names)) for k in sorted(exc.extra_fields, key=str)]
    if isinstance(exc, ClassValidationError):
        out = []
        for sub in exc.exceptions:
            note = next((n for n in getattr(sub, "__notes__", []) if isinstance(n, AttributeValidationNote)), None)
            if note is None:  # extra keys, or the class's __init__ raising
                out += flatten(sub, known)
            elif type(sub) is KeyError and sub.args == (note.name,):  # cattrs' missing-key error
                out.append((note.name, "required"))
            else:
                out += [(join(note.name, rel), msg) for rel, msg in flatten(sub)]
        return out
    if isinstance(exc, Invalid):
        return [("", str(exc))]
    return [("", str(exc) or type(exc).__name__)]


def validator_problems(instance: Any) -> list[tuple[str, str]]:
    """Run every field's validator, collecting all failures (attrs stops at the first)."""
    out = []
    for a in attrs.fields(type(instance)):
        if a.validator is not None:
            try:
                a.validator(instance, a, getattr(instance, a.name))
            except Exception as e:
                out += [(join(a.name, rel), msg) for rel, msg in flatten(e)]
    return out

