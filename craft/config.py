"""Experiments as TOML: loaded into frozen attrs records, checked strictly, written back.

An ``Experiment`` names its parts by registry entry: each of the sections
``model``, ``data``, ``task``, ``optim`` and ``schedule`` has a ``kind`` that
picks an entry of ``MODELS``, ``DATASETS``, ``TASKS``, ``OPTIMIZERS`` or
``SCHEDULES``; the section's other keys are that entry's config. An entry is
either a frozen attrs class (its fields are the keys) or a function, whose
keyword-only options with a default and a TOML type become the fields of a
derived attrs class (``config_class``). ``build`` turns either into the object.

Loading never guesses: unknown keys, missing keys, wrong types (``"false"`` is
not a bool, ``0.5`` not an int) and failed validators are all collected into
one ``ConfigError`` whose lines name the dotted path of each problem.
``dumps`` writes every resolved value, so ``loads(dumps(exp)) == exp``.
"""

from __future__ import annotations

import ast
import collections.abc
import datetime
import difflib
import functools
import importlib
import inspect
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import attrs
import cattrs
import tomli_w
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
)
from cattrs.gen import make_dict_structure_fn, override

from craft.data import DATASETS
from craft.models import MODELS
from craft.optim import OPTIMIZERS, SCHEDULES
from craft.registry import Registry
from craft.tasks import TASKS
from craft.validators import (
    at_least, between, device_name, each_one_of, not_empty, one_of, path_component, seed_value,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "Component", "ConfigError", "EarlyStopping", "Experiment", "Optim", "OptimGroup", "Sample", "Train",
    "apply_overrides", "build", "config_class", "dumps", "from_dict", "load",
    "loads", "parse_override", "printable", "registries", "save", "structure", "to_dict",
]


