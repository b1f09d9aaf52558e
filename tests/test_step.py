"""The functional step against an imperative PyTorch reference, and its contract."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import MODELS, batch_for, cross_entropy
from torch.utils._python_dispatch import TorchDispatchMode

from craft.optim import adam, adamw, cosine_decay, inject_hyperparams, sgd
from craft.step import TrainState, init_state, make_eval_step, make_train_step

STEPS = 20
# Multi-step parity runs in float64. In float32, last-bit differences (operation
# order in the optimizer, reduction order under inductor) flip ReLU and
# max-pool decisions within a few steps, and training is chaotic enough to
# grow them to 1e-4 after 20 steps; in float64 they stay at rounding level,
# so a tight tolerance tests the arithmetic itself.
TOL = dict(atol=1e-10, rtol=1e-9)
FLOAT32_TOL = dict(atol=1e-6, rtol=1e-5)  # one float32 step
# One float32 AdamW step moves each weight by lr * g / (|g| + eps), so for a tiny gradient element the
# last-bit differences of float32 sums (kernels for AVX2 and AVX-512 sum in other orders) become a visible
# share of lr (1e-3). On an AVX2 machine one weight of the CNN's 4,608 came out 1.2e-6 off; an error in
# the step is of the order of lr.
ADAMW_FLOAT32_TOL = dict(atol=3e-6, rtol=1e-5)

OPTIMIZERS = {
    "sgd": (
        lambda: sgd(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, clip_norm=1.0, mask=_all),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    ),
    "adamw": (
        lambda: adamw(1e-3, weight_decay=0.1, clip_norm=1.0, mask=_all),
        lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.1),
    ),
}


def _all(params):
    return {k: True for k in params}


def _reference(model, make_opt, batches, seeds):
    """The usual loop: zero_grad, forward, backward, clip_grad_norm_, step."""
    model.train()
    opt = make_opt(model.parameters())
    norms = []
    for batch, seed in zip(batches, seeds):
        torch.manual_seed(seed)  # the same dropout masks as the functional step
        opt.zero_grad()
        loss, _ = cross_entropy(model(batch["input"]), batch)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
    return model.state_dict(), norms


def _functional(model, tx, batches, **options):
    state = init_state(model, tx, seed=123)
    step = make_train_step(model, cross_entropy, tx, **options)
    seeds, norms = [], []
    for batch in batches:
        seeds.append(int(state.rng))
        state, metrics = step(state, batch)
        norms.append(metrics["grad_norm"])
    return state, seeds, norms


def _assert_state_matches(state: TrainState, reference: dict, tol: dict):
    ours = {**state.params, **state.buffers}
    assert ours.keys() == reference.keys()
    for k, v in reference.items():
        torch.testing.assert_close(ours[k], v, **tol, msg=lambda m, k=k: f"{k}: {m}")


def _batches(name, n=STEPS, dtype=torch.float64, size=8):
    """Small batches: float64 convolutions on the CPU are slow."""
    return [{**b, "input": b["input"].to(dtype)} for b in (batch_for(name, size, seed=i) for i in range(n))]


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_eager_step_matches_imperative_reference(model_name, opt_name):
    """Dropout active: both sides draw masks from the same per-step seed."""
    make_tx, make_opt = OPTIMIZERS[opt_name]
    torch.manual_seed(0)
    model = MODELS[model_name]().double()
    reference_model = copy.deepcopy(model)
    batches = _batches(model_name)
    state, seeds, norms = _functional(model, make_tx(), batches, compile=False)
    reference, ref_norms = _reference(reference_model, make_opt, batches, seeds)
    _assert_state_matches(state, reference, TOL)
    torch.testing.assert_close(torch.stack(norms).double(), torch.stack(ref_norms), atol=1e-6, rtol=1e-6)


# Each compiled case costs an inductor compile (20-30 s on 2 cold cores). The MLP's layers are a subset of
# the others'; the seed CNN's compiled float32 step is the default run, checked end to end against the eager
# one in test_compiled_path.py.
@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["bn_dropout", "cnn"])
def test_compiled_step_matches_eager_and_reference(model_name):
    """Inductor-compiled step; dropout off, since compiled code draws its own masks."""
    make_tx, make_opt = OPTIMIZERS["adamw"]
    factory = MODELS[model_name]
    torch.manual_seed(0)
    model = (factory(p=0.0) if model_name == "bn_dropout" else factory()).double()
    eager_model, reference_model = copy.deepcopy(model), copy.deepcopy(model)
    batches = _batches(model_name)
    compiled, seeds, _ = _functional(model, make_tx(), batches, compile=True)
    eager, _, _ = _functional(eager_model, make_tx(), batches, compile=False)
    reference, _ = _reference(reference_model, make_opt, batches, seeds)
    _assert_state_matches(compiled, reference, TOL)
    _assert_state_matches(compiled, {**eager.params, **eager.buffers}, TOL)


@pytest.mark.slow
def test_compiled_float32_step_matches_reference():
    """BatchNorm's statistics in float32 under inductor, against the imperative step."""
    make_tx, make_opt = OPTIMIZERS["adamw"]
    torch.manual_seed(0)
    model = MODELS["bn_dropout"](p=0.0)
    reference_model = copy.deepcopy(model)
    batches = _batches("bn_dropout", n=1, dtype=torch.float32)
    compiled, seeds, norms = _functional(model, make_tx(), batches, compile=True)
    reference, ref_norms = _reference(reference_model, make_opt, batches, seeds)
    _assert_state_matches(compiled, reference, ADAMW_FLOAT32_TOL)
    torch.testing.assert_close(norms[0], ref_norms[0], **FLOAT32_TOL)


