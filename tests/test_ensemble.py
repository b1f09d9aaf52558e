"""Stacked states and the ensemble step: every member trains as it would alone."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import MODELS, batch_for, cross_entropy
from torch import nn

from craft.ensemble import (
    choose_strategy,
    ensemble_size,
    init_ensemble,
    make_ensemble_step,
    member_outputs,
    stack_states,
    unstack_state,
    unstack_states,
)
from craft.optim import adamw, get_hyperparams, inject_hyperparams, set_hyperparams, sgd
from craft.step import init_state, make_train_step

K, STEPS = 3, 4
# float64, as in test_step: the members and their solo runs then agree to rounding
# (batched and single matmuls sum in different orders), not to chaos-amplified float32 noise.
TOL = dict(atol=1e-9, rtol=1e-7)

OPTIMIZERS = {
    "sgd": (functools.partial(sgd, momentum=0.9, clip_norm=1.0), [0.05, 0.1, 0.02], [1e-3, 0.0, 1e-2]),
    "adamw": (functools.partial(adamw, clip_norm=1.0), [1e-3, 3e-3, 1e-2], [0.1, 0.0, 0.01]),
}


def _members(model_name: str, opt_name: str):
    factory, lrs, wds = OPTIMIZERS[opt_name]
    tx = inject_hyperparams(factory, learning_rate=lrs[0], weight_decay=wds[0])
    hyperparams = [{"learning_rate": lr, "weight_decay": wd} for lr, wd in zip(lrs, wds)]
    make = MODELS[model_name] if model_name != "bn_dropout" else functools.partial(MODELS[model_name], 0.0)
    model, stacked = init_ensemble(lambda: make().double(), tx, seeds=range(K), hyperparams=hyperparams)
    return model, tx, stacked


def _batches(model_name: str, per_member: bool = False):
    data = "mlp" if model_name == "mlp" else "cnn"

    def one(seed):
        b = batch_for(data, 8, seed=seed)
        return {**b, "input": b["input"].double()}

    if not per_member:
        return [one(i) for i in range(STEPS)]
    return [{k: torch.stack([one(10 * i + m)[k] for m in range(K)]) for k in ("input", "target")} for i in range(STEPS)]


def _assert_members_match(stacked, solo_states):
    for i, solo in enumerate(solo_states):
        member = unstack_state(stacked, i)
        for part in ("params", "buffers"):
            for k, v in getattr(solo, part).items():
                torch.testing.assert_close(getattr(member, part)[k], v, **TOL, msg=lambda m, k=k: f"member {i} {k}: {m}")
        assert int(member.step) == int(solo.step)


@pytest.mark.parametrize("strategy", ["vmap", "side_by_side", "sequential"])
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("model_name", ["mlp", "bn_dropout"])
def test_each_member_ends_where_training_it_alone_ends(model_name, opt_name, strategy):
    """Different seeds, learning rates and weight decays; BatchNorm buffers threaded per member (dropout 0)."""
    model, tx, stacked = _members(model_name, opt_name)
    solo_states = unstack_states(stacked)
    step = make_ensemble_step(model, cross_entropy, tx, compile=False, strategy=strategy)
    solo = make_train_step(model, cross_entropy, tx, compile=False)
    for batch in _batches(model_name):
        stacked, metrics = step(stacked, batch)
        solo_states = [solo(s, batch)[0] for s in solo_states]
    assert metrics["loss"].shape == (K,) and metrics["grad_norm"].shape == (K,)
    _assert_members_match(stacked, solo_states)
    if model_name == "bn_dropout":  # the statistics moved, and differently per member
        means = stacked.buffers["1.running_mean"]
        assert not torch.equal(means[0], means[1])


@pytest.mark.parametrize("strategy", ["vmap", "side_by_side"])
def test_members_can_train_on_their_own_batches(strategy):
    model, tx, stacked = _members("mlp", "adamw")
    solo_states = unstack_states(stacked)
    step = make_ensemble_step(model, cross_entropy, tx, compile=False, per_member_batches=True, strategy=strategy)
    solo = make_train_step(model, cross_entropy, tx, compile=False)
    for batch in _batches("mlp", per_member=True):
        stacked, _ = step(stacked, batch)
        solo_states = [solo(s, {k: v[i] for k, v in batch.items()})[0] for i, s in enumerate(solo_states)]
    _assert_members_match(stacked, solo_states)


@pytest.mark.slow
def test_compiled_vmap_step_matches_eager():
    """The compiled path traces the vmapped step once (make_fx) and compiles that graph."""
    model, tx, stacked = _members("mlp", "adamw")
    eager = make_ensemble_step(model, cross_entropy, tx, compile=False, strategy="vmap")
    compiled = make_ensemble_step(model, cross_entropy, tx, compile=True, strategy="vmap")
    a = b = stacked
    for batch in _batches("mlp"):
        a, _ = eager(a, batch)
        b, metrics = compiled(b, batch)
    assert metrics["loss"].shape == (K,)
    _assert_members_match(b, unstack_states(a))


def test_dropout_differs_between_members_and_follows_the_state():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 64), nn.Dropout(0.5), nn.Linear(64, 4))
    tx = sgd(0.1)
    stacked = stack_states([init_state(net, tx, seed=s) for s in (1, 2)])  # identical weights, different rng
    step = make_ensemble_step(net, cross_entropy, tx, compile=False, strategy="vmap")
    batch = batch_for("mlp", 16)
    once, m1 = step(stacked, batch)
    again, m2 = step(stacked, batch)
    torch.testing.assert_close(once.params, again.params, atol=0, rtol=0)  # pure: same state, same result
    assert m1["loss"][0] != m1["loss"][1]  # same weights, different masks
    assert not torch.equal(once.rng, stacked.rng)


def test_stack_and_unstack_round_trip_and_refuse_mismatched_shapes():
    tx = adamw(1e-3)
    states = [init_state(MODELS["mlp"](), tx, seed=s) for s in range(3)]
    stacked = stack_states(states)
    assert ensemble_size(stacked) == 3 and stacked.params["0.weight"].shape == (3, 32, 8)
    back = unstack_state(stacked, 1)
    torch.testing.assert_close(back.params, states[1].params, atol=0, rtol=0)
    assert back.params["0.weight"].untyped_storage().nbytes() == 32 * 8 * 4  # a copy, not a view of all members
    assert int(back.rng) == int(states[1].rng)
    wide = init_state(nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4)), tx)
    with pytest.raises(ValueError, match=r"member 1 differs from member 0 in .*'0.weight'.*must share shapes"):
        stack_states([states[0], wide])


def test_hyperparameters_live_in_each_members_state():
    _, _, stacked = _members("mlp", "adamw")
    torch.testing.assert_close(
        get_hyperparams(stacked.opt_state)["learning_rate"], torch.tensor([1e-3, 3e-3, 1e-2], dtype=torch.float64)
    )


def test_set_hyperparams_on_a_stacked_state_fills_every_member_or_gives_each_its_own():
    """set_hyperparams(stacked, learning_rate=3e-3) made the (K,) tensor 0-d, and the next ensemble step
    failed in vmap. One value now fills every member; K values give each its own; others name the shapes."""
    model, tx, stacked = _members("mlp", "adamw")
    one = set_hyperparams(stacked.opt_state, learning_rate=3e-3)
    torch.testing.assert_close(get_hyperparams(one)["learning_rate"], torch.full((K,), 3e-3, dtype=torch.float64))
    each = set_hyperparams(stacked.opt_state, learning_rate=torch.tensor([1e-3, 2e-3, 4e-3]))
    assert get_hyperparams(each)["learning_rate"].tolist() == pytest.approx([1e-3, 2e-3, 4e-3])
    step = make_ensemble_step(model, cross_entropy, tx, compile=False)
    state, metrics = step(stacked._replace(opt_state=one), _batches("mlp")[0])
    assert metrics["loss"].shape == (K,)
    with pytest.raises(ValueError, match=r"learning_rate of shape \(2,\) does not fit the state's \(3,\)"):
        set_hyperparams(stacked.opt_state, learning_rate=torch.tensor([1e-3, 2e-3]))


def test_strategy_follows_the_model_and_device():
    assert choose_strategy(MODELS["mlp"](), "cpu") == "vmap"
    assert choose_strategy(MODELS["cnn"](), "cpu") == "sequential"
    assert choose_strategy(MODELS["cnn"](), "cuda") == "vmap"
    with pytest.raises(ValueError, match="unknown ensemble strategy 'fast'; choose one of auto, vmap"):
        make_ensemble_step(MODELS["mlp"](), cross_entropy, sgd(0.1), strategy="fast")


def test_member_outputs_are_every_members_predictions():
    model, _, stacked = _members("mlp", "sgd")
    x = _batches("mlp")[0]["input"]
    logits = member_outputs(model, stacked, x)
    assert logits.shape == (K, 8, 4)
    alone = torch.func.functional_call(model, unstack_state(stacked, 2).params, (x,))
    torch.testing.assert_close(logits[2], alone)
