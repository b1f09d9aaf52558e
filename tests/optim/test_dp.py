"""Per-example gradients and DP-SGD's clipping and noise."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import batch_for, bn_dropout_net, cnn, mlp
from hypothesis import given
from hypothesis import strategies as st
from torch.func import functional_call, grad

from craft.ensemble import per_example_grads
from craft.optim import apply_updates, chain, clip_per_example, dp_aggregate, per_example_norms, scale_by_learning_rate


def _loss(model):
    def loss(params, batch):
        return F.cross_entropy(functional_call(model, params, (batch["input"],)), batch["target"])

    return loss


@pytest.mark.parametrize("make", [mlp, cnn])
def test_per_example_gradients_average_to_the_batch_gradient(make):
    model = make().double()
    params = {k: p.detach() for k, p in model.named_parameters()}
    batch = batch_for("mlp" if make is mlp else "cnn", 6)
    batch = {**batch, "input": batch["input"].double()}
    per_example = per_example_grads(_loss(model), params, batch)
    whole = grad(_loss(model))(params, batch)
    for k, g in whole.items():
        assert per_example[k].shape == (6, *g.shape)
        # a mean loss: the batch gradient is the mean, i.e. the sum / B, of the per-example ones
        torch.testing.assert_close(per_example[k].sum(0) / 6, g, atol=1e-12, rtol=1e-10)
    one = grad(_loss(model))(params, {k: v[2:3] for k, v in batch.items()})
    for k, v in one.items():
        torch.testing.assert_close(per_example[k][2], v, atol=1e-12, rtol=1e-10)


def test_batchnorm_in_training_mode_is_one_clear_error():
    """functorch's raw "Batch norm got a batched tensor as input while the running_mean ..." named no fix."""
    model = bn_dropout_net(p=0.0)
    params = {k: p.detach() for k, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"^per_example_grads: .*as BatchNorm in training mode does: .*"
                                         r"use GroupNorm or LayerNorm instead of BatchNorm$"):
        per_example_grads(_loss(model), params, batch_for("cnn", 4))


def _grads(scales, size=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.tensor(scales, dtype=torch.float64).view(-1, 1)
    return {"w": torch.randn(len(scales), size, generator=g, dtype=torch.float64) * s,
            "b": torch.randn(len(scales), 2, generator=g, dtype=torch.float64) * s}


@given(
    scales=st.lists(st.floats(0.0, 100.0), min_size=2, max_size=8),
    clip=st.floats(0.01, 10.0),
    seed=st.integers(0, 1000),
)
def test_clipping_bounds_each_examples_contribution(scales, clip, seed):
    grads = _grads(scales, seed=seed)
    clipped = clip_per_example(grads, clip)
    norms = per_example_norms(clipped)
    assert (norms <= clip * (1 + 1e-9)).all()
    original = per_example_norms(grads)
    small = original <= clip
    torch.testing.assert_close(norms[small], original[small])  # under the bound: untouched (up to the 1e-6 guard)
    # Sensitivity: dropping any one example moves the clipped sum by at most clip.
    total = {k: v.sum(0) for k, v in clipped.items()}
    for i in range(len(scales)):
        without = {k: torch.cat([v[:i], v[i + 1 :]]).sum(0) for k, v in clipped.items()}
        moved = math.sqrt(sum(float((total[k] - without[k]).square().sum()) for k in total))
        assert moved <= clip * (1 + 1e-9)


def test_without_noise_dp_aggregate_is_the_mean_of_clipped_gradients():
    grads = _grads([0.1, 5.0, 50.0, 1.0])
    tx = dp_aggregate(clip_norm=1.0, noise_multiplier=0.0)
    out, _ = tx.update(grads, tx.init(None), None)
    for k, v in clip_per_example(grads, 1.0).items():
        torch.testing.assert_close(out[k], v.mean(0))


def test_noise_has_the_configured_scale_and_follows_the_seed():
    batch, clip, sigma = 4, 0.5, 2.0
    grads = {"w": torch.zeros(batch, 200_000)}
    tx = dp_aggregate(clip_norm=clip, noise_multiplier=sigma)
    torch.manual_seed(0)
    out, _ = tx.update(grads, (), None)
    assert out["w"].std().item() == pytest.approx(sigma * clip / batch, rel=0.02)
    assert abs(out["w"].mean().item()) < 0.01
    torch.manual_seed(0)
    again, _ = tx.update(grads, (), None)
    assert torch.equal(out["w"], again["w"])


def test_dp_sgd_is_a_transform_in_a_chain():
    torch.manual_seed(0)  # the same model every run, so a failure reproduces
    model = mlp()
    params = {k: p.detach() for k, p in model.named_parameters()}
    tx = chain(dp_aggregate(clip_norm=1.0, noise_multiplier=0.0), scale_by_learning_rate(0.1))
    batch = batch_for("mlp", 8)
    updates, _ = tx.update(per_example_grads(_loss(model), params, batch), tx.init(params), params)
    new = apply_updates(params, updates)
    assert new.keys() == params.keys() and all(new[k].shape == params[k].shape for k in params)
    assert float(_loss(model)(new, batch)) < float(_loss(model)(params, batch))


def test_bad_dp_settings_are_clear_errors():
    with pytest.raises(ValueError, match="clip_norm must be > 0"):
        dp_aggregate(clip_norm=0.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="noise_multiplier must be >= 0"):
        dp_aggregate(clip_norm=1.0, noise_multiplier=-1.0)
