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
import numbers
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
        flat(params)
        return tuple(tx.init(params) for tx in transforms)

    def update(updates: Updates, state: OptState, params: Params | None = None):
        if not isinstance(state, (tuple, list)) or hasattr(state, "_fields") or len(state) != len(transforms):
            raise TypeError(f"this chain of {len(transforms)} transforms got {state_name(state)} as its state: "
                            "pass the state that its own init returned")
        new_state = []
        # A user's transform may call torch._foreach_* directly: under vmap/grad those run per tensor too.
        with foreach.per_tensor_when_needed(updates, params):
            for tx, s in zip(transforms, state, strict=True):
                updates, s = tx.update(updates, s, params)
                new_state.append(s)
        return updates, tuple(new_state)

    return Transform(init, update)


def apply_updates(params: Params, updates: Updates) -> Params:
    """``params + updates``, leaf by leaf (one multi-tensor kernel); every leaf keeps its param's dtype."""
    new = dict(zip(updates, foreach.add(matching(params, updates, "the params", "apply_updates"),
                                        list(updates.values()))))
    return {k: new[k] for k in params}


def stateless(fn: Callable[[Updates, Params | None], Updates]) -> Transform:
    """A transform without state: ``update(u, state, params) = (fn(u, params), state)``; its state is ``()``."""

    def init(params: Params | None) -> OptState:
        if params is not None:  # a stateless transform needs no params; a nested dict is still a mistake
            flat(params)
        return ()

    return Transform(init, lambda u, state, params=None: (fn(u, params), state))


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
        expect_state(state, ScheduleState, "scale_by_schedule")
        return map_scale(u, schedule(state.count)), ScheduleState(state.count + 1)

    return Transform(init, update)


def in_range(where: str, name: str, value: Any, low: float = 0.0, below: float | None = None) -> None:
    """``low <= value`` (``< below``), as torch.optim checks its options; else a ValueError naming it.

    0-d tensors and schedules (values chosen at run time: ``inject_hyperparams``) are not checked;
    anything else that is not a number is a TypeError.
    """
    if isinstance(value, Tensor) or callable(value):
        return
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be a number, got {value!r}")
    if not (value >= low and (below is None or value < below)):  # NaN fails too
        rule = f">= {low:g}" if below is None else f"in [{low:g}, {below:g})"
        raise ValueError(f"{where}: {name} must be {rule}, got {value}")


def scale_by_learning_rate(learning_rate: float | Tensor | Schedule) -> Transform:
    """Multiply updates by ``-learning_rate`` (a constant, a 0-d tensor or a schedule): descent."""
    if not isinstance(learning_rate, (numbers.Real, Tensor)) and not callable(learning_rate):
        raise TypeError(f"optimizer: lr must be a number or a schedule, got {learning_rate!r}")
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
    return next(iter(flat(params).values())).device if params else None


def flat(params: Params, what: str = "params") -> Params:
    """``params`` itself, a flat ``{name: Tensor}`` dict; anything else is a TypeError naming the fix.

    Checked where a state is made (``init``): the update then reads its state by the same names.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"{what} must be a flat {{name: Tensor}} dict, as dict(model.named_parameters()) gives, "
                        f"got {type(params).__name__}")
    for name, leaf in params.items():
        if not isinstance(leaf, Tensor):
            inner = f"; name its leaves {name}.<key>" if isinstance(leaf, Mapping) else ""
            raise TypeError(f"{what} must be a flat {{name: Tensor}} dict keyed by dotted names (craft.tree "
                            f"flattens modules by dotted name, as dict(model.named_parameters()) gives), but "
                            f"{name!r} holds a {type(leaf).__name__}{inner}")
    return params


def matching(tree: Params, u: Updates, what: str, where: str) -> list[Tensor]:
    """``tree``'s leaves (``what``: ``"the optimizer state"`` or ``"the params"``) in the order of ``u``'s
    names, read by name.

    A name missing on either side, or a leaf whose shape is not its update's,
    is a ValueError naming it: read by position, a reordered dict would mix
    leaves and a ``(3,)`` update would broadcast over a ``(3, 3)`` leaf. Names
    and shapes are static, so the check costs a compiled step nothing.
    """
    if tree.keys() != u.keys():
        flat(u, "the gradients")  # a nested dict says so first
        raise ValueError(_mismatch(tree, u, what, where))
    leaves = [tree[k] for k in u]
    if any(not isinstance(g, Tensor) or t.shape != g.shape for g, t in zip(u.values(), leaves)):
        flat(u, "the gradients")
        name = next(k for k, t in zip(u, leaves) if t.shape != u[k].shape)
        raise ValueError(f"{where}: the update of {name!r} has shape {tuple(u[name].shape)} but {what} "
                         f"{'holds' if 'state' in what else 'hold'} {tuple(tree[name].shape)} for it: gradients, "
                         "params and optimizer state must come from the same model")
    return leaves


def _mismatch(tree: Params, u: Updates, what: str, where: str) -> str:
    names = lambda ks: ", ".join(map(repr, list(ks)[:6])) + (", ..." if len(ks) > 6 else "")  # noqa: E731
    missing, extra = [k for k in u if k not in tree], [k for k in tree if k not in u]
    state, grads = "state" in what, "the updates" if where == "apply_updates" else "the gradients"
    fix = "init it from these params" if state else f"pass the params and {grads} of one model, by the same names"
    if missing:
        whose = f"it was built for {names(tree)}" if state else f"they hold {names(tree)}"
        return f"{where}: {what} {'has' if state else 'have'} no entry for {missing[0]!r} ({whose}): {fix}"
    return (f"{where}: {what} {'has' if state else 'have'} entries {grads} lack: {names(extra)} "
            f"({grads} name {names(u)}): {fix}, or give every parameter a gradient")


def expect_state(state: Any, kind: type, where: str) -> None:
    """A TypeError naming both types unless ``state`` is a ``kind``: the state of another optimizer."""
    if not isinstance(state, kind):
        article = "an" if kind.__name__[0] in "AEIOU" else "a"
        raise TypeError(f"{where} expected {article} {kind.__name__} as its state, got {state_name(state)}: "
                        "pass the state that this optimizer's own init returned")


def state_name(state: Any) -> str:
    """``an AdamState``, ``a tuple of 2 states (AdamState, ())``: what a state is, for an error message."""
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return f"{'an' if type(state).__name__[0] in 'AEIOU' else 'a'} {type(state).__name__}"
    if isinstance(state, (tuple, list)):
        kinds = ("()" if isinstance(s, tuple) and not s else type(s).__name__ for s in state)
        return f"a {type(state).__name__} of {len(state)} states ({', '.join(kinds)})"
    return f"a {type(state).__name__}"


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
