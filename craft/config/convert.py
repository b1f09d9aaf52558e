"""The strict cattrs converter configs are read with: every problem found, none guessed.

No value is coerced: ``"false"`` is not a bool, ``0.5`` not an int, ``1`` not
``true``, a string not a list, and no float field takes nan or inf. An attrs
record is checked as a table, its unknown keys refused with a suggestion, and
all its validators run, so one pass reports every invalid field
(``craft.config.problems`` carries the paths). ``make_converter`` takes the
per-record field hooks (an ``Experiment``'s sections) as a function of the
converter they structure with.
"""

from __future__ import annotations

import collections.abc
import math
import types
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union, get_args, get_origin

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn

from craft.config.problems import Invalid, Problems, flatten, join, show, validator_problems


def _scalar_hook(name: str, accepts: Callable[[Any], bool]) -> Callable[[Any, type], Any]:
    def structure(value: Any, t: type) -> Any:
        if not accepts(value):
            raise Invalid(f"expected {name}, got {show(value)}")
        return t(value)  # exact type (an int becomes a float); subclasses (IntEnum) convert

    return structure


def is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A number, neither nan nor inf."""
    return is_number(value) and math.isfinite(value)


def _structure_float(value: Any, t: type) -> float:
    """A number as a float. No option means anything by nan or inf: every float field refuses them."""
    try:
        value = _scalar_hook("float", is_number)(value, t)
    except OverflowError:  # an integer beyond float's range
        raise Invalid("must be a finite number, got an integer too large for a float") from None
    if not math.isfinite(value):
        raise Invalid(f"must be a finite number, got {value}")
    return value


def is_list_type(t: Any) -> bool:
    """Whether ``t`` is a list type (``list``, ``list[int]``)."""
    return t is list or get_origin(t) in (list, collections.abc.MutableSequence)


def _list_hook(c: cattrs.Converter, t: Any) -> Callable[[Any, Any], list]:
    (item,) = get_args(t) or (Any,)

    def structure(value: Any, _: Any) -> list:
        if not isinstance(value, (list, tuple)):  # cattrs would iterate a str's characters
            raise Invalid(f"expected a list, got {show(value)}")
        out, problems = [], []
        for i, v in enumerate(value):
            try:
                out.append(c.structure(v, item))
            except Exception as e:
                problems += [(join(f"[{i}]", rel), msg) for rel, msg in flatten(e)]
        if problems:
            raise Problems(problems)
        return out

    return structure


def _is_wide_union(t: Any) -> bool:
    """A union of more than one type besides None (``str | list[str] | None``); cattrs handles ``X | None``."""
    return get_origin(t) in (Union, types.UnionType) and len([a for a in get_args(t) if a is not type(None)]) > 1


def _is_optional_record(t: Any) -> bool:
    """``Record | None``: an optional table (``[train.sample]``)."""
    args = get_args(t)
    return get_origin(t) in (Union, types.UnionType) and len(args) == 2 and type(None) in args and any(map(attrs.has, args))


def _optional_record_hook(c: cattrs.Converter, t: Any) -> Callable[[Any, Any], Any]:
    """None leaves the table out (``--train.sample=None``: TOML has no null); a table is the record."""
    (record,) = [a for a in get_args(t) if a is not type(None)]

    def structure(value: Any, _: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise Invalid(f"expected a table, got {show(value)}; to leave this optional table out, "
                          f"remove it from the TOML or give None on the command line")
        return c.structure(value, record)

    return structure


def _type_name(t: Any) -> str:
    if is_list_type(t) and get_args(t):
        return f"a list of {_type_name(get_args(t)[0])}"
    return getattr(t, "__name__", str(t))


def _union_hook(c: cattrs.Converter, t: Any) -> Callable[[Any, Any], Any]:
    """A list goes to the union's list member, anything else to the first other member that takes it."""
    members = [a for a in get_args(t) if a is not type(None)]
    optional = len(members) < len(get_args(t))
    expected = " or ".join(map(_type_name, members))

    def structure(value: Any, _: Any) -> Any:
        if value is None and optional:
            return None
        shaped = [m for m in members if is_list_type(m) == isinstance(value, (list, tuple))]
        for member in shaped:
            try:
                return c.structure(value, member)
            except Exception as e:
                error = e
        if len(shaped) == 1 and isinstance(value, (list, tuple)):
            raise error  # the list's own problems, by index: path[1]: expected str, got 2
        raise Invalid(f"expected {expected}, got {show(value)}")

    return structure


def _structure_literal(value: Any, t: Any) -> Any:
    # Compare types too: 1 == True, but a Literal[1] field must not take `true`.
    if any(type(value) is type(a) and value == a for a in get_args(t)):
        return value
    raise Invalid(f"expected one of {', '.join(map(repr, get_args(t)))}, got {show(value)}")


def _attrs_hook(c: cattrs.Converter, cl: type, fields: dict[str, Any]) -> Callable[[Any, Any], Any]:
    """cattrs' strict dict hook, plus: a table check and all validator failures reported."""
    inner = make_dict_structure_fn(cl, c, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=True, **fields)

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, Mapping):
            raise Invalid(f"expected a table, got {show(value)}")
        # Build with validators off, then run them all, so every invalid field
        # is reported. The switch is process-global: restore it, don't just enable.
        was_disabled = attrs.validators.get_disabled()
        attrs.validators.set_disabled(True)
        try:
            instance = inner(value, cl)
        finally:
            attrs.validators.set_disabled(was_disabled)
        problems = validator_problems(instance)
        if problems:
            raise Problems(problems)
        return instance

    return structure


FieldHooks = Callable[[cattrs.Converter], dict[type, dict[str, Any]]]
"""``converter -> {record: {field: cattrs.gen.override(...)}}``: the records whose fields structure their own way."""


def make_converter(field_hooks: FieldHooks = lambda c: {}) -> cattrs.Converter:
    """A strict converter (see the module docstring), with ``field_hooks(converter)`` for the records they name."""
    c = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    fields: dict[type, dict[str, Any]] = {}
    c.register_structure_hook(bool, _scalar_hook("bool", lambda v: isinstance(v, bool)))
    c.register_structure_hook(int, _scalar_hook("int", lambda v: isinstance(v, int) and not isinstance(v, bool)))
    c.register_structure_hook(float, _structure_float)
    c.register_structure_hook(str, _scalar_hook("str", lambda v: isinstance(v, str)))
    c.register_structure_hook_func(lambda t: get_origin(t) is Literal, _structure_literal)
    c.register_structure_hook_factory(is_list_type, lambda t: _list_hook(c, t))
    c.register_structure_hook_factory(_is_optional_record, lambda t: _optional_record_hook(c, t))
    c.register_structure_hook_factory(_is_wide_union, lambda t: _union_hook(c, t))
    # Looked up when a record is first structured, so the hooks below may use `c` themselves.
    c.register_structure_hook_factory(attrs.has, lambda cl: _attrs_hook(c, cl, fields.get(cl, {})))
    fields.update(field_hooks(c))
    return c
