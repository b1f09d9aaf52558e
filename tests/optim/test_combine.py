"""What each combinator and new optimizer promises, checked against closed forms and torch.optim."""

from __future__ import annotations

import functools

import pytest
import torch

from craft.optim import (
    AdamState,
    EmaState,
    LookaheadState,
    PartitionState,
    Transform,
    adagrad,
    adamw,
    add_noise,
    apply_if_finite,
    apply_updates,
    chain,
    ema,
    find_state,
    foreach,
    lion,
    lookahead,
    masked,
    multi_steps,
    param_groups,
    partition,
    rmsprop,
    scale_by_adam,
    set_to_zero,
    sgd,
)


def _params():
    g = torch.Generator().manual_seed(0)
    return {"head.w": torch.randn(3, 4, generator=g, dtype=torch.float64),
            "trunk.w": torch.randn(4, 5, generator=g, dtype=torch.float64),
            "trunk.b": torch.randn(4, generator=g, dtype=torch.float64)}


def _grads(seed):
    g = torch.Generator().manual_seed(100 + seed)
    return {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in _params().items()}


def _run(tx, steps, params=None):
    params = params or _params()
    state = tx.init(params)
    trajectory = [params]
    for i in range(steps):
        updates, state = tx.update(_grads(i), state, params)
        params = apply_updates(params, updates)
        trajectory.append(params)
    return trajectory, state


def test_partition_with_zero_learning_rate_leaves_that_group_bitwise_frozen():
    tx = partition({"head": adamw(1e-2), "trunk": sgd(0.0)}, lambda name: name.split(".")[0])
    (start, *_, end), _ = _run(tx, 5)
    assert all(torch.equal(start[k], end[k]) for k in ("trunk.w", "trunk.b"))
    assert not torch.equal(start["head.w"], end["head.w"])


def test_partition_gives_each_group_only_its_own_state():
    tx = partition({"head": adamw(1e-2), "trunk": set_to_zero()}, {"head.w": "head", "trunk.w": "trunk", "trunk.b": "trunk"})
    state = tx.init(_params())
    assert isinstance(state, PartitionState) and state.inner["trunk"] == ()
    assert set(find_state(state, AdamState).mu) == {"head.w"}
    with pytest.raises(ValueError, match="'trunk.b'.*'nope'"):
        partition({"a": sgd(1.0)}, lambda name: "a" if name != "trunk.b" else "nope").init(_params())


def test_masked_passes_unselected_leaves_through():
    tx = masked(chain(scale_by_adam()), {"head.w": True})
    updates, state = tx.update(_grads(0), tx.init(_params()), _params())
    assert torch.equal(updates["trunk.w"], _grads(0)["trunk.w"])
    assert not torch.equal(updates["head.w"], _grads(0)["head.w"])
    assert set(find_state(state, AdamState).mu) == {"head.w"}


def test_a_group_or_mask_that_selects_nothing_is_a_no_op_as_in_optax():
    """torch's foreach ops refuse empty lists; an empty group must not reach them."""
    for tx in (partition({"a": sgd(1.0), "b": adamw(1.0)}, lambda name: "a"), masked(adamw(1.0), {"head.w": False})):
        (start, end), _ = _run(tx, 1)
        assert set(end) == set(start)


def test_a_mask_naming_no_parameter_is_a_typo_with_the_closest_names():
    with pytest.raises(ValueError, match=r"weight decay: the mask names no parameter; 'head.ww' .*did you mean 'head.w'"):
        _run(adamw(1.0, weight_decay=0.5, mask={"head.ww": True}), 1)
    with pytest.raises(ValueError, match="masked: the mask names no parameter; 'hed.w'"):
        _run(masked(sgd(1.0), {"hed.w": True}), 1)
    with pytest.raises(TypeError, match=r"masked: a mask is a \{name: bool\} mapping or a function giving one, got list"):
        _run(masked(sgd(1.0), ["head.w"]), 1)
    # A mask written for the whole model, seen by one group of a partition: other groups' names are fine.
    whole = {"head.w": True, "trunk.w": True, "trunk.b": False}
    _run(partition({"head": adamw(1.0, mask=whole), "trunk": adamw(1.0, mask=whole)}, lambda name: name.split(".")[0]), 1)


@pytest.mark.parametrize("every_k", [0, 2.5, True])
def test_multi_steps_takes_a_whole_number_of_steps(every_k):
    with pytest.raises(ValueError, match=f"every_k must be a whole number >= 1, got {every_k!r}"):
        multi_steps(sgd(1.0), every_k=every_k)