class ConfigError(ValueError):
    """Everything wrong with a config: ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(list(problems))
        self.problems = list(problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


# --- Function entries -> attrs configs ---------------------------------------

_SCALARS = (bool, int, float, str)


def _toml_type(t: Any, optional: bool = True) -> bool:
    """Whether values of ``t`` can be written in TOML (``X | None`` only at the top)."""
    if t in _SCALARS:
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
def config_class(entry: Any) -> type:
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


def registries() -> dict[str, Registry]:
    """The tables the sections pick from, by their names: ``models`` for ``[model]``, etc."""
    return {"models": MODELS, "datasets": DATASETS, "tasks": TASKS, "optimizers": OPTIMIZERS, "schedules": SCHEDULES}


def build(component: Component | Optim, *args: Any, **kwargs: Any) -> Any:
    """The object a section describes: ``component.config.build(*args, **kwargs)``.

    For a function entry that is ``entry(*args, **kwargs, **fields)``, where
    ``kwargs`` only fill fields the config left None (see ``FunctionConfig.build``).
    """
    return component.config.build(*args, **kwargs)


# --- Records ----------------------------------------------------------------


@attrs.frozen
class Component:
    """A registry entry by name (``kind``) and its structured ``config``."""

    kind: str
    config: Any


@attrs.frozen
class OptimGroup:
    """One ``[[optim.groups]]`` table: the parameters whose names match the glob
    ``match`` train with ``lr_scale`` times the learning rate and their own
    ``weight_decay``, or not at all (``freeze``: no optimizer state either).
    A parameter belongs to the first group that matches it; the rest train as
    ``[optim]`` says (see ``craft.optim.groups``)."""

    match: str = attrs.field(validator=not_empty)
    lr_scale: float = attrs.field(default=1.0, validator=at_least(0.0))
    weight_decay: float | None = attrs.field(default=None, validator=at_least(0.0))
    freeze: bool = False


@attrs.frozen
class Optim:
    """The optimizer: ``kind`` and ``config`` as in ``Component``; ``lr`` is the peak
    learning rate the run feeds into the schedule; ``groups`` split the parameters."""

    kind: str
    lr: float
    config: Any
    groups: list[OptimGroup] = attrs.field(factory=list)


def _default(registry: Registry, kind: str) -> Component:
    return Component(kind, config_class(registry[kind])())


@attrs.frozen
class EarlyStopping:
    """Stop when ``metric`` has not improved (per ``mode``) for ``patience`` evaluations."""

    metric: str = attrs.field(default="loss", validator=not_empty)
    mode: Literal["min", "max"] = "min"
    patience: int = attrs.field(default=5, validator=at_least(0))


@attrs.frozen
class Sample:
    """Text sampled from the model after every ``every``-th evaluation, written to the log.

    Needs a text dataset (its tokenizer) and a model that returns next-token
    logits; the options are those of ``craft generate``.
    """

    every: int = attrs.field(default=1, validator=at_least(1))
    prompt: str = attrs.field(default="\n", validator=not_empty)
    max_new_tokens: int = attrs.field(default=200, validator=at_least(1))
    temperature: float = attrs.field(default=0.8, validator=at_least(0.0))
    top_k: int | None = attrs.field(default=None, validator=at_least(1))
    top_p: float | None = attrs.field(default=None, validator=between(0, 1, low_open=True))
    seed: int = attrs.field(default=0, validator=seed_value)


TRACKERS = ("tensorboard", "wandb", "mlflow")
"""``train.loggers`` entries: the trackers of ``craft.trackers``."""


@attrs.frozen
class Train:
    """The loop's settings; ``None`` means off (``eval_batches``: the whole eval set)."""

    steps: int = attrs.field(default=1000, validator=at_least(1))
    eval_every: int = attrs.field(default=200, validator=at_least(1))
    log_every: int = attrs.field(default=20, validator=at_least(1))
    eval_batches: int | None = attrs.field(default=None, validator=at_least(1))
    precision: str = attrs.field(default="fp32", validator=one_of("fp32", "bf16"))
    compile: bool = True
    device: str = attrs.field(default="auto", validator=device_name)
    accum_steps: int = attrs.field(default=1, validator=at_least(1))
    checkpoint_every: int | None = attrs.field(default=None, validator=at_least(1))
    keep_checkpoints: int = attrs.field(default=3, validator=at_least(1))
    early_stopping: EarlyStopping | None = None
    sample: Sample | None = None
    tensorboard: bool = False  # the same as "tensorboard" in loggers
    loggers: list[str] = attrs.field(factory=list, validator=each_one_of(*TRACKERS))  # see craft.trackers
    # Keep an exponential moving average of the weights (decay per step); evaluation,
    # best.pt, `craft evaluate` and `craft generate` then use the averaged weights.
    ema_decay: float | None = attrs.field(default=None, validator=between(0, 1, high_open=True))
    # A NaN/Inf loss or gradient norm: "stop" the run (no checkpoint is written
    # past the last good one), or "skip" the update and count it in the log.
    on_nonfinite: Literal["stop", "skip"] = attrs.field(default="stop", validator=one_of("stop", "skip"))
    # Replay the compiled step as a CUDA graph (torch.compile mode "reduce-overhead"):
    # no per-kernel launch cost. Ignored, with a warning, off CUDA or without compile.
    cuda_graphs: bool = False
    # The device's peak FLOP/s for the logged `mfu`, where craft.mfu.PEAK_FLOPS lacks it.
    peak_flops: float | None = attrs.field(default=None, validator=at_least(1.0))


SWEEPABLE = {"optim.lr": "learning_rate", "optim.weight_decay": "weight_decay"}
"""``[sweep]`` keys -> the optimizer argument each one sets; only these can differ between members."""


@attrs.frozen
class Sweep:
    """``[sweep]``: members trained together through one vmapped step (``craft.sweep``).

    Every combination of the ``values`` lists (``"optim.lr" = [1e-4, 1e-3]``),
    each with ``seeds`` seeds (the experiment's ``seed``, ``seed + 1``, ...).
    """

    values: dict[str, list[float]] = attrs.field(factory=dict)
    seeds: int = attrs.field(default=1, validator=at_least(1))


