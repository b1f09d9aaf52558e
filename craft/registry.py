"""Registry tables: plain name -> object mappings filled by a decorator.

Dispatch in craft goes through tables like ``OPTIMIZERS`` and ``SCHEDULES``
rather than class hierarchies. A table refuses a name another definition
holds (the same definition run again replaces its entry), and an unknown
name raises an error that lists the names that exist.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown registry name; the message lists the names that exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class Registry(Mapping[str, T], Generic[T]):
    """A read-only mapping of names to objects, filled by ``register``.

    ``what`` names the kind of entry ("optimizer", "schedule") in messages.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding an entry under ``name``; a name taken by another definition is an error.

        The same definition run again (a notebook cell, ``importlib.reload``: the same module and
        qualified name) replaces its entry.
        """

        def add(obj: T) -> T:
            if name in self._entries and _describe(self._entries[name]) != _describe(obj):
                raise ValueError(
                    f"{self.what} {name!r} is already registered "
                    f"(by {_describe(self._entries[name])}); pick another name"
                )
            self._entries[name] = obj
            return obj

        return add

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        known = ", ".join(sorted(self._entries)) or "none"
        close = difflib.get_close_matches(name, self._entries, n=1) if isinstance(name, str) else []
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown {self.what} {name!r}; {hint}known: {known}"

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {sorted(self._entries)})"


def _describe(obj: object) -> str:
    module = getattr(obj, "__module__", "?")
    return f"{module}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"
