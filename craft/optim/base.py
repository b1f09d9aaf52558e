"""Optimizers as pure transforms of gradients, in the style of optax.

A ``Transform`` is a pair of pure functions::

    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    params = apply_updates(params, updates)

Nothing is mutated: every call returns new tensors, so a step built on a
transform can be compiled, vmapped and checkpointed as a plain pytree. A
transform of your own keeps that contract, as optax's pure functions do: it
returns new tensors and never modifies its inputs (``updates``, ``state``,
``params``) in place. The compiled train step relies on it: the gradients'
norm is taken once and ``clip_by_global_norm`` reads it later (eager mode
notices an in-place change and computes it again; a compiled step cannot).
Transforms operate on whole trees with multi-tensor kernels
(``craft.optim.foreach``), so an update over many tensors is a handful of
kernels, and fall back to one op per tensor under ``torch.func`` transforms:
every transform can be vmapped and differentiated (also with respect to a
hyperparameter tensor).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from craft.optim import foreach
from craft.tree import Params

OptState = Any
Updates = Params
Schedule = Callable[[Tensor], Tensor]
"""A learning-rate schedule: 0-d int step tensor -> 0-d float64 tensor."""


class Transform(NamedTuple):
    """``init(params) -> state`` and ``update(grads, state, params) -> (updates, state)``."""

    init: Callable[[Params], OptState]
    update: Callable[[Updates, OptState, Params | None], tuple[Updates, OptState]]


def chain(*transforms: Transform) -> Transform:
    """Apply ``transforms`` one after another; the state is a tuple of their states.

    Under ``torch.func`` transforms, raw ``torch._foreach_*`` calls in ``transforms`` run one
    tensor at a time (``craft.optim.foreach.per_tensor``), as craft's own ops do.
    """

    def init(params: Params) -> OptState:
        return tuple(tx.init(params) for tx in transforms)

    def update(updates: Updates, state: OptState, params: Params | None = None):
        new_state = []
        # A user's transform may call torch._foreach_* directly: under vmap/grad those run per tensor too.
        with foreach.per_tensor_when_needed(updates, params):
            for tx, s in zip(transforms, state, strict=True):
                updates, s = tx.update(updates, s, params)
                new_state.append(s)
        return updates, tuple(new_state)

    return Transform(init, update)


def apply_updates(params: Params, updates: Updates) -> Params:
    """``params + updates``, leaf by leaf (one multi-tensor kernel)."""
    names = list(params)
    new = foreach.add(list(params.values()), [updates[k] for k in names])
    return dict(zip(names, new))


def stateless(fn: Callable[[Updates, Params | None], Updates]) -> Transform:
    """A transform without state: ``update(u, state, params) = (fn(u, params), state)``; its state is ``()``."""
    return Transform(lambda params: (), lambda u, state, params=None: (fn(u, params), state))


def identity() -> Transform:
    """Leave updates unchanged."""
    return stateless(lambda u, params: u)


def scale(factor: float) -> Transform:
    """Multiply updates by a constant."""
    return stateless(lambda u, params: map_scale(u, factor))


class ScheduleState(NamedTuple):
    count: Tensor  # 0-d int64: updates applied so far


def scale_by_schedule(schedule: Schedule) -> Transform:
    """Multiply updates by ``schedule(count)``; count starts at 0, +1 per update.

    The schedule is evaluated on a tensor inside the step, so a compiled step
    does not recompile as its value changes.
    """

    def init(params: Params) -> ScheduleState:
        return ScheduleState(torch.zeros((), dtype=torch.int64, device=device_of(params)))

    def update(u: Updates, state: ScheduleState, params: Params | None = None):
        return map_scale(u, schedule(state.count)), ScheduleState(state.count + 1)

    return Transform(init, update)


def in_range(where: str, name: str, value: Any, low: float = 0.0, below: float | None = None) -> None:
    """``low <= value`` (``< below``), as torch.optim checks its options; else a ValueError naming it.

    0-d tensors and schedules (values chosen at run time: ``inject_hyperparams``) are not checked.
    """
    if isinstance(value, Tensor) or callable(value):
        return
    if not (value >= low and (below is None or value < below)):  # NaN fails too
        rule = f">= {low:g}" if below is None else f"in [{low:g}, {below:g})"
        raise ValueError(f"{where}: {name} must be {rule}, got {value}")


def scale_by_learning_rate(learning_rate: float | Tensor | Schedule) -> Transform:
    """Multiply updates by ``-learning_rate`` (a constant, a 0-d tensor or a schedule): descent."""
    in_range("optimizer", "learning rate", learning_rate)
    if callable(learning_rate):
        return scale_by_schedule(lambda count: -learning_rate(count))
    if isinstance(learning_rate, Tensor):  # a hyperparameter held in the state (inject_hyperparams)
        return stateless(lambda u, params: map_scale(u, -learning_rate))
    return scale(-float(learning_rate))


def map_scale(u: Updates, factor: float | Tensor) -> Updates:
    """Every leaf of ``u`` times ``factor`` (a number or a 0-d tensor)."""
    return dict(zip(u, foreach.mul(list(u.values()), factor)))


def device_of(params: Params) -> torch.device | None:
    """The device of the first leaf (``None`` for an empty tree): where a transform puts its counters."""
    return next(iter(params.values())).device if params else None


def selection(mask: Any, params: Params, where: str) -> Any:
    """``mask`` (``{name: bool}``, or a function of ``params`` giving one) as that mapping, checked.

    A name missing from it is not selected. A mapping that names none of
    ``params`` while it selects other names is a typo, not a choice: a
    ValueError naming one, with the closest parameter names. (Names of other
    parameters are allowed: inside ``partition`` a mask written for the whole
    model sees one group.)
    """
    chosen = mask(params) if callable(mask) else mask
    if not isinstance(chosen, Mapping):
        raise TypeError(f"{where}: a mask is a {{name: bool}} mapping or a function giving one, got {type(chosen).__name__}")
    unknown = [k for k, v in chosen.items() if v and k not in params]
    if unknown and not any(k in params for k in chosen):
        close = difflib.get_close_matches(str(unknown[0]), list(params), n=3)
        hint = f"did you mean {', '.join(map(repr, close))}?" if close else f"parameters: {', '.join(list(params)[:6])}"
        raise ValueError(f"{where}: the mask names no parameter; {unknown[0]!r} is not a parameter name ({hint})")
    return chosen