@attrs.frozen
class Experiment:
    """One run, as written in TOML. ``imports`` are modules imported before the
    sections are read, so they can register models, datasets, etc."""

    name: str = attrs.field(validator=path_component)  # the run folder's name under out_dir
    model: Component
    data: Component
    seed: int = attrs.field(default=0, validator=seed_value)
    out_dir: str = "runs"
    imports: list[str] = attrs.field(factory=list)
    task: Component = attrs.field(factory=lambda: _default(TASKS, "classification"))
    optim: Optim = attrs.field(factory=lambda: Optim("adamw", 1e-3, config_class(OPTIMIZERS["adamw"])()))
    schedule: Component = attrs.field(factory=lambda: _default(SCHEDULES, "constant"))
    train: Train = attrs.field(factory=Train)
    sweep: Sweep | None = None


# --- Structuring --------------------------------------------------------------


class _Invalid(ValueError):
    """A value problem at the path where it is raised."""


class _Problems(ValueError):
    """Problems below the path where it is raised: ``(relative path, message)`` pairs."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        super().__init__(items)
        self.items = items


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(prefix: str, rel: str) -> str:
    if not rel:
        return prefix
    if not prefix or rel.startswith("["):
        return prefix + rel
    return f"{prefix}.{rel}"


def _unknown_key(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return "unknown key" + (f"; did you mean {close[0]!r}?" if close else "")


def _problems(exc: BaseException, known: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """Flatten a structuring error into ``(relative path, message)`` pairs.

    ``known`` are keys the caller handled itself (``kind``, ``lr``), offered as
    did-you-mean candidates for unknown keys at this level.
    """
    if isinstance(exc, _Problems):
        return exc.items
    if isinstance(exc, ForbiddenExtraKeysError):
        names = [a.name for a in attrs.fields(exc.cl)] + list(known)
        return [(str(k), _unknown_key(str(k), names)) for k in sorted(exc.extra_fields, key=str)]
    if isinstance(exc, ClassValidationError):
        out = []
        for sub in exc.exceptions:
            note = next((n for n in getattr(sub, "__notes__", []) if isinstance(n, AttributeValidationNote)), None)
            if note is None:  # extra keys, or the class's __init__ raising
                out += _problems(sub, known)
            elif type(sub) is KeyError and sub.args == (note.name,):  # cattrs' missing-key error
                out.append((note.name, "required"))
            else:
                out += [(_join(note.name, rel), msg) for rel, msg in _problems(sub)]
        return out
    if isinstance(exc, _Invalid):
        return [("", str(exc))]
    return [("", str(exc) or type(exc).__name__)]


def _scalar_hook(name: str, accepts: Callable[[Any], bool]) -> Callable[[Any, type], Any]:
    def structure(value: Any, t: type) -> Any:
        if not accepts(value):
            raise _Invalid(f"expected {name}, got {_show(value)}")
        return t(value)  # exact type (an int becomes a float); subclasses (IntEnum) convert

    return structure


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def _structure_float(value: Any, t: type) -> float:
    """A number as a float. No option means anything by nan or inf: every float field refuses them."""
    try:
        value = _scalar_hook("float", _is_number)(value, t)
    except OverflowError:  # an integer beyond float's range
        raise _Invalid("must be a finite number, got an integer too large for a float") from None
    if not math.isfinite(value):
        raise _Invalid(f"must be a finite number, got {value}")
    return value


def _is_list_type(t: Any) -> bool:
    return t is list or get_origin(t) in (list, collections.abc.MutableSequence)


def _list_hook(t: Any) -> Callable[[Any, Any], list]:
    (item,) = get_args(t) or (Any,)

    def structure(value: Any, _: Any) -> list:
        if not isinstance(value, (list, tuple)):  # cattrs would iterate a str's characters
            raise _Invalid(f"expected a list, got {_show(value)}")
        out, problems = [], []
        for i, v in enumerate(value):
            try:
                out.append(_converter.structure(v, item))
            except Exception as e:
                problems += [(_join(f"[{i}]", rel), msg) for rel, msg in _problems(e)]
        if problems:
            raise _Problems(problems)
        return out

    return structure


def _is_wide_union(t: Any) -> bool:
    """A union of more than one type besides None (``str | list[str] | None``); cattrs handles ``X | None``."""
    return get_origin(t) in (Union, types.UnionType) and len([a for a in get_args(t) if a is not type(None)]) > 1


def _type_name(t: Any) -> str:
    if _is_list_type(t) and get_args(t):
        return f"a list of {_type_name(get_args(t)[0])}"
    return getattr(t, "__name__", str(t))


def _union_hook(t: Any) -> Callable[[Any, Any], Any]:
    """A list goes to the union's list member, anything else to the first other member that takes it."""
    members = [a for a in get_args(t) if a is not type(None)]
    optional = len(members) < len(get_args(t))
    expected = " or ".join(map(_type_name, members))

    def structure(value: Any, _: Any) -> Any:
        if value is None and optional:
            return None
        shaped = [m for m in members if _is_list_type(m) == isinstance(value, (list, tuple))]
        for member in shaped:
            try:
                return _converter.structure(value, member)
            except Exception as e:
                error = e
        if len(shaped) == 1 and isinstance(value, (list, tuple)):
            raise error  # the list's own problems, by index: path[1]: expected str, got 2
        raise _Invalid(f"expected {expected}, got {_show(value)}")

    return structure


