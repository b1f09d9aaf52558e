"""Parameter groups: per-group learning-rate scale, weight decay and freezing, as one ``partition``.

    tx = param_groups(functools.partial(adamw, 1e-3), [
        {"match": "head.*", "lr_scale": 10.0, "weight_decay": 0.0},
        {"match": "trunk.*", "freeze": True},      # set_to_zero: no optimizer state
    ], names=state.params)

A parameter belongs to the first group whose glob ``match``es its name
(``fnmatch``); the parameters no group matches form the group ``"default"``,
trained by ``make_tx()`` unchanged. A group's own ``weight_decay`` decays every
parameter it matches (biases and norms too), as a torch parameter group does:
``make_tx(weight_decay=..., mask=decay_all)``. Global-norm clipping belongs outside, so
that it sees every gradient: ``chain(clip_by_global_norm(1.0), param_groups(...))``; with a
frozen group, ``masked`` the clip to the other names, so that the frozen gradients do not
count: ``chain(clip_trained(1.0, groups, names), param_groups(...))``, what a run does.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from craft.optim.base import Transform, chain, in_range, scale
from craft.optim.combine import masked, partition, set_to_zero
from craft.optim.transforms import clip_by_global_norm


class Group(NamedTuple):
    """One group: a glob over parameter names and what changes for the parameters it matches."""

    match: str
    lr_scale: float = 1.0  # multiplies the group's updates (its learning rate, for sgd/adam-style optimizers)
    weight_decay: float | None = None  # passed to make_tx as weight_decay=...; None keeps make_tx's own
    freeze: bool = False  # updates are zero, and the group keeps no optimizer state


def group_labels(groups: Sequence[Group | Mapping], names: Iterable[str]) -> dict[str, str]:
    """``{name: label}``: ``"group{i}"`` for the first group matching, else ``"default"``.

    Raises ``ValueError`` naming a pattern that matches no parameter, with a few names that exist.
    """
    groups, names = [_as_group(g) for g in groups], list(names)
    for group in groups:
        if not fnmatch.filter(names, group.match):
            raise ValueError(f"parameter group match={group.match!r} matches no parameter "
                             f"(some names: {', '.join(names[:4])})")
    labels = {}
    for name in names:
        hit = next((i for i, g in enumerate(groups) if fnmatch.fnmatchcase(name, g.match)), None)
        labels[name] = "default" if hit is None else f"group{hit}"
    return labels


def param_groups(make_tx: Callable[..., Transform], groups: Sequence[Group | Mapping], names: Iterable[str]) -> Transform:
    """A ``partition`` of the parameters ``names`` into ``groups`` (see the module doc).

    ``make_tx(**options)`` builds a group's optimizer; ``options`` holds
    ``weight_decay`` and ``mask=decay_all`` when the group sets its weight decay, nothing otherwise.
    """
    groups = [_as_group(g) for g in groups]
    labels = group_labels(groups, names)
    transforms = {"default": make_tx()} if "default" in labels.values() else {}
    for i, group in enumerate(groups):
        transforms[f"group{i}"] = _group_transform(make_tx, group)
    return partition(transforms, labels)


def _group_transform(make_tx: Callable[..., Transform], group: Group) -> Transform:
    if group.freeze:
        return set_to_zero()
    if group.weight_decay is None:
        tx = make_tx()
    elif _takes_mask(make_tx):
        tx = make_tx(weight_decay=group.weight_decay, mask=decay_all)
    else:
        raise ValueError(f"parameter group match={group.match!r} sets weight_decay, which decays every parameter "
                         "it matches: make_tx must take mask=... as the built-in optimizers do (or **options)")
    return tx if group.lr_scale == 1 else chain(tx, scale(group.lr_scale))


def decay_all(params: Mapping[str, object]) -> dict[str, bool]:
    """The weight-decay mask of a group that sets its own ``weight_decay``: all of its parameters."""
    return dict.fromkeys(params, True)


def _takes_mask(make_tx: Callable[..., Transform]) -> bool:
    try:
        parameters = inspect.signature(make_tx).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: let the call say
        return True
    return any(p.name == "mask" or p.kind is p.VAR_KEYWORD for p in parameters)


def _as_group(group: Group | Mapping) -> Group:
    if not isinstance(group, Group):
        unknown = set(group) - set(Group._fields)
        if unknown:
            raise ValueError(f"unknown parameter group key {sorted(unknown)[0]!r}; keys: {', '.join(Group._fields)}")
        group = Group(**group)
    where = f"parameter group match={group.match!r}"
    in_range(where, "lr_scale", group.lr_scale)  # a negative scale would climb the loss, as the TOML refuses
    if group.weight_decay is not None:
        in_range(where, "weight_decay", group.weight_decay)
    return group


def clip_trained(clip_norm: float, groups: Sequence[Group | Mapping], names: Iterable[str]) -> Transform:
    """Global-norm clipping over the gradients of the parameters that train: a frozen group's
    gradients count for nothing, as those of parameters left out of a torch optimizer would not."""
    names = list(names)
    frozen = frozen_names(groups, names)
    if not frozen:
        return clip_by_global_norm(clip_norm)
    return masked(clip_by_global_norm(clip_norm), {name: name not in frozen for name in names})


def frozen_names(groups: Sequence[Group | Mapping], names: Iterable[str]) -> set[str]:
    """The ``names`` a ``freeze`` group takes (each name goes to the first group matching it)."""
    groups = [_as_group(g) for g in groups]
    frozen = {f"group{i}" for i, g in enumerate(groups) if g.freeze}
    return {name for name, label in group_labels(groups, names).items() if label in frozen} if frozen else set()
