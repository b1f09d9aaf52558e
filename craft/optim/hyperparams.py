"""Hyperparameters held as tensors in the optimizer state.

``inject_hyperparams(adamw, learning_rate=1e-3, weight_decay=0.1)`` is
``adamw(1e-3, weight_decay=0.1)`` with both values stored as 0-d float64
tensors in its state instead of in its closure. Two things follow: members of
a stacked state (``craft.ensemble``) can each carry their own values through
one vmapped step, and a compiled step takes new values without recompiling::

    tx = inject_hyperparams(adamw, learning_rate=1e-3, weight_decay=0.1)
    state = tx.init(params)
    state = set_hyperparams(state, learning_rate=3e-4)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from craft.optim.base import OptState, Transform, Updates, device_of
from craft.tree import Params


class InjectState(NamedTuple):
    hyperparams: dict[str, Tensor]  # name -> 0-d float64
    inner: OptState  # the state of factory(**hyperparams)


def inject_hyperparams(factory: Callable[..., Transform], /, **hyperparams: float) -> Transform:
    """``factory(**hyperparams)``, the hyperparameters held in the state as 0-d float64 tensors.

    The inner transform is rebuilt from the state's tensors on every update,
    so ``factory`` must not branch on their values: the built-in optimizers
    and schedules don't (``learning_rate``, ``weight_decay``). Fix the other
    options with ``functools.partial(adamw, clip_norm=1.0)``.
    """
    if not hyperparams:
        raise ValueError("inject_hyperparams needs at least one hyperparameter, e.g. learning_rate=1e-3")

    def init(params: Params) -> InjectState:
        device = device_of(params)
        hp = {k: torch.tensor(float(v), dtype=torch.float64, device=device) for k, v in hyperparams.items()}
        return InjectState(hp, factory(**hp).init(params))

    def update(u: Updates, state: InjectState, params: Params | None = None):
        u, inner = factory(**state.hyperparams).update(u, state.inner, params)
        return u, InjectState(state.hyperparams, inner)

    return Transform(init, update)


def _is_inject(node: Any) -> bool:
    return isinstance(node, InjectState)


def get_hyperparams(opt_state: OptState) -> dict[str, Tensor]:
    """The injected hyperparameters anywhere in ``opt_state`` (e.g. inside a ``chain``)."""
    found: dict[str, Tensor] = {}
    for node in pytree.tree_flatten(opt_state, is_leaf=_is_inject)[0]:
        if _is_inject(node):
            found.update(node.hyperparams)
    return found


def set_hyperparams(opt_state: OptState, **values: float | Tensor) -> OptState:
    """``opt_state`` with the named injected hyperparameters replaced (same dtype and device)."""
    missing = set(values) - set(get_hyperparams(opt_state))
    if missing:
        raise ValueError(
            f"no injected hyperparameter {sorted(missing)[0]!r} in this optimizer state "
            f"(it has {sorted(get_hyperparams(opt_state)) or 'none'}); build the transform with inject_hyperparams"
        )

    def replace(node: Any) -> Any:
        if not _is_inject(node):
            return node
        hp = {k: torch.as_tensor(values[k], dtype=v.dtype, device=v.device) if k in values else v
              for k, v in node.hyperparams.items()}
        return InjectState(hp, node.inner)

    return pytree.tree_map(replace, opt_state, is_leaf=_is_inject)
