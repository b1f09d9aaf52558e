"""Hyperparameters held as tensors in the optimizer state."""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch.utils import _pytree as pytree

from craft.optim import (OPTIMIZERS, adamw, apply_updates, cosine_decay, get_hyperparams, inject_hyperparams, set_hyperparams,
                         sgd, warmup_cosine)


def _params():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(4, 3, generator=g, dtype=torch.float64), "b": torch.randn(3, generator=g, dtype=torch.float64)}


def _run(tx, steps=5):
    params, state = _params(), tx.init(_params())
    for i in range(steps):
        grads = {k: torch.sin(v * (i + 1)) for k, v in params.items()}
        updates, state = tx.update(grads, state, params)
        params = apply_updates(params, updates)
    return params


@pytest.mark.parametrize(
    ("factory", "values"),
    [
        (functools.partial(adamw, clip_norm=1.0), {"learning_rate": 3e-3, "weight_decay": 0.1}),
        (functools.partial(sgd, momentum=0.9), {"learning_rate": 0.05, "weight_decay": 1e-3}),
        (lambda learning_rate: adamw(warmup_cosine(learning_rate, total_steps=10, warmup_steps=2)), {"learning_rate": 1e-2}),
    ],
)
def test_injected_optimizer_matches_the_plain_one(factory, values):
    torch.testing.assert_close(_run(inject_hyperparams(factory, **values)), _run(factory(**values)), atol=1e-15, rtol=1e-13)


def test_set_and_get_hyperparameters_and_no_recompile_when_they_change():
    tx = inject_hyperparams(adamw, learning_rate=1e-3, weight_decay=0.0)
    state = tx.init(_params())
    assert {k: float(v) for k, v in get_hyperparams(state).items()} == {"learning_rate": 1e-3, "weight_decay": 0.0}
    counter = CompileCounter()
    update = torch.compile(tx.update, backend=counter, fullgraph=True)
    grads = {k: torch.ones_like(v) for k, v in _params().items()}
    for lr in (1e-3, 1e-2, 0.5):
        state = set_hyperparams(state, learning_rate=lr)
        updates, state = update(grads, state, _params())
    assert counter.frame_count == 1
    with pytest.raises(ValueError, match="no injected hyperparameter 'momentum'"):
        set_hyperparams(state, momentum=0.9)


DECAYING = [name for name in sorted(OPTIMIZERS) if "weight_decay" in inspect.signature(OPTIMIZERS[name]).parameters]


@pytest.mark.parametrize("name", DECAYING)
def test_members_with_their_own_weight_decay_step_under_vmap(name):
    """A sweep over weight_decay ([0.0, 0.1]) vmaps one update over its members; with muon it crashed
    (vmap: data-dependent control flow), as muon branched on the value. Each member gets its own update."""
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(4, 3, generator=g, dtype=torch.float64), "b": torch.randn(3, generator=g, dtype=torch.float64)}
    grads = {k: torch.sin(3 * v) for k, v in params.items()}
    factory = functools.partial(OPTIMIZERS[name], mask=lambda p: dict.fromkeys(p, True))
    tx = inject_hyperparams(factory, learning_rate=0.01, weight_decay=0.0)
    states = [set_hyperparams(tx.init(params), weight_decay=wd) for wd in (0.0, 0.1)]
    stacked = pytree.tree_map(lambda *xs: torch.stack(xs), *states)
    updates, _ = torch.func.vmap(lambda s: tx.update(grads, s, params))(stacked)
    for i, wd in enumerate((0.0, 0.1)):
        solo, _ = factory(0.01, weight_decay=wd).update(grads, factory(0.01, weight_decay=wd).init(params), params)
        for k in params:
            torch.testing.assert_close(updates[k][i], solo[k], atol=1e-12, rtol=1e-10)


def test_a_learning_rate_tensor_keeps_its_hypergradient():
    """inject_hyperparams made the value a float: the hypergradient through it was 0 (-20.48 without inject)."""

    def loss(p):
        return ((p["w"] - 3.0) ** 2).sum()

    def meta(lr, inject):
        tx = inject_hyperparams(sgd, learning_rate=lr) if inject else sgd(lr)
        params = {"w": torch.ones(4, dtype=torch.float64)}
        state = tx.init(params)
        for _ in range(3):
            updates, state = tx.update(torch.func.grad(loss)(params), state, params)
            params = apply_updates(params, updates)
        return loss(params)

    lr = torch.tensor(0.1, dtype=torch.float64)
    plain = torch.func.grad(lambda x: meta(x, False))(lr)
    assert float(plain) != 0
    torch.testing.assert_close(torch.func.grad(lambda x: meta(x, True))(lr), plain)


def test_a_schedule_as_a_value_is_evaluated_at_the_update_count():
    """A schedule there failed with "float() argument must be ... not 'function'"; as in optax it follows the
    state's count, and the injected optimizer matches the plain one with that schedule."""
    schedule = cosine_decay(1e-2, total_steps=10)
    tx = inject_hyperparams(adamw, learning_rate=schedule, weight_decay=0.1)
    torch.testing.assert_close(_run(tx), _run(adamw(schedule, weight_decay=0.1)), atol=1e-15, rtol=1e-13)
    params, state = _params(), tx.init(_params())
    for _ in range(3):
        _, state = tx.update({k: torch.ones_like(v) for k, v in params.items()}, state, params)
    assert int(state.count) == 3
    torch.testing.assert_close(get_hyperparams(state)["learning_rate"], schedule(torch.tensor(2)))  # the last one used
    state = set_hyperparams(state, weight_decay=0.0)  # the others are still set by hand
    assert float(get_hyperparams(state)["weight_decay"]) == 0.0


def test_optax_s_call_form_is_the_same_transform():
    """``optax.inject_hyperparams(optax.adam)(learning_rate=...)`` is how optax users write it: it was a ValueError."""
    ours, optax_form = inject_hyperparams(adamw, learning_rate=1e-2, weight_decay=0.1), inject_hyperparams(adamw)(learning_rate=1e-2, weight_decay=0.1)
    torch.testing.assert_close(_run(optax_form), _run(ours), atol=0, rtol=0)
    with pytest.raises(ValueError, match="needs at least one hyperparameter"):
        inject_hyperparams(adamw)()
    with pytest.raises(AttributeError, match=r"inject_hyperparams\(factory\) is not a transform yet, so it has no 'init'"):
        inject_hyperparams(adamw).init(_params())  # without values it was a ValueError saying so; keep it as clear


def test_a_hyperparameter_that_changes_the_state_structure_is_refused_at_init():
    """sgd(momentum=0.0) chains no trace: set_hyperparams(momentum=0.9) then failed in update with
    "'tuple' object has no attribute 'momentum'"."""
    tx = inject_hyperparams(sgd, learning_rate=0.1, momentum=0.0)
    with pytest.raises(ValueError, match=r"momentum changes the structure of sgd's state .* functools.partial\(sgd, momentum=...\)"):
        tx.init(_params())
    with pytest.raises(ValueError, match="learning_rate must be a number, a 0-d tensor or a schedule, got str"):
        inject_hyperparams(sgd, learning_rate="0.1").init(_params())