def _snapshot(state):
    return [t.clone() for t in torch.utils._pytree.tree_leaves(state)]


@pytest.mark.parametrize("compile", [False, {"backend": "aot_eager"}])
def test_step_is_pure_and_reproducible(compile):
    """Same state in, same state out; the input state (BN stats too) is untouched."""
    torch.manual_seed(0)  # the same model every run, so a failure reproduces
    model = MODELS["bn_dropout"]()
    tx = adamw(1e-2)
    step = make_train_step(model, cross_entropy, tx, compile=compile)
    state = init_state(model, tx)
    batch = batch_for("bn_dropout")
    before = _snapshot(state)
    a, metrics_a = step(state, batch)
    b, metrics_b = step(state, batch)
    for x, y in zip(before, torch.utils._pytree.tree_leaves(state)):
        assert torch.equal(x, y)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(metrics_a, metrics_b, atol=0, rtol=0)
    assert not torch.equal(a.buffers["1.running_mean"], state.buffers["1.running_mean"])
    assert int(a.step) == 1 and int(a.rng) != int(state.rng)


def test_dropout_masks_follow_the_state_rng():
    torch.manual_seed(0)  # the same model every run, so a failure reproduces
    model = MODELS["bn_dropout"]()
    tx = sgd(0.1)
    step = make_train_step(model, cross_entropy, tx, compile=False)
    batch = batch_for("bn_dropout")
    a, _ = step(init_state(model, tx, seed=1), batch)
    b, _ = step(init_state(model, tx, seed=2), batch)
    assert not torch.equal(a.params["6.weight"], b.params["6.weight"])


@pytest.mark.parametrize("compile", [False, {"backend": "aot_eager"}])
def test_donated_step_matches_and_reuses_buffers(compile):
    torch.manual_seed(0)  # the same model every run, so a failure reproduces
    model = MODELS["bn_dropout"](p=0.0)
    tx = adamw(1e-2, clip_norm=1.0)
    batches = _batches("bn_dropout", 3, dtype=torch.float32)
    pure = make_train_step(model, cross_entropy, tx, compile=compile)
    donated = make_train_step(copy.deepcopy(model), cross_entropy, tx, compile=compile, donate=True)
    expected = init_state(copy.deepcopy(model), tx)
    state = init_state(copy.deepcopy(model), tx)
    storages = [t.data_ptr() for t in torch.utils._pytree.tree_leaves(state[:4])]
    for batch in batches:
        expected, _ = pure(expected, batch)
        state, _ = donated(state, batch)
    torch.testing.assert_close(state, expected, atol=0, rtol=0)
    assert [t.data_ptr() for t in torch.utils._pytree.tree_leaves(state[:4])] == storages


