"""Freezing parts of a model: params moved to the buffers (no gradient, no optimizer
state) and back, the other params' optimizer state carried over.

    state = freeze(state, tx, ["embed.weight"])   # trains on without it
    state = unfreeze(state, tx, ["embed.weight"], model=model)  # back, with fresh optimizer state
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn
from torch.utils import _pytree as pytree

from craft.optim import Transform
from craft.step import TrainState
from craft.tree import Params


def freeze(state: TrainState, transform: Transform, names: Iterable[str]) -> TrainState:
    """Move the named params to ``state.buffers``: they stop training and lose their optimizer state.

    ``transform`` is the one the state was built with; the other params keep
    their optimizer state (moments, counters), matched by their place in it.
    """
    names = _known(names, state.params, "trainable parameter")
    params = {k: v for k, v in state.params.items() if k not in names}
    buffers = {**state.buffers, **{k: state.params[k] for k in names}}
    return state._replace(params=params, buffers=buffers, opt_state=carry_opt_state(transform, state.opt_state, params))


def unfreeze(state: TrainState, transform: Transform, names: Iterable[str], *, model: nn.Module | None = None) -> TrainState:
    """Move the named buffers back to ``state.params``, with fresh optimizer state; the rest keep theirs.

    With ``model`` the params come back in its parameter order, that of ``init_state`` and of a restored
    checkpoint, so a run resumed from here sums across parameters in the same order; without, they go last.
    """
    names = _known(names, state.buffers, "frozen parameter or buffer")
    params = {**state.params, **{k: state.buffers[k] for k in names}}
    if model is not None:
        order = [k for k, _ in model.named_parameters() if k in params]
        params = {k: params[k] for k in [*order, *(k for k in params if k not in order)]}
    buffers = {k: v for k, v in state.buffers.items() if k not in names}
    return state._replace(params=params, buffers=buffers, opt_state=carry_opt_state(transform, state.opt_state, params))


def carry_opt_state(transform: Transform, old: Any, params: Params) -> Any:
    """``transform.init(params)``, with every leaf that ``old`` holds at the same place (and shape) taken from it."""
    found = {pytree.keystr(path): leaf for path, leaf in pytree.tree_flatten_with_path(old)[0]}
    fresh, spec = pytree.tree_flatten_with_path(transform.init(params))
    kept = []
    for path, leaf in fresh:
        previous = found.get(pytree.keystr(path))
        same = isinstance(previous, Tensor) and isinstance(leaf, Tensor) and previous.shape == leaf.shape
        kept.append(previous if same else leaf)
    return pytree.tree_unflatten(kept, spec)


def _known(names: Iterable[str], tree: Params, what: str) -> list[str]:
    names = list(names)
    for name in names:
        if name not in tree:
            raise ValueError(f"{name!r} is not a {what} of this state (some that are: {sorted(tree)[:5]})")
    return names