def _structure_literal(value: Any, t: Any) -> Any:
    # Compare types too: 1 == True, but a Literal[1] field must not take `true`.
    if any(type(value) is type(a) and value == a for a in get_args(t)):
        return value
    raise _Invalid(f"expected one of {', '.join(map(repr, get_args(t)))}, got {_show(value)}")


def _validator_problems(instance: Any) -> list[tuple[str, str]]:
    """Run every field's validator, collecting all failures (attrs stops at the first)."""
    out = []
    for a in attrs.fields(type(instance)):
        if a.validator is not None:
            try:
                a.validator(instance, a, getattr(instance, a.name))
            except Exception as e:
                out += [(_join(a.name, rel), msg) for rel, msg in _problems(e)]
    return out


def _attrs_hook(cl: type) -> Callable[[Any, Any], Any]:
    """cattrs' strict dict hook, plus: a table check and all validator failures reported."""
    inner = make_dict_structure_fn(
        cl, _converter, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=True, **_OVERRIDES.get(cl, {})
    )

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, Mapping):
            raise _Invalid(f"expected a table, got {_show(value)}")
        # Build with validators off, then run them all, so every invalid field
        # is reported. The switch is process-global: restore it, don't just enable.
        was_disabled = attrs.validators.get_disabled()
        attrs.validators.set_disabled(True)
        try:
            instance = inner(value, cl)
        finally:
            attrs.validators.set_disabled(was_disabled)
        problems = _validator_problems(instance)
        if problems:
            raise _Problems(problems)
        return instance

    return structure


def _entry_config(
    table: Any, registry: Registry, default: str | None, extra: tuple[str, ...]
) -> tuple[str, Any, list[tuple[str, str]]]:
    """``(kind, config, problems)`` of a section; ``extra`` keys are the caller's."""
    if not isinstance(table, Mapping):
        raise _Invalid(f"expected a table, got {_show(table)}")
    kind = table.get("kind", default)
    if kind is None:
        raise _Problems([("kind", f"required; known: {', '.join(sorted(registry)) or 'none'}")])
    if not isinstance(kind, str):
        raise _Problems([("kind", f"expected str, got {_show(kind)}")])
    if kind not in registry:
        raise _Problems([("kind", registry.unknown_message(kind))])
    fields = {k: v for k, v in table.items() if k not in ("kind", *extra)}
    try:
        return kind, _converter.structure(fields, config_class(registry[kind])), []
    except Exception as e:
        problems = _problems(e, known=("kind", *extra))
        if "kind" not in table:
            problems = [(p, m + _kind_hint(registry, kind, p, m)) for p, m in problems]
        return kind, None, problems


def _kind_hint(registry: Registry, kind: str, key: str, message: str) -> str:
    """For an unknown key under a defaulted kind: the kinds that do have it."""
    if not message.startswith("unknown key"):
        return ""
    owners = []
    for name, entry in registry.items():
        try:
            if key in attrs.fields_dict(config_class(entry)):
                owners.append(name)
        except TypeError:  # a malformed entry; it is reported when picked
            pass
    return f" (kind defaults to {kind!r}; {key!r} is a key of {', '.join(sorted(owners))})" if owners else ""