@pytest.mark.parametrize("compile", [False, {"backend": "aot_eager"}])
def test_gradient_accumulation_equals_one_large_batch(compile):
    torch.manual_seed(0)  # the same model every run, so a failure reproduces
    model = MODELS["mlp"]()
    tx = adamw(1e-2, clip_norm=1.0)
    big = make_train_step(model, cross_entropy, tx, compile=compile)
    micro = make_train_step(model, cross_entropy, tx, compile=compile, accum_steps=4)
    a = b = init_state(model, tx)
    for i in range(5):
        batch = batch_for("mlp", size=64, seed=i)
        a, metrics_a = big(a, batch)
        b, metrics_b = micro(b, batch)
    torch.testing.assert_close(b.params, a.params, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(metrics_b, metrics_a, atol=1e-6, rtol=1e-5)


def test_accumulation_needs_a_divisible_batch():
    torch.manual_seed(0)  # the same model every run, so a failure reproduces
    model = MODELS["mlp"]()
    tx = sgd(0.1)
    step = make_train_step(model, cross_entropy, tx, compile=False, accum_steps=3)
    with pytest.raises(ValueError, match="batch size 32 is not divisible by accum_steps=3"):
        step(init_state(model, tx), batch_for("mlp"))


def test_metrics_are_device_tensors_and_the_step_never_reads_them():
    """The only host read in a step is the CPU rng seed: no .item() on a metric."""

    class ScalarReads(TorchDispatchMode):
        reads: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                self.reads.append((args[0].dtype, args[0].device.type, args[0].ndim))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)  # the same model every run, so a failure reproduces
    model = MODELS["cnn"]()
    tx = adamw(1e-3, clip_norm=1.0)
    step = make_train_step(model, cross_entropy, tx, compile=False)
    state = init_state(model, tx)
    with ScalarReads() as mode:
        state, metrics = step(state, batch_for("cnn"))
    assert mode.reads == [(torch.int64, "cpu", 0)]
    assert set(metrics) == {"loss", "accuracy", "grad_norm"}
    assert all(v.ndim == 0 and v.dtype == torch.float32 for v in metrics.values())


@pytest.mark.parametrize("groups", [False, True])
def test_a_step_takes_the_gradients_global_norm_once_for_the_log_and_the_clip(groups):
    """The logged grad_norm and clip_by_global_norm read one computation (it used to be two per step), and the
    logged value is the norm before clipping (clip_grad_norm_'s), with parameter groups after the clip too."""
    from craft.optim import chain, clip_by_global_norm, param_groups
    from craft.optim.groups import Group

    class Norms(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls += func in (torch.ops.aten._foreach_norm.Scalar, torch.ops.aten.linalg_vector_norm.default)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = MODELS["mlp"]()
    plain = lambda **o: sgd(0.1, **o)  # noqa: E731
    tx = chain(clip_by_global_norm(0.01), param_groups(plain, [Group("0.*", lr_scale=2.0)], list(dict(model.named_parameters())))) \
        if groups else sgd(0.1, clip_norm=0.01)
    state = init_state(model, tx)
    batch = batch_for("mlp")
    reference = copy.deepcopy(model)
    cross_entropy(reference(batch["input"]), batch)[0].backward()
    before_clip = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.01)
    with Norms() as norms:
        _, metrics = make_train_step(model, cross_entropy, tx, compile=False)(state, batch)
    assert norms.calls == 2  # one _foreach_norm over the gradients, one norm of those norms
    torch.testing.assert_close(metrics["grad_norm"], before_clip)
    assert float(metrics["grad_norm"]) > 0.01  # clipped: the norm logged is the one before


def test_a_transform_that_changes_the_gradients_in_place_is_still_clipped_by_their_new_norm():
    """The step's norm, taken once, was read by clip_by_global_norm after a transform before it had
    multiplied the gradients in place: nothing was clipped, unlike tx.update called directly. Eager mode
    notices the change (the leaves' _version) and computes the norm again."""
    from craft.optim import chain, clip_by_global_norm, stateless

    def times_100_in_place(u, params):  # against the Transform contract, but it must not go unnoticed eager
        for g in u.values():
            g.mul_(100)
        return u

    torch.manual_seed(0)
    model = MODELS["mlp"]()
    tx = chain(stateless(times_100_in_place), clip_by_global_norm(1.0), sgd(1.0))
    state = init_state(model, tx)
    new, metrics = make_train_step(model, cross_entropy, tx, compile=False)(state, batch_for("mlp"))
    moved = torch.stack([torch.linalg.vector_norm(new.params[k] - p) for k, p in state.params.items()])
    assert float(metrics["grad_norm"]) * 100 > 1  # the gradients it clipped were longer than 1
    torch.testing.assert_close(torch.linalg.vector_norm(moved), torch.tensor(1.0), atol=1e-5, rtol=0)


