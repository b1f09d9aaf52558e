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

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from craft.optim.base import OptState, Transform, Updates, device_of, expect_state
from craft.tree import Params


class InjectState(NamedTuple):
    hyperparams: dict[str, Tensor]  # name -> 0-d float64 (a schedule's: its value at the last update)
    inner: OptState  # the state of factory(**hyperparams)
    count: Tensor | tuple = ()  # 0-d int64 updates so far when a value is a schedule; else () (no leaf)


def inject_hyperparams(factory: Callable[..., Transform], /, **hyperparams: float | Tensor | Callable) -> Transform | Callable:
    """``factory(**hyperparams)``, the hyperparameters held in the state as 0-d float64 tensors.

    ``inject_hyperparams(adamw)(learning_rate=1e-3)``, optax's form, is the same: with no values given,
    the factory of such transforms.

    A value is a number, a 0-d tensor (kept differentiable: a hypergradient flows through it) or a
    schedule (``cosine_decay(...)``), evaluated at the state's update count on every update, as optax's
    (``set_hyperparams`` on a scheduled one lasts until that next update). The inner transform is rebuilt
    from the state's tensors on every update, so ``factory`` must not branch on their values: the
    built-in optimizers don't on ``learning_rate`` or ``weight_decay``; one whose state would change
    shape with a value (``sgd``'s ``momentum``) is refused at ``init``. Fix the other options with
    ``functools.partial(sgd, momentum=0.9)``.
    """
    if not hyperparams:  # optax's inject_hyperparams(factory)(**values)
        return _Injector(functools.partial(_injected, factory))
    return _injected(factory, **hyperparams)


class _Injector(NamedTuple):
    """``inject_hyperparams(factory)``: called with the values, the transform; used as one, a clear error."""

    make: Callable[..., Transform]

    def __call__(self, **hyperparams: float | Tensor | Callable) -> Transform:
        return self.make(**hyperparams)

    def __getattr__(self, name: str):
        raise AttributeError(f"inject_hyperparams(factory) is not a transform yet, so it has no {name!r}: give it the "
                             "values, inject_hyperparams(factory)(learning_rate=1e-3) or inject_hyperparams(factory, learning_rate=1e-3)")


def _injected(factory: Callable[..., Transform], /, **hyperparams: float | Tensor | Callable) -> Transform:
    if not hyperparams:
        raise ValueError("inject_hyperparams needs at least one hyperparameter, e.g. learning_rate=1e-3")
    scheduled = [k for k, v in hyperparams.items() if callable(v)]

    def init(params: Params) -> InjectState:
        device = device_of(params)
        count = torch.zeros((), dtype=torch.int64, device=device)
        hp = {k: _as_value(k, v(count) if callable(v) else v, device) for k, v in hyperparams.items()}
        _check_structure(factory, list(hp), params)
        return InjectState(hp, factory(**hp).init(params), count if scheduled else ())

    def update(u: Updates, state: InjectState, params: Params | None = None):
        expect_state(state, InjectState, "inject_hyperparams")
        hp = {**state.hyperparams, **{k: hyperparams[k](state.count).to(torch.float64) for k in scheduled}}
        u, inner = factory(**hp).update(u, state.inner, params)
        return u, InjectState(hp, inner, state.count + 1 if scheduled else ())

    return Transform(init, update)


def _as_value(name: str, value: Any, device: torch.device | None) -> Tensor:
    """A 0-d float64 tensor of ``value``: a tensor converted (still differentiable), a number as one."""
    if isinstance(value, Tensor):
        if value.ndim != 0:
            raise ValueError(f"inject_hyperparams: {name} is a tensor of shape {tuple(value.shape)}; give a number, "
                             "a 0-d tensor or a schedule (per-member values: set_hyperparams on a stacked state)")
        return value.to(dtype=torch.float64, device=device)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"inject_hyperparams: {name} must be a number, a 0-d tensor or a schedule, "
                         f"got {type(value).__name__}")
    return torch.tensor(float(value), dtype=torch.float64, device=device)


def _check_structure(factory: Callable[..., Transform], names: list[str], params: Params) -> None:
    """A ValueError naming a hyperparameter whose value (zero or not) changes the inner state's structure:
    the state built for one value would not fit the transform rebuilt for another. Probed on meta tensors
    (no memory) with values 0.5 and 0; a factory that cannot be probed so is let through."""
    probe = {k: torch.empty_like(v, device="meta") for k, v in params.items()}

    def structure(**changed: float) -> Any:
        values = {k: torch.tensor(changed.get(k, 0.5), dtype=torch.float64) for k in names}
        return pytree.tree_structure(factory(**values).init(probe))

    try:
        want = structure()
    except Exception:  # noqa: BLE001 - a factory meta tensors do not suit: nothing to compare with
        return
    for name in names:
        try:
            same = structure(**{name: 0.0}) == want
        except (ValueError, TypeError, RuntimeError):  # it looked at the value and refused it
            same = False
        if not same:
            fname = getattr(factory, "__name__", None) or getattr(getattr(factory, "func", None), "__name__", "factory")
            raise ValueError(f"inject_hyperparams: {name} changes the structure of {fname}'s state (which transforms "
                             f"it chains), so it cannot be held in the state; fix it with "
                             f"functools.partial({fname}, {name}=...) and inject the others")


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
    """``opt_state`` with the named injected hyperparameters replaced (same dtype, device and shape).

    A number or a 0-d tensor fills the state's tensor: of a stacked state (``craft.ensemble``, shape
    ``(K,)``) every member's; a ``(K,)`` tensor gives each member its own value. A tensor stays differentiable.
    """
    have = get_hyperparams(opt_state)
    missing = set(values) - set(have)
    if missing:
        raise ValueError(
            f"no injected hyperparameter {sorted(missing)[0]!r} in this optimizer state "
            f"(it has {sorted(have) or 'none'}); build the transform with inject_hyperparams"
        )

    def replace(node: Any) -> Any:
        if not _is_inject(node):
            return node
        hp = {k: _fitted(k, values[k], v) if k in values else v for k, v in node.hyperparams.items()}
        return node._replace(hyperparams=hp)

    return pytree.tree_map(replace, opt_state, is_leaf=_is_inject)


def _fitted(name: str, value: float | Tensor, old: Tensor) -> Tensor:
    """``value`` as a tensor like ``old``: its dtype and device, broadcast from 0-d to its shape."""
    new = torch.as_tensor(value, dtype=old.dtype, device=old.device)
    if new.shape == old.shape:
        return new
    if new.ndim == 0:
        return new.expand(old.shape).clone()
    raise ValueError(f"set_hyperparams: {name} of shape {tuple(new.shape)} does not fit the state's "
                     f"{tuple(old.shape)}; give one value, or one per member of a stacked state")