def test_multi_steps_over_four_micro_batches_equals_one_step_on_the_whole_batch():
    inner = adamw(1e-2, clip_norm=1.0)
    tx, params = multi_steps(inner, every_k=4), _params()
    state = tx.init(params)
    for i in range(4):
        updates, state = tx.update(_grads(i), state, params)
        if i < 3:
            assert all(torch.count_nonzero(u) == 0 for u in updates.values())
    whole = {k: sum(_grads(i)[k] for i in range(4)) / 4 for k in params}
    expected, inner_state = inner.update(whole, inner.init(params), params)
    torch.testing.assert_close(updates, expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(state.inner, inner_state, rtol=1e-12, atol=1e-15)
    assert int(state.mini_step) == 0


def test_ema_equals_its_closed_form():
    decay = 0.8
    trajectory, state = _run(chain(sgd(0.1), ema(decay)), 6)
    t = len(trajectory) - 1
    for k in trajectory[0]:
        closed = decay**t * trajectory[0][k] + sum((1 - decay) * decay ** (t - i) * trajectory[i][k] for i in range(1, t + 1))
        torch.testing.assert_close(find_state(state, EmaState).params[k], closed, rtol=1e-12, atol=1e-12)


def test_ema_inside_multi_steps_averages_the_real_updates_only():
    """composing.md showed chain(multi_steps(adamw, 4), ema): the ema then averaged every call (count 8
    after 8 calls, 2 real updates). Inside multi_steps it advances on the real updates alone."""
    decay = 0.8
    trajectory, state = _run(multi_steps(chain(sgd(0.1), ema(decay)), every_k=4), 8)
    averaged = find_state(state, EmaState)
    assert int(averaged.count) == 2
    updated = [trajectory[0], trajectory[4], trajectory[8]]  # the weights after each real update
    for k in trajectory[0]:
        closed = decay**2 * updated[0][k] + (1 - decay) * (decay * updated[1][k] + updated[2][k])
        torch.testing.assert_close(averaged.params[k], closed, rtol=1e-12, atol=1e-12)
    assert int(find_state(_run(chain(multi_steps(sgd(0.1), every_k=4), ema(decay)), 8)[1], EmaState).count) == 8


def test_lookahead_moves_params_to_the_slow_weights_at_each_sync():
    (start, *rest), state = _run(lookahead(sgd(0.1), sync_period=3, alpha=0.5), 3)
    fast, _ = _run(sgd(0.1), 3)
    for k in start:
        torch.testing.assert_close(rest[-1][k], start[k] + 0.5 * (fast[-1][k] - start[k]))
        torch.testing.assert_close(find_state(state, LookaheadState).slow[k], rest[-1][k])


def test_apply_if_finite_skips_nonfinite_updates_then_gives_up_after_max():
    tx, params = apply_if_finite(adamw(1e-2), max_consecutive_errors=2), _params()
    state = tx.init(params)
    bad = {**_grads(0), "head.w": torch.full((3, 4), float("nan"), dtype=torch.float64)}
    for i in range(2):
        updates, new = tx.update(bad, state, params)
        assert all(torch.count_nonzero(u) == 0 for u in updates.values())
        torch.testing.assert_close(new.inner, state.inner, equal_nan=True)
        state = new
    assert int(state.notfinite_count) == 2 and int(state.total_notfinite) == 2
    updates, state = tx.update(bad, state, params)  # the third in a row is applied
    assert torch.isnan(updates["head.w"]).all()
    updates, state = tx.update(_grads(1), state, params)
    assert int(state.notfinite_count) == 0 and bool(state.last_finite)


def test_add_noise_is_a_pure_function_of_the_seed_and_step():
    zeros = {k: torch.zeros(200, 50, dtype=torch.float64) for k in ("a", "b")}
    tx = add_noise(eta=4.0, gamma=0.0, seed=1)
    first, s = tx.update(zeros, tx.init(zeros), zeros)
    again, _ = tx.update(zeros, tx.init(zeros), zeros)
    second, _ = tx.update(zeros, s, zeros)
    other_tx = add_noise(eta=4.0, gamma=0.0, seed=2)  # the seed lives in the state
    other, _ = other_tx.update(zeros, other_tx.init(zeros), zeros)
    assert torch.equal(first["a"], again["a"])
    assert not torch.equal(first["a"], second["a"]) and not torch.equal(first["a"], first["b"])
    assert not torch.equal(first["a"], other["a"])
    assert abs(first["a"].std().item() - 2.0) < 0.05 and abs(first["a"].mean().item()) < 0.05


def _against_torch(tx, torch_opt, steps=20):
    params = _params()
    trajectory, _ = _run(tx, steps, params)
    tensors = {k: v.clone().requires_grad_() for k, v in params.items()}
    opt = torch_opt(list(tensors.values()))
    for i in range(steps):
        for k, t in tensors.items():
            t.grad = _grads(i)[k].clone()
        opt.step()
    for k in params:
        torch.testing.assert_close(trajectory[-1][k], tensors[k].detach(), rtol=1e-12, atol=1e-12)


def test_rmsprop_matches_torch():
    _against_torch(rmsprop(1e-2, momentum=0.9, weight_decay=0.1, mask=lambda p: dict.fromkeys(p, True)),
                   lambda ps: torch.optim.RMSprop(ps, lr=1e-2, momentum=0.9, weight_decay=0.1))


def test_adagrad_matches_torch():
    _against_torch(adagrad(0.1, initial_accumulator_value=0.1),
                   lambda ps: torch.optim.Adagrad(ps, lr=0.1, initial_accumulator_value=0.1))


def test_lion_matches_a_reference():
    lr, b1, b2, wd = 1e-3, 0.9, 0.99, 0.1
    trajectory, _ = _run(lion(lr, b1=b1, b2=b2, weight_decay=wd, mask=lambda p: dict.fromkeys(p, True)), 20)
    params, momentum = _params(), {k: torch.zeros_like(v) for k, v in _params().items()}
    for i in range(20):  # Chen et al. 2023, Algorithm 2 (decoupled weight decay)
        for k, g in _grads(i).items():
            update = torch.sign(b1 * momentum[k] + (1 - b1) * g)
            params[k] = params[k] - lr * (update + wd * params[k])
            momentum[k] = b2 * momentum[k] + (1 - b2) * g
    torch.testing.assert_close(trajectory[-1], params, rtol=1e-12, atol=1e-12)


def test_find_state_names_what_the_state_holds():
    state = adamw(1e-3).init(_params())
    assert find_state(state, AdamState).count.item() == 0
    with pytest.raises(KeyError, match="no EmaState.*AdamState"):
        find_state(state, EmaState)


def test_param_groups_scale_freeze_and_reject_patterns_matching_nothing():
    names = list(_params())
    groups = [{"match": "head.*", "lr_scale": 10.0}, {"match": "trunk.b", "freeze": True}]
    tx = param_groups(lambda **kw: sgd(0.1, **kw), groups, names)
    updates, state = tx.update(_grads(0), tx.init(_params()), _params())
    torch.testing.assert_close(updates["head.w"], -1.0 * _grads(0)["head.w"])
    torch.testing.assert_close(updates["trunk.w"], -0.1 * _grads(0)["trunk.w"])
    assert torch.count_nonzero(updates["trunk.b"]) == 0
    with pytest.raises(ValueError, match=r"'encoder\.\*' matches no parameter.*head\.w"):
        param_groups(lambda **kw: sgd(0.1, **kw), [{"match": "encoder.*"}], names)


@pytest.mark.parametrize("make_tx", [functools.partial(adamw, 0.5), functools.partial(sgd, 0.5, weight_decay=0.1)])
def test_a_library_groups_weight_decay_decays_every_parameter_it_matches(make_tx):
    """The library's group weight_decay decayed only the group's 2-D params (head.w, not head.b), while the
    README and the TOML groups decay every parameter the group matches, as a torch parameter group does."""
    params = {"head.w": torch.ones(3, 4), "head.b": torch.ones(3), "trunk.w": torch.ones(4, 5), "trunk.b": torch.ones(4)}
    tx = param_groups(make_tx, [{"match": "head.*", "weight_decay": 0.1}], list(params))
    updates, _ = tx.update({k: torch.zeros_like(p) for k, p in params.items()}, tx.init(params), params)
    assert {k for k, u in updates.items() if u.abs().max() > 0} == {"head.w", "head.b", "trunk.w"}  # trunk: the rule


def test_a_negative_lr_scale_and_a_group_make_tx_without_a_mask_are_one_line_errors():
    with pytest.raises(ValueError, match=r"parameter group match='head\.\*': lr_scale must be >= 0, got -1"):
        param_groups(lambda **kw: sgd(0.1, **kw), [{"match": "head.*", "lr_scale": -1}], list(_params()))
    with pytest.raises(ValueError, match="sets weight_decay, which decays every parameter it matches: make_tx must take mask"):
        param_groups(lambda weight_decay=0.0: sgd(0.1, weight_decay=weight_decay),
                     [{"match": "head.*", "weight_decay": 0.1}], list(_params()))


def test_a_users_raw_foreach_transform_vmaps_inside_per_tensor():
    def update(u):
        norms = torch._foreach_norm(list(u.values()))
        return dict(zip(u, torch._foreach_div(torch._foreach_reciprocal(list(u.values())), torch.stack(norms).sum())))

    stacked = {k: torch.stack([v, 2 * v]) for k, v in _grads(0).items()}
    with foreach.per_tensor():
        out = torch.func.vmap(update)(stacked)
    torch.testing.assert_close(out["head.w"][0], update(_grads(0))["head.w"])
    with pytest.raises(NotImplementedError, match="_foreach_log1p"), foreach.per_tensor():
        torch._foreach_log1p([torch.ones(2)])


def _raw_foreach_scale(factor):
    """A user's transform written with raw torch._foreach_* ops (no craft.optim.foreach)."""
    def update(u, state, params=None):
        scaled = torch._foreach_mul(torch._foreach_reciprocal(torch._foreach_add(list(u.values()), 2.0)), factor)
        return dict(zip(u, scaled)), state
    return Transform(lambda params: (), update)


def test_a_users_raw_foreach_transform_in_a_chain_vmaps_and_differentiates_with_no_context_manager():
    stacked = {k: torch.stack([v, 2 * v]) for k, v in _grads(0).items()}
    tx = chain(_raw_foreach_scale(0.5), sgd(0.1))
    out, _ = torch.func.vmap(tx.update)(stacked, torch.func.vmap(tx.init)(stacked), stacked)
    alone, _ = tx.update(_grads(0), tx.init(_params()), _params())
    torch.testing.assert_close(out["head.w"][0], alone["head.w"])

    def moved(factor):  # d/d(factor) through the raw _foreach_mul by a 0-d tensor (pytorch#144580)
        tx = chain(_raw_foreach_scale(factor), sgd(1.0))
        u, _ = tx.update(_grads(0), tx.init(_params()), _params())
        return sum(x.sum() for x in u.values())

    f, eps = torch.tensor(0.5, dtype=torch.float64), 1e-6
    expected = (moved(f + eps) - moved(f - eps)) / (2 * eps)
    torch.testing.assert_close(torch.func.grad(moved)(f), expected, rtol=1e-6, atol=0)


def test_jvp_and_jacrev_through_an_optimizer_agree():
    params = _params()

    def moved(lr):
        tx = chain(lookahead(adamw(lr, clip_norm=0.5), sync_period=2, alpha=0.5), ema(0.9))
        state, p = tx.init(params), params
        for i in range(3):
            updates, state = tx.update(_grads(i), state, p)
            p = apply_updates(p, updates)
        return p["head.w"]

    lr = torch.tensor(1e-2, dtype=torch.float64)
    _, tangent = torch.func.jvp(moved, (lr,), (torch.ones_like(lr),))
    torch.testing.assert_close(torch.func.jacrev(moved)(lr), tangent, rtol=1e-10, atol=1e-14)
    assert torch.count_nonzero(tangent) > 0


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: sgd(-0.1), "learning rate must be >= 0, got -0.1"),
        (lambda: sgd(0.1, momentum=-0.5), "momentum must be >= 0, got -0.5"),
        (lambda: adamw(1e-3, b1=1.5), r"b1 must be in \[0, 1\), got 1.5"),
        (lambda: adamw(1e-3, eps=-1.0), "eps must be >= 0, got -1.0"),
        (lambda: adamw(1e-3, weight_decay=-0.1), "weight_decay must be >= 0, got -0.1"),
        (lambda: rmsprop(1e-3, decay=float("nan")), r"decay must be in \[0, 1\), got nan"),
        (lambda: rmsprop(1e-3, decay=1.5), r"decay must be in \[0, 1\), got 1.5"),  # nu < 0: NaN updates
        (lambda: lion(1e-3, b1=2.0), r"scale_by_lion: b1 must be in \[0, 1\), got 2.0"),
        (lambda: add_noise(-1.0, 0.55, seed=0), "add_noise: eta must be >= 0, got -1.0"),  # a variance: NaN noise
        (lambda: apply_if_finite(sgd(0.1), -1), "max_consecutive_errors must be a whole number >= 0, got -1"),
        (lambda: apply_if_finite(sgd(0.1), 2.5), "max_consecutive_errors must be a whole number >= 0, got 2.5"),
    ],
)
def test_options_out_of_range_are_refused_as_torch_optim_does(build, message):
    with pytest.raises(ValueError, match=message):
        build()