def test_eval_step_uses_running_statistics_and_changes_nothing():
    torch.manual_seed(0)  # the same model every run, so a failure reproduces
    model = MODELS["bn_dropout"]()
    tx = sgd(0.1)
    state = init_state(model, tx)
    state, _ = make_train_step(model, cross_entropy, tx, compile=False)(state, batch_for("bn_dropout"))
    batch = batch_for("bn_dropout", seed=99)
    before = _snapshot(state)
    metrics = make_eval_step(model, cross_entropy, compile=False)(state, batch)
    reference = copy.deepcopy(model)
    reference.load_state_dict({**state.params, **state.buffers})
    reference.eval()
    with torch.no_grad():
        expected, _ = cross_entropy(reference(batch["input"]), batch)
    torch.testing.assert_close(metrics["loss"], expected)
    assert all(torch.equal(x, y) for x, y in zip(before, torch.utils._pytree.tree_leaves(state)))


def test_bf16_autocast_keeps_float32_state():
    torch.manual_seed(0)  # the same model every run, so a failure reproduces
    model = MODELS["cnn"]()
    tx = adamw(1e-3)
    state = init_state(model, tx)
    batch = batch_for("cnn")
    fp32, m32 = make_train_step(model, cross_entropy, tx, compile=False)(state, batch)
    bf16, m16 = make_train_step(model, cross_entropy, tx, compile=False, precision="bf16")(state, batch)
    assert all(p.dtype == torch.float32 for p in bf16.params.values())
    torch.testing.assert_close(m16["loss"], m32["loss"], atol=2e-2, rtol=2e-2)
    assert not torch.equal(bf16.params["conv1.weight"], fp32.params["conv1.weight"])


