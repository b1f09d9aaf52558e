"""Optimizers as pure transforms of gradients, in the style of optax.

A ``Transform`` is a pair of pure functions::

    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    params = apply_updates(params, updates)

Nothing is mutated: every call returns new tensors, so a step built on a
transform can be compiled, vmapped and checkpointed as a plain pytree.
Transforms operate on whole trees with ``torch._foreach_*`` kernels, so an
update over many tensors is a handful of multi-tensor kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

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
    """Apply ``transforms`` one after another; the state is a tuple of their states."""

    def init(params: Params) -> OptState:
        return tuple(tx.init(params) for tx in transforms)

    def update(updates: Updates, state: OptState, params: Params | None = None):
        new_state = []
        for tx, s in zip(transforms, state, strict=True):
            updates, s = tx.update(updates, s, params)
            new_state.append(s)
        return updates, tuple(new_state)

    return Transform(init, update)


def apply_updates(params: Params, updates: Updates) -> Params:
    """``params + updates``, leaf by leaf (one multi-tensor kernel)."""
    names = list(params)
    new = torch._foreach_add(list(params.values()), [updates[k] for k in names])
    return dict(zip(names, new))


def _stateless(fn: Callable[[Updates, Params | None], Updates]) -> Transform:
    return Transform(lambda params: (), lambda u, state, params=None: (fn(u, params), state))


def identity() -> Transform:
    """Leave updates unchanged."""
    return _stateless(lambda u, params: u)


def scale(factor: float) -> Transform:
    """Multiply updates by a constant."""
    return _stateless(lambda u, params: _map_scale(u, factor))


class ScheduleState(NamedTuple):
    count: Tensor  # 0-d int64: updates applied so far


def scale_by_schedule(schedule: Schedule) -> Transform:
    """Multiply updates by ``schedule(count)``; count starts at 0, +1 per update.

    The schedule is evaluated on a tensor inside the step, so a compiled step
    does not recompile as its value changes.
    """

    def init(params: Params) -> ScheduleState:
        return ScheduleState(torch.zeros((), dtype=torch.int64, device=_device(params)))

    def update(u: Updates, state: ScheduleState, params: Params | None = None):
        return _map_scale(u, schedule(state.count)), ScheduleState(state.count + 1)

    return Transform(init, update)


def scale_by_learning_rate(learning_rate: float | Tensor | Schedule) -> Transform:
    """Multiply updates by ``-learning_rate`` (a constant, a 0-d tensor or a schedule): descent."""
    if callable(learning_rate):
        return scale_by_schedule(lambda count: -learning_rate(count))
    if isinstance(learning_rate, Tensor):  # a hyperparameter held in the state (inject_hyperparams)
        return _stateless(lambda u, params: _map_scale(u, -learning_rate))
    return scale(-float(learning_rate))


def _map_scale(u: Updates, factor: float | Tensor) -> Updates:
    return dict(zip(u, torch._foreach_mul(list(u.values()), factor)))


def _device(params: Params) -> torch.device | None:
    return next(iter(params.values())).device if params else None