def _component_hook(registry: Registry, default: str | None = None) -> Callable[[Any, Any], Component]:
    def structure(table: Any, _: Any) -> Component:
        kind, config, problems = _entry_config(table, registry, default, ())
        if problems:
            raise _Problems(problems)
        return Component(kind, config)

    return structure


def _structure_optim(table: Any, _: Any) -> Optim:
    kind, config, problems = _entry_config(table, OPTIMIZERS, "adamw", ("lr", "groups"))
    lr, groups = 1e-3, []
    try:
        lr = _converter.structure(table.get("lr", lr), float)
    except Exception as e:
        problems = [(_join("lr", rel), msg) for rel, msg in _problems(e)] + problems
    try:
        groups = _converter.structure(table.get("groups", groups), list[OptimGroup])
    except Exception as e:
        problems += [(_join("groups", rel), msg) for rel, msg in _problems(e)]
    has_decay = config is not None and "weight_decay" in attrs.fields_dict(type(config))
    problems += [
        (f"groups[{i}].weight_decay", f"optimizer {kind!r} has no weight_decay option")
        for i, g in enumerate(groups) if g.weight_decay is not None and not has_decay
    ]
    if problems:
        raise _Problems(problems)
    return Optim(kind, lr, config, groups)


def _sweep_keys(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": [...]}}`` (``[sweep.optim]``, ``--sweep.optim.lr``) -> ``{"optim.lr": [...]}``."""
    out = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        out.update(_sweep_keys(value, f"{path}.") if isinstance(value, Mapping) else {path: value})
    return out


def _sweep_problem(key: str) -> str:
    allowed = f"sweep only {', '.join(SWEEPABLE)} or seeds = N"
    section = key.partition(".")[0]
    if key == "seed":
        return "use seeds = N to train N seeds"
    if section in ("model", "data"):
        return f"cannot differ between members: it changes shapes, so they could not share one vmapped step; {allowed}"
    if difflib.get_close_matches(key, SWEEPABLE, n=1):
        return _unknown_key(key, list(SWEEPABLE))
    if section in {a.name for a in attrs.fields(Experiment)}:
        return f"cannot differ between members of one vmapped step; {allowed}"
    return _unknown_key(key, [*SWEEPABLE, "seeds"])


def _structure_sweep(table: Any, _: Any) -> Sweep:
    if not isinstance(table, Mapping):
        raise _Invalid(f"expected a table, got {_show(table)}")
    flat = _sweep_keys(table)
    problems, values = [], {}
    seeds = flat.pop("seeds", 1)
    try:
        seeds = _converter.structure(seeds, int)
        at_least(1)(None, attrs.fields(Sweep).seeds, seeds)
    except Exception as e:
        problems += [("seeds", msg) for _, msg in _problems(e)]
    for key, value in flat.items():
        if key not in SWEEPABLE:
            problems.append((key, _sweep_problem(key)))
        elif not isinstance(value, list) or not value or not all(map(_is_finite_number, value)):
            problems.append((key, f"expected a non-empty list of numbers, none nan or inf, got {_show(value)}"))
        else:
            values[key] = [float(v) for v in value]
    if problems:
        raise _Problems(problems)
    return Sweep(values, seeds)


def _unstructure_component(c: Component | Optim) -> dict:
    lr = {"lr": c.lr} if isinstance(c, Optim) else {}
    groups = {"groups": _converter.unstructure(c.groups)} if isinstance(c, Optim) and c.groups else {}
    return {"kind": c.kind, **lr, **_converter.unstructure(c.config), **groups}


def _make_converter() -> cattrs.Converter:
    c = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    c.register_structure_hook(bool, _scalar_hook("bool", lambda v: isinstance(v, bool)))
    c.register_structure_hook(int, _scalar_hook("int", lambda v: isinstance(v, int) and not isinstance(v, bool)))
    c.register_structure_hook(float, _structure_float)
    c.register_structure_hook(str, _scalar_hook("str", lambda v: isinstance(v, str)))
    c.register_structure_hook_func(lambda t: get_origin(t) is Literal, _structure_literal)
    c.register_structure_hook_factory(_is_list_type, _list_hook)
    c.register_structure_hook_factory(_is_wide_union, _union_hook)
    c.register_structure_hook_factory(attrs.has, _attrs_hook)
    c.register_unstructure_hook(Component, _unstructure_component)
    c.register_unstructure_hook(Optim, _unstructure_component)
    c.register_unstructure_hook(Sweep, lambda sweep: {**sweep.values, "seeds": sweep.seeds})
    return c


# Experiment's sections each dispatch on their own registry.
_OVERRIDES: dict[type, dict[str, Any]] = {
    Experiment: {
        "model": override(struct_hook=_component_hook(MODELS)),
        "data": override(struct_hook=_component_hook(DATASETS)),
        "task": override(struct_hook=_component_hook(TASKS, "classification")),
        "optim": override(struct_hook=_structure_optim),
        "schedule": override(struct_hook=_component_hook(SCHEDULES, "constant")),
        "sweep": override(struct_hook=_structure_sweep),
    }
}
_converter = _make_converter()
_SECTIONS = {
    "model": (MODELS, None), "data": (DATASETS, None), "task": (TASKS, "classification"),
    "optim": (OPTIMIZERS, "adamw"), "schedule": (SCHEDULES, "constant"),
}
"""The sections that pick a registry entry by ``kind``: registry and default kind."""


# --- Loading ------------------------------------------------------------------


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
    return value if value is None or isinstance(value, (*_SCALARS, list, dict)) else text


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
                problems.append(f"{path}: cannot set, {where} is {_show(child)}, not a table")
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
            problems.append(f"imports: cannot import {module!r}: {e}")
    if problems:
        raise ConfigError(problems)


def from_dict(data: Mapping[str, Any]) -> Experiment:
    """The Experiment in a TOML-shaped dict, after importing its ``imports``."""
    if not isinstance(data, Mapping):
        raise ConfigError([f"config: expected a table, got {_show(data)}"])
    _import_all(data.get("imports", []))
    try:
        return _converter.structure(data, Experiment)
    except Exception as e:
        raise ConfigError([f"{path or 'config'}: {msg}" for path, msg in _problems(e)]) from None


def structure(data: Mapping[str, Any], cls: type) -> Any:
    """``data`` as an instance of the attrs class ``cls``, checked as strictly as a config.

    Problems raise one ``ConfigError`` whose lines are ``key: problem``.
    """
    try:
        return _converter.structure(data, cls)
    except Exception as e:
        raise ConfigError([f"{path or cls.__name__}: {msg}" for path, msg in _problems(e)]) from None


def _field_type(data: Mapping[str, Any], keys: list[str]) -> Any:
    """The type of the field at ``keys`` in the Experiment ``data`` describes, or None if there is none."""
    cls, table, t = Experiment, data, None
    for i, key in enumerate(keys):
        if cls is Experiment and key in _SECTIONS:
            registry, default = _SECTIONS[key]
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

    ``--name=2024`` names the run "2024"; ``--optim.lr=3e-4`` is the number.
    """
    parsed = {path: parse_override(text) for path, text in texts.items()}
    merged = apply_overrides(data, parsed)  # the kinds the values pick decide the fields' types
    out = {}
    for path, value in parsed.items():
        t = _field_type(merged, path.split(".")) if isinstance(path, str) else None
        takes_text = t is str or (str in get_args(t) and not isinstance(value, (list, dict)))
        out[path] = texts[path] if takes_text else value
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
        data = apply_overrides(data, overrides)
        return from_dict(apply_overrides(data, _read_texts(data, texts or {})))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{source}: invalid TOML: {e}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: nested too deeply to read; an experiment needs a few levels of tables"]) from None


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
    return _drop_none(_converter.unstructure(exp))


def dumps(exp: Experiment) -> str:
    """``exp`` as TOML; ``loads(dumps(exp)) == exp``."""
    return tomli_w.dumps(to_dict(exp))


def save(exp: Experiment, path: str | Path) -> None:
    """Write ``dumps(exp)`` to ``path``."""
    Path(path).write_text(dumps(exp), encoding="utf-8")
