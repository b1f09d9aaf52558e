"""Combinators: transforms built from transforms, with optax's semantics.

Each takes a ``Transform`` (or a table of them) and returns one; each state
is a NamedTuple, so a combined state is a pytree like any other. Decisions
that depend on values (is this the last micro-step? are the gradients
finite?) are made with ``torch.where`` on device, never with a Python
branch: a compiled step stays one graph and never syncs.

    tx = partition({"head": adamw(1e-3), "trunk": set_to_zero()},
                   lambda name: "head" if name.startswith("head.") else "trunk")
    tx = multi_steps(adamw(1e-3), every_k=4)        # one update per 4 calls
    tx = chain(adamw(1e-3), ema(0.999))             # find_state(s, EmaState).params: averaged weights
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from craft.optim import foreach
from craft.optim.base import (
    OptState,
    Transform,
    Updates,
    device_of,
    expect_state,
    flat,
    matching,
    selection,
    stateless,
)
from craft.tree import Params, zeros_like

Mask = Mapping[str, bool] | Callable[[Params], Mapping[str, bool]]
Labels = Mapping[str, str] | Callable[[str], str]


def _where(condition: Tensor, new: Any, old: Any) -> Any:
    """Leaf by leaf, ``new`` where the 0-d bool ``condition`` holds, else ``old``."""
    return pytree.tree_map(lambda a, b: torch.where(condition, a, b), new, old)


def set_to_zero() -> Transform:
    """Emit zeros: the leaves it sees do not move (a frozen group in ``partition``). No state."""
    return stateless(lambda u, params: zeros_like(u))


class PartitionState(NamedTuple):
    inner: dict[str, OptState]  # label -> the state of that label's transform on its leaves


def _label_of(labels: Labels, names: list[str], transforms: Mapping[str, Transform]) -> dict[str, str]:
    found = {n: labels(n) if callable(labels) else labels.get(n) for n in names}
    for name, label in found.items():
        if label not in transforms:
            raise ValueError(f"parameter {name!r} has label {label!r}, which has no transform "
                             f"(labels with one: {sorted(transforms)})")
    return found


def partition(transforms: Mapping[str, Transform], labels: Labels) -> Transform:
    """Each leaf is updated by ``transforms[labels[name]]`` alone (optax's ``multi_transform``).

    ``labels`` maps a parameter name to a label, as a dict or a function of
    the name. Every label's transform sees only its own leaves, and keeps a
    state for them alone (``set_to_zero()`` keeps none).
    """

    def split(tree: Params, of: dict[str, str]) -> dict[str, Params]:
        return {label: {k: v for k, v in tree.items() if of[k] == label} for label in transforms}

    def init(params: Params) -> PartitionState:
        groups = split(flat(params), _label_of(labels, list(params), transforms))
        return PartitionState({label: tx.init(groups[label]) for label, tx in transforms.items()})

    def update(u: Updates, state: PartitionState, params: Params | None = None):
        expect_state(state, PartitionState, "partition")
        of = _label_of(labels, list(u), transforms)
        groups, param_groups = split(u, of), split(params, of) if params is not None else {}
        out, new_state = {}, {}
        for label, tx in transforms.items():
            out[label], new_state[label] = tx.update(groups[label], state.inner[label], param_groups.get(label))
        merged = {k: v for group in out.values() for k, v in group.items()}
        return {k: merged[k] for k in u}, PartitionState(new_state)

    return Transform(init, update)


class MaskedState(NamedTuple):
    inner: OptState  # the inner transform's state on the selected leaves


def masked(inner: Transform, mask: Mask) -> Transform:
    """Apply ``inner`` to the leaves ``mask`` selects; the others pass through unchanged.

    ``mask`` is ``{name: bool}`` or a function of the params giving one (a
    name missing from it is not selected).
    """

    def selected(tree: Params, params: Params) -> Params:
        chosen = selection(mask, params, "masked")
        return {k: v for k, v in tree.items() if chosen.get(k, False)}

    def init(params: Params) -> MaskedState:
        return MaskedState(inner.init(selected(flat(params), params)))

    def update(u: Updates, state: MaskedState, params: Params | None = None):
        expect_state(state, MaskedState, "masked")
        if callable(mask) and params is None:
            raise ValueError("masked with a mask function needs params: call update(grads, state, params)")
        sub = selected(u, params if params is not None else u)
        new, inner_state = inner.update(sub, state.inner, {k: params[k] for k in sub} if params is not None else None)
        return {**u, **new}, MaskedState(inner_state)

    return Transform(init, update)


class MultiStepsState(NamedTuple):
    mini_step: Tensor  # 0-d int64: micro-steps since the last update
    acc: Params  # sum of this round's gradients
    inner: OptState


def multi_steps(inner: Transform, every_k: int) -> Transform:
    """Accumulate gradients over ``every_k`` calls; every ``every_k``-th call applies ``inner`` to their mean.

    The other calls emit zeros and leave ``inner``'s state as it was (optax's
    ``MultiSteps``). ``inner`` runs on every call and its result is selected
    with ``torch.where``: one graph, no branch.
    """
    if isinstance(every_k, bool) or not isinstance(every_k, int) or every_k < 1:
        raise ValueError(f"multi_steps: every_k must be a whole number >= 1, got {every_k!r}")

    def init(params: Params) -> MultiStepsState:
        return MultiStepsState(torch.zeros((), dtype=torch.int64, device=device_of(params)),
                               zeros_like(params), inner.init(params))

    def update(u: Updates, state: MultiStepsState, params: Params | None = None):
        expect_state(state, MultiStepsState, "multi_steps")
        names = list(u)
        acc = foreach.add(matching(state.acc, u, "the optimizer state", "multi_steps"), list(u.values()))
        acc = dict(zip(names, acc))
        final = state.mini_step + 1 >= every_k
        mean = dict(zip(names, foreach.div(list(acc.values()), float(every_k))))
        new, inner_state = inner.update(mean, state.inner, params)
        out = {k: torch.where(final, v, torch.zeros_like(v)) for k, v in new.items()}
        kept_acc = {k: torch.where(final, torch.zeros_like(v), v) for k, v in acc.items()}
        mini = torch.where(final, torch.zeros_like(state.mini_step), state.mini_step + 1)
        return out, MultiStepsState(mini, kept_acc, _where(final, inner_state, state.inner))

    return Transform(init, update)


class LookaheadState(NamedTuple):
    count: Tensor  # 0-d int64: fast steps taken
    slow: Params  # the slow weights
    inner: OptState


def lookahead(inner: Transform, sync_period: int, alpha: float) -> Transform:
    """Lookahead (Zhang et al. 2019): ``inner`` takes fast steps; every ``sync_period`` steps
    the slow weights move ``alpha`` of the way to the fast ones and the params jump there.

    The params hold the fast weights between syncs; the slow weights live in
    the state (``find_state(s, LookaheadState).slow``), starting at the initial
    params. ``inner``'s state carries on across syncs (optax's ``reset_state=False``).
    """
    if sync_period < 1 or not 0 <= alpha <= 1:
        raise ValueError(f"lookahead: need sync_period >= 1 and 0 <= alpha <= 1, got {sync_period}, {alpha}")

    def init(params: Params) -> LookaheadState:
        count = torch.zeros((), dtype=torch.int64, device=device_of(params))
        return LookaheadState(count, {k: p.clone() for k, p in params.items()}, inner.init(params))

    def update(u: Updates, state: LookaheadState, params: Params | None = None):
        if params is None:
            raise ValueError("lookahead needs params: call update(grads, state, params)")
        expect_state(state, LookaheadState, "lookahead")
        fast_u, inner_state = inner.update(u, state.inner, params)
        count = state.count + 1
        sync = count % sync_period == 0
        names = list(fast_u)
        fast = foreach.add(matching(params, fast_u, "the params", "lookahead"), list(fast_u.values()))
        slow = foreach.lerp(matching(state.slow, fast_u, "the optimizer state", "lookahead"), fast, alpha)
        out = {k: torch.where(sync, s - params[k], v) for k, s, v in zip(names, slow, fast_u.values())}
        new_slow = {k: torch.where(sync, s, state.slow[k]) for k, s in zip(names, slow)}
        return out, LookaheadState(count, new_slow, inner_state)

    return Transform(init, update)


class EmaState(NamedTuple):
    count: Tensor  # 0-d int64
    params: Params  # the average of the weights


def ema(decay: float) -> Transform:
    """Keep an exponential moving average of the weights in the state; updates pass through.

    Put it last in a chain (after the learning rate), so that
    ``params + updates`` are the new weights: ``avg = decay * avg + (1 - decay) * new``.
    The average starts at the initial weights (so it needs no debiasing: after
    ``t`` updates ``avg_t = decay^t w_0 + (1 - decay) sum_i decay^(t-i) w_i``).
    Read it with ``find_state(opt_state, EmaState).params``. With ``multi_steps``, put it inside,
    ``multi_steps(chain(tx, ema(d)), k)``: outside it would average on every call, not every real update.
    """
    if not 0 <= decay < 1:
        raise ValueError(f"ema: decay must be in [0, 1), got {decay}")

    def init(params: Params) -> EmaState:
        count = torch.zeros((), dtype=torch.int64, device=device_of(params))
        return EmaState(count, {k: p.detach().clone() for k, p in params.items()})

    def update(u: Updates, state: EmaState, params: Params | None = None):
        if params is None:
            raise ValueError("ema needs params: call update(grads, state, params)")
        expect_state(state, EmaState, "ema")
        names = list(u)
        new = foreach.add(matching(params, u, "the params", "ema"), list(u.values()))
        avg = foreach.lerp(matching(state.params, u, "the optimizer state", "ema"), new, 1 - decay)
        return u, EmaState(state.count + 1, dict(zip(names, avg)))

    return Transform(init, update)


class ApplyIfFiniteState(NamedTuple):
    notfinite_count: Tensor  # 0-d int64: consecutive non-finite updates skipped
    last_finite: Tensor  # 0-d bool
    total_notfinite: Tensor  # 0-d int64
    inner: OptState


def apply_if_finite(inner: Transform, max_consecutive_errors: int) -> Transform:
    """Skip updates whose gradients hold a NaN or an Inf: emit zeros and keep ``inner``'s state.

    After more than ``max_consecutive_errors`` skips in a row the update is
    applied anyway, as optax does (so a run that only diverges does not
    silently stall). ``max_consecutive_errors`` is a whole number >= 0.
    """
    if isinstance(max_consecutive_errors, bool) or not isinstance(max_consecutive_errors, int) \
            or max_consecutive_errors < 0:
        raise ValueError(f"apply_if_finite: max_consecutive_errors must be a whole number >= 0, "
                         f"got {max_consecutive_errors!r}")

    def init(params: Params) -> ApplyIfFiniteState:
        device = device_of(params)
        zero = lambda: torch.zeros((), dtype=torch.int64, device=device)  # noqa: E731 - distinct tensors: no aliasing guard
        return ApplyIfFiniteState(zero(), torch.ones((), dtype=torch.bool, device=device), zero(), inner.init(params))

    def update(u: Updates, state: ApplyIfFiniteState, params: Params | None = None):
        expect_state(state, ApplyIfFiniteState, "apply_if_finite")
        finite = torch.stack([torch.isfinite(g).all() for g in u.values()]).all() if u else torch.tensor(True)
        new, inner_state = inner.update(u, state.inner, params)
        apply = finite | (state.notfinite_count >= max_consecutive_errors)
        out = {k: torch.where(apply, v, torch.zeros_like(v)) for k, v in new.items()}
        count = torch.where(finite, torch.zeros_like(state.notfinite_count), state.notfinite_count + 1)
        total = state.total_notfinite + (~finite).to(torch.int64)
        return out, ApplyIfFiniteState(count, finite, total, _where(apply, inner_state, state.inner))

    return Transform(init, update)


def find_state(opt_state: OptState, kind: type) -> Any:
    """The first state of type ``kind`` (e.g. ``AdamState``, ``EmaState``) anywhere in ``opt_state``.

    Searches chains, combinators and injected hyperparameters depth first, in
    order. Raises ``KeyError`` naming the state types present when none matches.
    """
    is_kind = lambda node: isinstance(node, kind)  # noqa: E731
    for node in pytree.tree_flatten(opt_state, is_leaf=is_kind)[0]:
        if is_kind(node):
            return node
    raise KeyError(f"no {kind.__name__} in this optimizer state (it holds: {', '.join(_state_types(opt_state)) or 'nothing'})")


def _state_types(tree: Any) -> list[str]:
    names: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            names.append(type(node).__name__)
        if isinstance(node, (tuple, list)):
            for child in node:
                visit(child)
        elif isinstance(node, dict):
            for child in node.values():
                visit(child)

    visit(tree)
    return list(dict.fromkeys(names))