class _Tempered(torch.nn.Module):
    """A linear layer with a learned 0-d temperature, a parameter as CLIP's logit scale is."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 4)
        self.temp = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.temp


@pytest.mark.parametrize("tx", [adam(1e-2), adamw(1e-2), sgd(cosine_decay(0.1, total_steps=10)),
                                inject_hyperparams(sgd, learning_rate=0.1)], ids=["adam", "adamw", "sgd_cosine", "inject"])
def test_a_0d_parameter_stays_float32_step_after_step(tx):
    """A 0-d float64 factor (bias correction, schedule value) times a 0-d float32 update was float64:
    the second step refused the state as moved ("the optimizer state of 'temp' is float32 ...")."""
    torch.manual_seed(0)  # the same model every run, so a failure reproduces
    model = _Tempered()
    batch = {"input": torch.randn(16, 8), "target": torch.randint(0, 4, (16,))}
    step, state = make_train_step(model, cross_entropy, tx, compile=False), init_state(model, tx)
    for _ in range(2):
        state, _ = step(state, batch)
    assert state.params["temp"].dtype == torch.float32 and state.params["temp"].ndim == 0


def test_frozen_parameters_are_not_trained():
    torch.manual_seed(0)  # the same model every run, so a failure reproduces
    model = MODELS["mlp"]()
    model[0].weight.requires_grad_(False)
    tx = sgd(0.1)
    state = init_state(model, tx)
    assert "0.weight" in state.buffers and "0.weight" not in state.params
    new, _ = make_train_step(model, cross_entropy, tx, compile=False)(state, batch_for("mlp"))
    assert torch.equal(new.buffers["0.weight"], state.buffers["0.weight"])


def test_bad_arguments_are_clear_errors():
    torch.manual_seed(0)  # the same model every run, so a failure reproduces
    model = MODELS["mlp"]()
    tx = sgd(0.1)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        make_train_step(model, cross_entropy, tx, precision="fp8")
    with pytest.raises(ValueError, match="accum_steps must be >= 1"):
        make_train_step(model, cross_entropy, tx, accum_steps=0)
    with pytest.raises(ValueError, match="cannot replay a donated step"):
        make_train_step(model, cross_entropy, tx, compile={"mode": "reduce-overhead"}, donate=True)
    per_example = make_train_step(
        model, lambda out, b: torch.nn.functional.cross_entropy(out, b["target"], reduction="none"), tx, compile=False
    )
    with pytest.raises(ValueError, match=r"0-d loss tensor \(a mean\) or \(loss, metrics\), got \(32,\)"):
        per_example(init_state(model, tx), batch_for("mlp"))


# --- Public pieces for research code ------------------------------------------------------


def _dropout_mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(32, 4))


def test_a_compiled_step_that_saw_another_batch_size_gives_bitwise_what_a_fresh_one_gives():
    """Static shapes: one graph per batch size, never a silent eager fallback with other numerics.

    With ``"dynamic": None`` (torch's default) this test fails: the recompile
    for the second size traces dropout under grad with symbolic sizes, fails,
    and the step silently runs eager. The backend decomposes as inductor does.
    """
    compile = {"backend": "aot_eager_decomp_partition"}
    results = []
    for sizes in ((64,), (40, 64)):
        torch.manual_seed(0)
        model, tx = _dropout_mlp(), adamw(1e-2)
        state = init_state(model, tx, seed=3)
        step = make_train_step(model, cross_entropy, tx, compile=compile)
        for size in sizes:
            new, _ = step(state, batch_for("mlp", size=size))
        results.append(new)
    torch.testing.assert_close(results[0].params, results[1].params, atol=0, rtol=0)


def test_a_step_refuses_to_compile_where_dynamo_would_hide_errors():
    torch.manual_seed(0)  # the same model every run, so a failure reproduces
    model = MODELS["mlp"]()
    with torch._dynamo.config.patch(suppress_errors=True), pytest.raises(RuntimeError, match="suppress_errors"):
        make_train_step(model, cross_entropy, sgd(0.1))


def test_make_loss_is_the_steps_loss_and_leaves_buffers_alone():
    from craft.step import make_loss

    torch.manual_seed(0)  # the same model every run, so a failure reproduces
    model = MODELS["bn_dropout"](p=0.0)
    state, batch = init_state(model, sgd(0.1)), batch_for("bn_dropout", size=8)
    before = {k: v.clone() for k, v in state.buffers.items()}
    loss = make_loss(model, cross_entropy)
    model.train()
    value, aux = loss(state.params, state.buffers, batch)
    grads = torch.func.grad(lambda p: loss(p, state.buffers, batch)[0])(state.params)
    step = make_train_step(model, cross_entropy, sgd(1.0), compile=False)
    new, metrics = step(state, batch)
    torch.testing.assert_close(value, metrics["loss"])
    torch.testing.assert_close({k: state.params[k] - grads[k] for k in grads}, new.params)
    torch.testing.assert_close(aux["buffers"], new.buffers)
    assert all(torch.equal(before[k], state.buffers[k]) for k in before)
    assert set(aux["metrics"]) == {"accuracy"}


@pytest.mark.parametrize("opt", ["sgd", "adamw", "lion", "rmsprop", "adagrad"])
def test_torch_save_and_weights_only_load_round_trip_a_state(tmp_path, opt):
    from craft.optim import OPTIMIZERS, chain, ema

    torch.manual_seed(0)  # the same model every run, so a failure reproduces
    model = MODELS["mlp"]()
    tx = chain(OPTIMIZERS[opt](1e-2, clip_norm=1.0), ema(0.9))
    state = init_state(model, tx)
    state, _ = make_train_step(model, cross_entropy, tx, compile=False)(state, batch_for("mlp"))
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    assert type(loaded) is TrainState
    flat, spec = torch.utils._pytree.tree_flatten(loaded)
    want, want_spec = torch.utils._pytree.tree_flatten(state)
    assert spec == want_spec and all(torch.equal(a, b) for a, b in zip(flat, want))


def test_freeze_and_unfreeze_keep_the_rest_of_the_optimizer_state():
    from craft.optim import AdamState, find_state
    from craft.freezing import freeze, unfreeze

    torch.manual_seed(0)  # the same model every run, so a failure reproduces
    model, tx = MODELS["mlp"](), adamw(1e-2)
    step = make_train_step(model, cross_entropy, tx, compile=False)
    state, _ = step(init_state(model, tx), batch_for("mlp"))
    frozen = freeze(state, tx, ["0.weight", "0.bias"])
    adam = find_state(frozen.opt_state, AdamState)
    assert set(frozen.params) == {"2.weight", "2.bias"} and set(adam.mu) == {"2.weight", "2.bias"}
    assert int(adam.count) == 1 and torch.equal(adam.mu["2.weight"], find_state(state.opt_state, AdamState).mu["2.weight"])
    after, _ = step(frozen, batch_for("mlp", seed=1))
    assert torch.equal(after.buffers["0.weight"], state.params["0.weight"])
    back = unfreeze(after, tx, ["0.weight"])
    assert "0.weight" in back.params and torch.count_nonzero(find_state(back.opt_state, AdamState).mu["0.weight"]) == 0
    with pytest.raises(ValueError, match="'nope'"):
        freeze(state, tx, ["nope"])
