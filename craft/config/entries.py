"""Registry entries and their configs: one protocol for every ``kind``.

Every section that picks a registry entry (``[model]``, ``[data]``, ``[task]``,
``[optim]``, ``[schedule]``) holds a *config*: a frozen attrs instance whose
fields are the section's TOML keys and whose ``build(*args, **kwargs)`` makes
the object (``Config``). ``config_class(entry)`` is the one place that knows an
entry can be written two ways:

- an attrs class is its own config (``CNNConfig.build()`` returns the model);
- a function gets a derived attrs class whose fields are its keyword-only
  options with a default and a TOML type, and whose ``build`` calls it with them
  (``FunctionConfig.build``).

Downstream code only ever calls ``build(section, ...)``; it never asks which
way the entry was written.
"""

from __future__ import annotations

import functools
import inspect
import re
import types
from collections.abc import Callable
from typing import Any, Protocol, Union, get_args, get_origin, runtime_checkable

import attrs

from craft.data import DATASETS
from craft.models import MODELS
from craft.optim import OPTIMIZERS, SCHEDULES
from craft.registry import Registry
from craft.tasks import TASKS


@runtime_checkable
class Config(Protocol):
    """A section's config: a frozen attrs instance (its fields are the TOML keys) that builds the object.

    ``build`` takes what only the run knows: a dataset's ``split`` and ``seed``,
    a schedule's peak ``lr`` and ``total_steps``, an optimizer's schedule.
    """

    def build(self, *args: Any, **kwargs: Any) -> Any: ...


SCALARS = (bool, int, float, str)
"""The TOML scalar types a config field may have (and lists of them, and ``X | None``)."""


def _toml_type(t: Any, optional: bool = True) -> bool:
    """Whether values of ``t`` can be written in TOML (``X | None`` only at the top)."""
    if t in SCALARS:
        return True
    origin, args = get_origin(t), get_args(t)
    if origin is list:
        return len(args) == 1 and _toml_type(args[0], optional=False)
    if optional and origin in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
        return _toml_type(next(a for a in args if a is not type(None)), optional=False)
    return False


def _annotation(param: inspect.Parameter, namespace: dict) -> Any:
    """The parameter's annotation as a type, or None when it cannot be resolved.

    Modules with ``from __future__ import annotations`` keep annotations as
    strings; resolving them one by one (as ``typing.get_type_hints`` would, all
    at once) lets one unresolvable annotation make only its parameter unconfigurable.
    """
    ann = param.annotation
    if not isinstance(ann, str):
        return None if ann is inspect.Parameter.empty else ann
    try:
        return eval(ann, namespace)  # noqa: S307  (the entry's own annotation, not user input)
    except Exception:
        return None


class FunctionConfig:
    """Base of the configs derived from function entries; ``entry`` is the function."""

    entry: Callable[..., Any]

    def build(self, *args: Any, **kwargs: Any) -> Any:
        """``entry(*args, **kwargs, **fields)``; ``kwargs`` fill fields the config left None.

        A run passes what only it knows (``total_steps``, ``mask``); a value the
        TOML set explicitly wins over it.
        """
        fields = {a.name: getattr(self, a.name) for a in attrs.fields(type(self))}
        given = {k: v for k, v in fields.items() if v is not None or k not in kwargs}
        return type(self).entry(*args, **{**kwargs, **given})

    def __reduce__(self) -> tuple:
        # The derived class has no importable name; pickle the entry instead.
        return _function_config, (type(self).entry, attrs.asdict(self, recurse=False))


def _function_config(entry: Callable[..., Any], fields: dict[str, Any]) -> FunctionConfig:
    return config_class(entry)(**fields)


@functools.cache
def config_class(entry: Any) -> type[Config]:
    """The attrs class whose fields are ``entry``'s TOML keys (cached per entry).

    A class entry must be an attrs class and is its own config. For a function,
    the fields are its keyword-only parameters that have a default and a TOML
    type; the rest (positional ones, ``mask``...) are supplied at run time.
    """
    if inspect.isclass(entry):
        if not attrs.has(entry):
            raise TypeError(
                f"{entry.__qualname__} is not an attrs class; registry entries must be attrs classes or functions"
            )
        return entry
    namespace = getattr(inspect.unwrap(entry), "__globals__", {})
    fields = {}
    for p in inspect.signature(entry).parameters.values():
        t = _annotation(p, namespace)
        if p.kind is p.KEYWORD_ONLY and p.default is not p.empty and _toml_type(t):
            default = attrs.Factory(lambda d=p.default: list(d)) if isinstance(p.default, list) else p.default
            fields[p.name] = attrs.field(default=default, type=t)
    name = getattr(entry, "__name__", "entry")
    cls_name = "".join(part.title() for part in re.split(r"\W|_", name) if part) + "Config"
    cls = attrs.make_class(cls_name, fields, bases=(FunctionConfig,), frozen=True, slots=True)
    cls.entry = staticmethod(entry)
    cls.__module__ = getattr(entry, "__module__", __name__)
    cls.__doc__ = f"TOML options of ``{cls.__module__}.{name}`` (derived from its signature)."
    return cls


BUILD_CALLS = {
    "model": ((), {}, "build()"),
    "data": (("train",), {"seed": 0}, "build(split, *, seed, rank=0, world_size=1)"),
    "task": ((), {}, "build()"),
    "optim": ((None,), {}, "build(learning_rate)"),
    "schedule": ((1e-3,), {"total_steps": 1}, "build(lr, *, total_steps)"),
}
"""How a run calls each section's ``build``: positional and keyword arguments, and the call as the docs write it."""


def build_problem(section: str, config: Any) -> str | None:
    """Why a run could not call ``config.build`` as it calls a ``[section]`` entry's (no ``build``, or a signature
    that does not take the run's arguments), or None. Found when the config is read, not mid-run."""
    args, kwargs, shown = BUILD_CALLS[section]
    build = getattr(config, "build", None)
    name = type(config).__qualname__
    if not callable(build):
        return f"{name} has no build method; a [{section}] entry makes its object with {shown} (docs/extending.md)"
    try:
        signature = inspect.signature(build)
        signature.bind(*args, **kwargs)
    except ValueError:  # no signature to read (a builtin): left to the call
        return None
    except TypeError as e:
        return f"{name}.build{signature} cannot be called as a run calls it, {shown}: {e}"
    return None


def registries() -> dict[str, Registry]:
    """The tables the sections pick from, by their names: ``models`` for ``[model]``, etc."""
    return {"models": MODELS, "datasets": DATASETS, "tasks": TASKS, "optimizers": OPTIMIZERS, "schedules": SCHEDULES}


def build(section: Any, *args: Any, **kwargs: Any) -> Any:
    """The object a section record (``Component``, ``Optim``) describes: ``section.config.build(*args, **kwargs)``.

    For a function entry that is ``entry(*args, **kwargs, **fields)``, where
    ``kwargs`` only fill fields the config left None (see ``FunctionConfig.build``).
    """
    return section.config.build(*args, **kwargs)

