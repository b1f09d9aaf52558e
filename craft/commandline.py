"""Reading a command line strictly: words and ``--key=value`` options, converted to each parameter's type.

A command is a plain function; its positional-or-keyword parameters are its
words (a ``*args`` parameter takes any number more), its keyword-only
parameters its options, a ``**`` parameter takes the other options. A
command may instead hold a table of subcommands, chosen by its first word
(``craft prepare shapes DIR``), each a command of its own with its own usage
line and ``--help``::

    COMMANDS = {"train": Command(train, "craft train CONFIG.toml ..."),
                "prepare": Command(prepare, "", table={"shapes": Command(shapes, "craft prepare shapes DIR ...")})}
    name, args, options = parse(argv, COMMANDS)

Options are ``--key=value``; a true/false option may be given bare
(``--resume``) and takes only ``true`` or ``false``; a text option takes the
text as typed; numbers are TOML literals.
"""

from __future__ import annotations

import difflib
import inspect
import re
import typing
from collections.abc import Callable
from typing import Any, NamedTuple


class UsageError(Exception):
    """A command line that cannot be run as written."""


class ShowHelp(Exception):
    """``--help``: print the text (the exception's message) and exit 0."""


class Command(NamedTuple):
    """What a command word runs: ``run`` (a function), its ``usage`` line, and, for a command that
    dispatches on its first word, the ``table`` of its subcommands (``run`` then takes that word first)."""

    run: Callable[..., Any]
    usage: str
    table: dict[str, Command] | None = None

    def usage_lines(self) -> list[str]:
        return [self.usage] if self.table is None else [c.usage for c in self.table.values()]


def parse(argv: list[str], commands: dict[str, Command], default: str | None = None) -> tuple[str, list[str], dict[str, Any]]:
    """``(command, positional arguments, options)`` of ``argv``, values converted.

    ``default``: the command a first word that looks like a file runs
    (``python -m craft EXP.toml``). Raises ``UsageError`` for anything that
    cannot be run as written and ``ShowHelp`` for ``--help``.
    """
    if not argv:
        raise UsageError(f"give a command: {', '.join(commands)} (craft --help shows how)")
    first = argv[0]
    if first in commands:
        name, rest = first, argv[1:]
    elif default is not None and not first.startswith("-") and looks_like_a_file(first):
        name, rest = default, argv
    else:
        raise UsageError(f"unknown command {first!r}{did_you_mean(first, list(commands))}; commands: {', '.join(commands)}")
    command, words_before = commands[name], []
    if command.table is not None:
        command, words_before = subcommand(name, command, rest), rest[:1]
        rest = rest[1:]
    types = typing.get_type_hints(command.run)
    words, flags = split(rest, types)
    if "help" in flags or "h" in flags:
        raise ShowHelp(f"usage: {command.usage}\n\n{inspect.getdoc(command.run)}")
    return name, words_before + positionals(command, words), options(command, flags, types)


def looks_like_a_file(word: str) -> bool:
    from pathlib import Path

    return bool(Path(word).suffix) or Path(word).exists()


def subcommand(name: str, command: Command, rest: list[str]) -> Command:
    """The entry of ``command.table`` that ``rest``'s first word names (``--help`` alone lists them all)."""
    table = command.table
    lines = "\n".join(f"  {line}" for line in command.usage_lines())
    if not rest or rest[0] in ("-h", "--help"):
        if rest:
            raise ShowHelp(f"usage: craft {name} {'|'.join(table)} ...\n{lines}\n\n{inspect.getdoc(command.run)}")
        raise UsageError(f"craft {name}: say what: {', '.join(table)}; usage: craft {name} {'|'.join(table)} ...")
    if rest[0] not in table:
        raise UsageError(
            f"craft {name}: unknown {rest[0]!r}{did_you_mean(rest[0], list(table))}; available: {', '.join(sorted(table))}"
        )
    return table[rest[0]]


KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def split(rest: list[str], types: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The words and the ``--key=value`` options (values as typed) of ``rest``.

    A bare true/false option means true; any other bare option takes the next
    word as its value (``--prompt TEXT``).
    """
    words, flags, i = [], {}, 0
    while i < len(rest):
        arg, i = rest[i], i + 1
        if arg in ("-h", "--help"):
            flags["help"] = "true"
            continue
        if not arg.startswith("-") or arg == "-":
            words.append(arg)
            continue
        key, equals, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not KEY.fullmatch(key):
            raise UsageError(f"{arg!r} is not an option; options are written --key=value (e.g. --train.steps=10)")
        if not equals:
            if unwrap(types.get(key)) is bool:
                value = "true"
            elif i < len(rest) and not rest[i].startswith("--"):
                value, i = rest[i], i + 1
            else:
                raise UsageError(f"--{key} needs a value: --{key}=VALUE")
        if key in flags:
            raise UsageError(f"--{key} is given twice; give it once")
        flags[key] = value
    return words, flags


def positionals(command: Command, words: list[str]) -> list[str]:
    """The command's positional arguments, in order; a ``*args`` parameter takes any number more."""
    parameters = inspect.signature(command.run).parameters.values()
    allowed = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    needed = [p.name for p in allowed if p.default is p.empty]
    name = command_name(command)
    if len(words) < len(needed):
        missing = " ".join(n.upper() for n in needed[len(words):])
        raise UsageError(f"{name}: missing {missing}; usage: {command.usage}")
    if len(words) > len(allowed) and not any(p.kind is p.VAR_POSITIONAL for p in parameters):
        extra = words[len(allowed)]
        hint = f" (a true/false option is written --key={extra})" if extra in ("true", "false") else ""
        raise UsageError(f"{name}: unexpected argument {extra!r}{hint}; usage: {command.usage}")
    return words


def options(command: Command, flags: dict[str, str], types: dict[str, Any]) -> dict[str, Any]:
    """Each option converted to its parameter's type; other keys go to a ``**`` parameter if the command has one."""
    parameters = inspect.signature(command.run).parameters
    rest = next((p for p in parameters.values() if p.kind is p.VAR_KEYWORD), None)
    known = [p.name for p in parameters.values() if p.kind is p.KEYWORD_ONLY]
    converted = {}
    for key, text in flags.items():
        if key in known:
            converted[key] = convert(key, text, types[key])
        elif rest is not None:
            converted[key] = text if types.get(rest.name) is str else convert(key, text, types.get(rest.name, Any))
        else:
            shown = ", ".join(f"--{k}" for k in known) or "none"
            raise UsageError(f"{command_name(command)}: unknown option --{key}{did_you_mean(key, known)}; options: {shown}")
    return converted


def command_name(command: Command) -> str:
    """The usage line's leading lowercase words: ``craft generate``, ``craft prepare shapes``."""
    words = command.usage.split(" ")
    count = next((i for i, w in enumerate(words) if not (w.isidentifier() and w.islower())), len(words))
    return " ".join(words[:count])


def unwrap(t: Any) -> Any:
    """``X`` for ``X | None``."""
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if len(args) == 1 else t


def convert(key: str, text: str, t: Any) -> Any:
    """``text`` as a value of type ``t``: true/false only for a bool, a TOML number for an int or float."""
    from craft.config import parse_override

    t = unwrap(t)
    if t is str or t is Any:
        return text
    value = parse_override(text)
    if t is bool and not isinstance(value, bool):
        raise UsageError(f"--{key}: expected true or false, got {text!r}")
    if t is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise UsageError(f"--{key}: expected an integer, got {text!r}")
    if t is float and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise UsageError(f"--{key}: expected a number, got {text!r}")
    return value


def did_you_mean(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
