"""One table: every registered optimizer goes through the same checks.

A new entry in ``OPTIMIZERS`` is picked up here without editing this file.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounter
from torch.utils import _pytree as pytree

from craft.optim import OPTIMIZERS, warmup_cosine
from craft.step import init_state, make_train_step


class Quadratic(nn.Module):
    """``f(x, w) = |A x - b|^2 + |w - w*|^2`` for a well-conditioned A: minimum 0 at a known x."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x = nn.Parameter(torch.zeros(8))
        self.w = nn.Parameter(torch.zeros(3, 4))
        self.register_buffer("a", torch.eye(8) + 0.1 * torch.randn(8, 8, generator=g))
        self.register_buffer("b", torch.randn(8, generator=g))
        self.register_buffer("target_w", torch.randn(3, 4, generator=g))

    def forward(self) -> torch.Tensor:
        return ((self.a @ self.x - self.b) ** 2).sum() + ((self.w - self.target_w) ** 2).sum()


def _loss(value, batch):
    return value


def _step(name, *, learning_rate, compile=False):
    model = Quadratic()
    tx = OPTIMIZERS[name](learning_rate, clip_norm=10.0)
    step = make_train_step(model, _loss, tx, inputs=lambda batch: (), compile=compile)
    return step, init_state(model, tx)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_converges_on_a_quadratic(name):
    step, state = _step(name, learning_rate=warmup_cosine(0.05, total_steps=300, warmup_steps=10))
    _, first = step(state, {})
    for _ in range(300):
        state, metrics = step(state, {})
    assert metrics["loss"] < 1e-3 * first["loss"], f"{name}: {first['loss']} -> {metrics['loss']}"


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_step_keeps_state_structure(name):
    step, state = _step(name, learning_rate=0.01)
    new, _ = step(state, {})
    old_leaves, old_spec = pytree.tree_flatten(state)
    new_leaves, new_spec = pytree.tree_flatten(new)
    assert new_spec == old_spec
    for a, b in zip(old_leaves, new_leaves):
        assert (a.shape, a.dtype, a.device) == (b.shape, b.dtype, b.device)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_compiles_in_one_graph_and_never_recompiles(name):
    """fullgraph=True fails on any graph break; the counter counts compilations."""
    counter = CompileCounter()
    schedule = warmup_cosine(0.05, total_steps=50, warmup_ratio=0.2, min_lr=1e-4)
    step, state = _step(name, learning_rate=schedule, compile={"backend": counter, "fullgraph": True})
    eager, eager_state = _step(name, learning_rate=schedule)
    for _ in range(50):
        state, metrics = step(state, {})
        eager_state, eager_metrics = eager(eager_state, {})
    assert counter.frame_count == 1, f"{name}: compiled {counter.frame_count} times in 50 steps"
    assert int(state.step) == 50
    torch.testing.assert_close(state.params, eager_state.params)
