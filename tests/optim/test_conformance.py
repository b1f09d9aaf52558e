"""One table: every registered optimizer, transform and combinator goes through the same checks.

A new entry in ``OPTIMIZERS`` is picked up here without editing this file;
transforms and combinators are listed in ``COMBINED``, each built into a
whole optimizer from a learning rate (a float, a schedule or a 0-d tensor).
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounter
from torch.utils import _pytree as pytree

from craft.optim import (
    OPTIMIZERS,
    adam,
    add_noise,
    apply_if_finite,
    apply_updates,
    chain,
    clip,
    ema,
    inject_hyperparams,
    lookahead,
    masked,
    multi_steps,
    partition,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_sign,
    set_to_zero,
    sgd,
    warmup_cosine,
)
from craft.step import init_state, make_train_step

COMBINED = {
    "eps_root": lambda lr: chain(scale_by_adam(eps_root=1e-8), scale_by_learning_rate(lr)),
    "clip": lambda lr: chain(clip(1.0), adam(lr)),
    "sign": lambda lr: chain(scale_by_sign(), scale_by_learning_rate(lr)),
    "masked": lambda lr: chain(masked(scale_by_adam(), {"x": True}), scale_by_learning_rate(lr)),
    "partition": lambda lr: partition({"a": adam(lr), "b": sgd(lr, momentum=0.5), "z": set_to_zero()},
                                      lambda name: {"x": "a", "w": "b"}.get(name, "z")),
    "multi_steps": lambda lr: multi_steps(adam(lr), every_k=2),
    "lookahead": lambda lr: lookahead(adam(lr), sync_period=5, alpha=0.5),
    "ema": lambda lr: chain(adam(lr), ema(0.9)),
    "apply_if_finite": lambda lr: apply_if_finite(adam(lr), max_consecutive_errors=3),
    "add_noise": lambda lr: chain(add_noise(1e-4, 0.55, seed=3), sgd(lr)),
    # adam with an injected learning rate of -1 emits +direction; the outer learning rate descends.
    "inject_hyperparams": lambda lr: chain(inject_hyperparams(adam, learning_rate=-1.0), scale_by_learning_rate(lr)),
}
BASE_LR = {"adagrad": 0.5, "sign": 0.02, "muon": 0.2}  # muon: its updates are about 0.2 * lr in RMS
FACTORIES = {**{name: functools.partial(OPTIMIZERS[name], clip_norm=10.0) for name in OPTIMIZERS}, **COMBINED}
NAMES = sorted(FACTORIES)


class Quadratic(nn.Module):
    """``f(x, w) = |A x - b|^2 + |w - w*|^2`` for a well-conditioned A: minimum 0 at a known x."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x = nn.Parameter(torch.zeros(8, dtype=dtype))
        self.w = nn.Parameter(torch.zeros(3, 4, dtype=dtype))
        self.register_buffer("a", (torch.eye(8) + 0.1 * torch.randn(8, 8, generator=g)).to(dtype))
        self.register_buffer("b", torch.randn(8, generator=g).to(dtype))
        self.register_buffer("target_w", torch.randn(3, 4, generator=g).to(dtype))

    def forward(self) -> torch.Tensor:
        return ((self.a @ self.x - self.b) ** 2).sum() + ((self.w - self.target_w) ** 2).sum()


def _loss(value, batch):
    return value


def _step(name, *, learning_rate, compile=False):
    model = Quadratic()
    tx = FACTORIES[name](learning_rate)
    step = make_train_step(model, _loss, tx, inputs=lambda batch: (), compile=compile)
    return step, init_state(model, tx)


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_a_quadratic(name):
    step, state = _step(name, learning_rate=warmup_cosine(BASE_LR.get(name, 0.05), total_steps=300, warmup_steps=10))
    _, first = step(state, {})
    for _ in range(300):
        state, metrics = step(state, {})
    assert metrics["loss"] < 1e-3 * first["loss"], f"{name}: {first['loss']} -> {metrics['loss']}"


@pytest.mark.parametrize("name", NAMES)
def test_step_keeps_state_structure(name):
    step, state = _step(name, learning_rate=0.01)
    new, _ = step(state, {})
    old_leaves, old_spec = pytree.tree_flatten(state)
    new_leaves, new_spec = pytree.tree_flatten(new)
    assert new_spec == old_spec
    for a, b in zip(old_leaves, new_leaves):
        assert (a.shape, a.dtype, a.device) == (b.shape, b.dtype, b.device)


@pytest.mark.parametrize("name", NAMES)
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


# --- torch.func: vmap over members, gradients through the optimizer ----------------------

_MODEL = Quadratic(torch.float64)
_BUFFERS = dict(_MODEL.named_buffers())


def _objective(params):
    return torch.func.functional_call(_MODEL, (params, _BUFFERS), ())


def _train(tx, params, state, steps):
    """``steps`` steps of ``tx`` on the quadratic: pure, for vmap and grad."""
    for _ in range(steps):
        grads = torch.func.grad(_objective)(params)
        updates, state = tx.update(grads, state, params)
        params = apply_updates(params, updates)
    return params, state


def _params(seed):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(8, generator=g, dtype=torch.float64), "w": torch.randn(3, 4, generator=g, dtype=torch.float64)}


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_stacked_states_equals_separate_runs(name):
    tx = FACTORIES[name](0.05)
    members = [_params(seed) for seed in range(3)]
    alone = [_train(tx, p, tx.init(p), steps=4) for p in members]
    stacked = pytree.tree_map(lambda *xs: torch.stack(xs), *members)
    together = torch.func.vmap(lambda p: _train(tx, p, tx.init(p), steps=4))(stacked)
    for k, (params, state) in enumerate(alone):
        member = pytree.tree_map(lambda x: x[k], together)
        torch.testing.assert_close(member, (params, state), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_wrt_the_learning_rate_matches_finite_differences(name):
    start = _params(0)

    def final_loss(lr):
        tx = FACTORIES[name](lr)
        params, _ = _train(tx, start, tx.init(start), steps=3)
        return _objective(params)

    lr, h = torch.tensor(0.02, dtype=torch.float64), 1e-6
    exact = torch.func.grad(final_loss)(lr)
    numeric = (final_loss(lr + h) - final_loss(lr - h)) / (2 * h)
    assert exact != 0
    torch.testing.assert_close(exact, numeric, rtol=1e-6, atol=0)
