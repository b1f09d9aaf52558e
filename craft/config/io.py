"""Reading and writing experiments: TOML text and files, command-line overrides, resolved dumps.

``load``/``loads`` read TOML (after importing the experiment's ``imports``),
apply dotted-path overrides (``{"optim.lr": 3e-4}``) and command-line values
as typed (``texts``), and raise one ``ConfigError`` listing every problem.
``dumps``/``save``/``to_dict`` write every resolved value, so
``loads(dumps(exp)) == exp``.
"""

from __future__ import annotations

import ast
import datetime
import importlib
import sys
import traceback
import typing
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

import attrs
import tomli_w

from craft.config.entries import SCALARS, config_class
from craft.config.problems import ConfigError, flatten, show
from craft.config.records import SWEEPABLE, Experiment
from craft.config.sections import CONVERTER, SECTIONS, is_key

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def parse_override(text: str) -> Any:
    """A command-line value: a TOML literal, else a Python literal, else the text itself.

    ``"false"`` -> False, ``"3e-4"`` -> 0.0003, ``"[1, 2]"`` -> [1, 2],
    ``"'abc'"`` -> "abc", ``"cnn"`` -> "cnn", ``"True"`` -> True; TOML dates stay
    text. No code runs: Python literals go through ``ast.literal_eval``.
    """
    try:
        parsed = tomllib.loads(f"v = {text}")
        if parsed.keys() == {"v"}:  # text like "1\nw = 2" smuggles in more keys
            # No config key takes a date: "2024-01-01" is meant as a name.
            return text if isinstance(parsed["v"], (datetime.date, datetime.time)) else parsed["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    if isinstance(value, tuple):
        value = list(value)
    return value if value is None or isinstance(value, (*SCALARS, list, dict)) else text


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``data`` with each dotted path in ``overrides`` set (``{"optim.lr": 3e-4}``).

    Missing tables on the way are created; a path through a non-table is a
    ``ConfigError``. ``data`` is not modified.
    """
    out = dict(data)
    problems = []
    for path, value in (overrides or {}).items():
        keys = path.split(".") if isinstance(path, str) else []
        if keys[:1] == ["sweep"] and len(keys) > 2:  # [sweep]'s keys are dotted paths: "optim.lr"
            keys = ["sweep", ".".join(keys[1:])]
        if not keys or not all(keys):
            problems.append(f"{path}: not a dotted key path")
            continue
        table = out
        for i, key in enumerate(keys[:-1]):
            child = table.get(key, {})
            if not isinstance(child, Mapping):
                where = ".".join(keys[: i + 1])
                problems.append(f"{path}: cannot set, {where} is {show(child)}, not a table")
                break
            table[key] = table = dict(child)  # copy on the way down: data stays untouched
        else:
            table[keys[-1]] = value
    if problems:
        raise ConfigError(problems)
    return out


def _import_all(modules: Any) -> None:
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        return  # structuring reports the type problem
    problems = []
    # `python -m craft` finds modules in the current folder; the installed
    # `craft` command should too.
    try:
        here = str(Path.cwd())
    except FileNotFoundError:  # the current folder was deleted: nothing to find there
        here = ""
    if here and "" not in sys.path and here not in sys.path:
        sys.path.insert(0, here)
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as e:  # a module may fail any way; the user needs the message
            problems.append(f"imports: cannot import {module!r}: {e}{_import_hint(module, e, here)}")
    if problems:
        raise ConfigError(problems)


def _import_hint(module: str, error: Exception, here: str) -> str:
    """Where ``module`` was looked for, when it was not found; else the line of the module that failed."""
    if isinstance(error, ModuleNotFoundError) and (module == error.name or module.startswith(f"{error.name}.")):
        return (f"; modules under imports are looked up in the current folder ({here or 'none'}) and on PYTHONPATH: "
                f"run craft from the folder that holds it, or add that folder to PYTHONPATH")
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "importlib" not in f.filename]
    return f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""


def from_dict(data: Mapping[str, Any]) -> Experiment:
    """The Experiment in a TOML-shaped dict, after importing its ``imports``."""
    if not isinstance(data, Mapping):
        raise ConfigError([f"config: expected a table, got {show(data)}"])
    _import_all(data.get("imports", []))
    try:
        return CONVERTER.structure(data, Experiment)
    except Exception as e:
        raise ConfigError([f"{path or 'config'}: {msg}" for path, msg in flatten(e)]) from None


def structure(data: Mapping[str, Any], cls: type) -> Any:
    """``data`` as an instance of the attrs class ``cls``, checked as strictly as a config.

    Problems raise one ``ConfigError`` whose lines are ``key: problem``.
    """
    try:
        return CONVERTER.structure(data, cls)
    except Exception as e:
        raise ConfigError([f"{path or cls.__name__}: {msg}" for path, msg in flatten(e)]) from None


def _field_type(data: Mapping[str, Any], keys: list[str]) -> Any:
    """The type of the field at ``keys`` in the Experiment ``data`` describes, or None if there is none."""
    cls, table, t = Experiment, data, None
    for i, key in enumerate(keys):
        if cls is Experiment and key in SECTIONS:
            registry, default = SECTIONS[key]
            table = table.get(key, {}) if isinstance(table, Mapping) else {}
            kind = table.get("kind", default) if isinstance(table, Mapping) else None
            if keys[i + 1 :] in (["kind"], ["lr"]):
                return str if keys[i + 1] == "kind" else float
            if not isinstance(kind, str) or kind not in registry:
                return None
            cls = config_class(registry[kind])
            continue
        if cls is None or not attrs.has(cls) or key not in attrs.fields_dict(cls):
            return None
        t = typing.get_type_hints(cls)[key]
        cls = next((a for a in (get_args(t) or (t,)) if attrs.has(a)), None)
        table = table.get(key, {}) if isinstance(table, Mapping) else {}
    return t


def _read_texts(data: Mapping[str, Any], texts: Mapping[str, str]) -> dict[str, Any]:
    """Command-line values: each read by ``parse_override``, but a text field takes the text as typed.

    ``--name=2024`` names the run "2024"; ``--optim.lr=3e-4`` is the number;
    ``None`` unsets an optional text field (``--data.prepare=None``); a quoted
    text is its content (``--data.labels='"prefix"'`` is ``prefix``).
    """
    parsed = {path: parse_override(text) for path, text in texts.items()}
    merged = apply_overrides(data, parsed)  # the kinds the values pick decide the fields' types
    out = {}
    for path, value in parsed.items():
        t = _field_type(merged, path.split(".")) if isinstance(path, str) else None
        takes_text = t is str or (str in get_args(t) and not isinstance(value, (list, dict)))
        unset = value is None and type(None) in get_args(t)  # --data.val_path=None: unset, not the text "None"
        out[path] = (value if isinstance(value, str) else texts[path]) if takes_text and not unset else value
    return out


def _without_old_kind_keys(data: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` without the keys of a section's kind that ``changes`` (overrides) replaced by another kind.

    ``--schedule.kind=constant`` over a file's ``warmup_cosine`` with
    ``warmup_ratio``: that key is a setting of the kind the user replaced, so
    it is left out, with a warning naming it. Only keys the file's own kind
    has and the new kind lacks go; a key the overrides set themselves, or one
    the old kind does not have either, stays and is reported as before.
    """
    out = dict(data)
    for section, (registry, default) in SECTIONS.items():
        table, new = data.get(section, {}), changes.get(f"{section}.kind")
        old = table.get("kind", default) if isinstance(table, Mapping) else None
        if section in changes or not all(isinstance(k, str) and k in registry for k in (old, new)) or old == new:
            continue
        keep = {*attrs.fields_dict(config_class(registry[new])), "kind", "lr", "groups"}
        given = {p.split(".")[1] for p in changes if isinstance(p, str) and p.startswith(f"{section}.")}
        old_keys = attrs.fields_dict(config_class(registry[old]))
        dropped = [k for k in table if k in old_keys and k not in keep and k not in given]
        if dropped:
            out[section] = {k: v for k, v in table.items() if k not in dropped}
            keys = [f"{section}.{k}" for k in dropped]
            keys = " and ".join([", ".join(keys[:-1]), keys[-1]] if len(keys) > 1 else keys)
            warnings.warn(f"{section}.kind = {new!r} replaces the file's {old!r}: left out {keys}, "
                          f"which {new!r} does not take", stacklevel=2)
    return out


def loads(
    text: str, overrides: Mapping[str, Any] | None = None, source: str = "<string>", *, texts: Mapping[str, str] | None = None
) -> Experiment:
    """The Experiment in TOML ``text``, with ``overrides`` applied (see ``apply_overrides``).

    ``texts`` are command-line values as typed (``{"optim.lr": "3e-4"}``),
    applied after ``overrides``: each is read by ``parse_override``, except
    that a text field (``name``, ``train.device``...) takes the text as typed.
    """
    try:
        data = tomllib.loads(text.removeprefix("\ufeff"))  # a byte-order mark some editors write
        data = _without_old_kind_keys(data, {**(overrides or {}), **(texts or {})})
        data = apply_overrides(data, overrides)
        try:
            return from_dict(apply_overrides(data, _read_texts(data, texts or {})))
        except ConfigError as e:
            raise ConfigError([_elsewhere_hint(_sweep_hint(problem)) for problem in e.problems]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{source}: invalid TOML: {e}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: nested too deeply to read; an experiment needs a few levels of tables"]) from None


def _sweep_hint(problem: str) -> str:
    """``optim.lr: expected float, got [0.001, 0.01]`` with where a list of values of a sweepable key goes."""
    key, _, message = problem.partition(": ")
    if key not in SWEEPABLE or not message.startswith("expected float, got ["):
        return problem
    return f"{problem}; to train one member per value in one process, give them to --sweep.{key}=[...] ([sweep] in TOML)"


def _elsewhere_hint(problem: str) -> str:
    """``train.seed: unknown key`` with where that key lives: ``seed`` at the top level, ``lr`` under ``[optim]``."""
    key, _, message = problem.partition(": ")
    section, _, leaf = key.rpartition(".")
    if message != "unknown key" or not section:
        return problem
    hints = typing.get_type_hints(Experiment)
    tables = [s for s, t in hints.items() if s in SECTIONS or any(attrs.has(a) for a in (t, *get_args(t)))]
    if leaf in hints and leaf not in tables:
        return f"{problem}; {leaf!r} is a top-level key (--{leaf}=...)"
    elsewhere = [f"{s}.{leaf}" for s in tables if s != section and is_key(f"{s}.{leaf}")]
    return f"{problem}; did you mean {elsewhere[0]!r}?" if elsewhere else problem


def load(path: str | Path, overrides: Mapping[str, Any] | None = None, *, texts: Mapping[str, str] | None = None) -> Experiment:
    """The Experiment in the TOML file at ``path``, with ``overrides`` and ``texts`` applied (see ``loads``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError([f"{printable(path)}: cannot read config: {reason}"]) from None
    return loads(text, overrides, source=printable(path), texts=texts)


def printable(name: str | Path) -> str:
    """``name`` as typed when that shows on one line, else its ``repr`` (a newline in a file name)."""
    text = str(name)
    return text if text.isprintable() else repr(text)


# --- Writing ------------------------------------------------------------------


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value


def to_dict(exp: Experiment) -> dict[str, Any]:
    """Every value of ``exp``, defaults included, as TOML-shaped data.

    Sections become ``{"kind": ..., **fields}``; None values are left out
    (TOML has no null), which loading reads back as the same defaults.
    """
    return _drop_none(CONVERTER.unstructure(exp))


def dumps(exp: Experiment) -> str:
    """``exp`` as TOML; ``loads(dumps(exp)) == exp``."""
    return tomli_w.dumps(to_dict(exp))


def save(exp: Experiment, path: str | Path) -> None:
    """Write ``dumps(exp)`` to ``path``."""
    Path(path).write_text(dumps(exp), encoding="utf-8")
