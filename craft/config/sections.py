"""The experiment's sections: each picks its registry entry by ``kind`` and is read into its record.

``[model]``, ``[data]``, ``[task]`` and ``[schedule]`` become a ``Component``,
``[optim]`` an ``Optim`` (its ``lr`` and ``[[optim.groups]]`` beside the
optimizer's own keys), ``[sweep]`` a ``Sweep`` of the few values members may
differ in. ``CONVERTER`` reads and writes a whole ``Experiment`` this way;
a section without ``kind`` takes its default one (``SECTIONS``).
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from typing import Any, get_args

import attrs
import cattrs
from cattrs.gen import override

from craft.config.convert import is_finite_number, make_converter
from craft.config.entries import config_class
from craft.config.problems import Invalid, Problems, flatten, join, show, unknown_key
from craft.config.records import DEFAULT_LR, SWEEPABLE, Component, Experiment, Optim, OptimGroup, Sweep
from craft.data import DATASETS
from craft.models import MODELS
from craft.optim import OPTIMIZERS, SCHEDULES
from craft.registry import Registry
from craft.tasks import TASKS
from craft.validators import at_least

SECTIONS = {
    "model": (MODELS, None), "data": (DATASETS, None), "task": (TASKS, "classification"),
    "optim": (OPTIMIZERS, "adamw"), "schedule": (SCHEDULES, "constant"),
}
"""The sections that pick a registry entry by ``kind``: registry and default kind."""


def _entry_config(c: cattrs.Converter, table: Any, section: str, extra: tuple[str, ...]) -> tuple[str, Any, list[tuple[str, str]]]:
    """``(kind, config, problems)`` of a section; ``extra`` keys are the caller's."""
    registry, default = SECTIONS[section]
    if isinstance(table, str) and table in registry:  # --optim=adam
        raise Invalid(f"expected a table, got {show(table)}; to pick that kind, set {section}.kind (--{section}.kind={table})")
    if not isinstance(table, Mapping):
        raise Invalid(f"expected a table, got {show(table)}")
    kind = table.get("kind", default)
    if kind is None:
        raise Problems([("kind", f"required; known: {', '.join(sorted(registry)) or 'none'}")])
    if not isinstance(kind, str):
        raise Problems([("kind", f"expected str, got {show(kind)}")])
    if kind not in registry:
        raise Problems([("kind", registry.unknown_message(kind))])
    fields = {k: v for k, v in table.items() if k not in ("kind", *extra)}
    try:
        return kind, c.structure(fields, config_class(registry[kind])), []
    except Exception as e:
        problems = flatten(e, known=("kind", *extra))
        given = "kind" in table
        return kind, None, [(p, m + _kind_hint(registry, kind, given, p, m)) for p, m in problems]


def _kind_hint(registry: Registry, kind: str, given: bool, key: str, message: str) -> str:
    """For an unknown key: the kinds that do have it."""
    if not message.startswith("unknown key"):
        return ""
    owners = []
    for name, entry in registry.items():
        try:
            if key in attrs.fields_dict(config_class(entry)):
                owners.append(name)
        except TypeError:  # a malformed entry; it is reported when picked
            pass
    if not owners:
        return ""
    return f" (kind {'is' if given else 'defaults to'} {kind!r}; {key!r} is a key of {', '.join(sorted(owners))})"


def _component_hook(c: cattrs.Converter, section: str) -> Callable[[Any, Any], Component]:
    def structure(table: Any, _: Any) -> Component:
        kind, config, problems = _entry_config(c, table, section, ())
        if problems:
            raise Problems(problems)
        return Component(kind, config)

    return structure


def _optim_hook(c: cattrs.Converter) -> Callable[[Any, Any], Optim]:
    def structure(table: Any, _: Any) -> Optim:
        kind, config, problems = _entry_config(c, table, "optim", ("lr", "groups"))
        lr, groups = DEFAULT_LR, []
        try:
            lr = c.structure(table.get("lr", lr), float)
            at_least(0)(None, None, lr)  # a negative rate climbs the loss
        except Exception as e:
            problems = [(join("lr", rel), msg) for rel, msg in flatten(e)] + problems
        try:
            groups = c.structure(table.get("groups", groups), list[OptimGroup])
        except Exception as e:
            problems += [(join("groups", rel), msg) for rel, msg in flatten(e)]
        has_decay = config is not None and "weight_decay" in attrs.fields_dict(type(config))
        problems += [
            (f"groups[{i}].weight_decay", f"optimizer {kind!r} has no weight_decay option")
            for i, g in enumerate(groups) if g.weight_decay is not None and not has_decay
        ]
        problems += [  # keys a frozen group never reads
            (f"groups[{i}].{key}", "does nothing in a frozen group (freeze = true); drop it, or the freeze")
            for i, g in enumerate(groups) if g.freeze
            for key in ("lr_scale", "weight_decay") if getattr(g, key) != attrs.fields_dict(OptimGroup)[key].default
        ]
        if problems:
            raise Problems(problems)
        return Optim(kind, lr, config, groups)

    return structure


