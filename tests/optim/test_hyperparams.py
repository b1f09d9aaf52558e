"""Hyperparameters held as tensors in the optimizer state."""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch.utils import _pytree as pytree

from craft.optim import OPTIMIZERS, adamw, apply_updates, get_hyperparams, inject_hyperparams, set_hyperparams, sgd, warmup_cosine


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