def _sweep_keys(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": [...]}}`` (``[sweep.optim]``, ``--sweep.optim.lr``) -> ``{"optim.lr": [...]}``."""
    out = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        out.update(_sweep_keys(value, f"{path}.") if isinstance(value, Mapping) else {path: value})
    return out


def is_key(key: str) -> bool:
    """Whether the dotted ``key`` names a config key: a key of some kind of its section, or of another table."""
    section, _, rest = key.partition(".")
    if section not in SECTIONS:
        t = typing.get_type_hints(Experiment).get(section)
        record = next((a for a in (t, *get_args(t)) if attrs.has(a)), None)
        return t is not None and (record is None or rest.partition(".")[0] in attrs.fields_dict(record))
    if rest in ("kind", *(("lr", "groups") if section == "optim" else ())):
        return True
    registry = SECTIONS[section][0]
    return any(rest in attrs.fields_dict(config_class(entry)) for entry in registry.values() if _has_fields(entry))


def _has_fields(entry: Any) -> bool:
    try:
        return bool(attrs.fields_dict(config_class(entry)))
    except TypeError:  # a malformed entry; it is reported when picked
        return False


def _sweep_problem(key: str) -> str:
    allowed = f"sweep only {', '.join(SWEEPABLE)} or seeds = N"
    section = key.partition(".")[0]
    if key == "seed":
        return "use seeds = N to train N seeds"
    if section in ("model", "data"):
        return f"cannot differ between members: it changes shapes, so they could not share one vmapped step; {allowed}"
    if is_key(key):
        return f"cannot differ between members of one vmapped step; {allowed} (train one run per value of {key})"
    suffixed = [k for k in SWEEPABLE if k.endswith(f".{key}")]  # --sweep.lr=[...]
    return unknown_key(key, list(SWEEPABLE)) if not suffixed else f"unknown key; did you mean {suffixed[0]!r}?"


def _sweep_hook(c: cattrs.Converter) -> Callable[[Any, Any], Sweep | None]:
    def structure(table: Any, _: Any) -> Sweep | None:
        if table is None:  # --sweep=None: an optional table left out, one run
            return None
        if not isinstance(table, Mapping):
            raise Invalid(f"expected a table, got {show(table)}")
        flat = _sweep_keys(table)
        problems, values = [], {}
        seeds = flat.pop("seeds", 1)
        try:
            seeds = c.structure(seeds, int)
            at_least(1)(None, attrs.fields(Sweep).seeds, seeds)
        except Exception as e:
            problems += [("seeds", msg) for _, msg in flatten(e)]
        for key, value in flat.items():
            if key not in SWEEPABLE:
                problems.append((key, _sweep_problem(key)))
            elif not isinstance(value, list) or not value or not all(map(is_finite_number, value)):
                problems.append((key, f"expected a non-empty list of numbers, none nan or inf, got {show(value)}"))
            elif any(v < 0 for v in value):  # held as tensors in the state, which the optimizer cannot check
                problems.append((key, f"every value must be >= 0, got {show(value)}"))
            else:
                values[key] = [float(v) for v in value]
        if problems:
            raise Problems(problems)
        return Sweep(values, seeds)

    return structure


def _experiment_fields(c: cattrs.Converter) -> dict[type, dict[str, Any]]:
    """Experiment's sections each dispatch on their own registry."""
    sections = {name: override(struct_hook=_component_hook(c, name)) for name in SECTIONS if name != "optim"}
    return {Experiment: {
        **sections, "optim": override(struct_hook=_optim_hook(c)), "sweep": override(struct_hook=_sweep_hook(c)),
    }}


def experiment_converter() -> cattrs.Converter:
    """The converter that reads an ``Experiment`` from TOML-shaped data and writes it back."""
    c = make_converter(_experiment_fields)
    c.register_unstructure_hook(Component, lambda s: {"kind": s.kind, **c.unstructure(s.config)})
    c.register_unstructure_hook(Optim, lambda s: {
        "kind": s.kind, "lr": s.lr, **c.unstructure(s.config), **({"groups": c.unstructure(s.groups)} if s.groups else {}),
    })
    c.register_unstructure_hook(Sweep, lambda sweep: {**sweep.values, "seeds": sweep.seeds})
    return c


CONVERTER = experiment_converter()
"""Reads (``CONVERTER.structure(data, Experiment)``) and writes (``unstructure``) experiments."""
