"""Gradient accumulation equals one large batch, also when micro-batches score different numbers of tokens."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from craft.optim import sgd
from craft.step import init_state, make_train_step
from craft.tasks import IGNORE, TASKS

VOCAB, T = 11, 6


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        return self.head(torch.tanh(self.embed(idx)))


def padded_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """8 rows of uneven length: micro-batches of 2 rows score 2 to 12 tokens."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, VOCAB, (8, T), generator=g)
    target = torch.randint(0, VOCAB, (8, T), generator=g)
    lengths = torch.tensor([1, 1, 6, 6, 2, 5, 3, 4])
    target[torch.arange(T)[None, :] >= lengths[:, None]] = IGNORE
    return {"input": idx, "target": target}


def one_step(accum_steps: int, weighted: bool) -> dict[str, torch.Tensor]:
    task = TASKS["language_model"]().build()
    torch.manual_seed(0)
    model = TinyLM()
    tx = sgd(1.0)  # new params = params - grads: compares the gradients themselves
    step = make_train_step(
        model, task.loss, tx, inputs=task.inputs, accum_steps=accum_steps,
        weight=task.weight if weighted else None, compile=False,
    )
    state, metrics = step(init_state(model, tx), padded_batch())
    return {**state.params, "loss": metrics["loss"], "accuracy": metrics["accuracy"]}


def test_accumulated_padded_batches_equal_one_batch():
    whole = one_step(1, weighted=True)
    accumulated = one_step(4, weighted=True)
    for name, value in whole.items():
        torch.testing.assert_close(accumulated[name], value, atol=1e-6, rtol=1e-6, msg=name)


def test_equal_weights_are_wrong_for_padded_batches():
    """What the step did before weighting: the mean of micro-batch means, not the batch's mean."""
    whole, unweighted = one_step(1, weighted=True), one_step(4, weighted=False)
    assert (unweighted["loss"] - whole["loss"]).abs() > 1e-3


@pytest.mark.parametrize("accum_steps", [2, 4])
def test_classification_weights_keep_equal_shares(accum_steps):
    """Equal micro-batches of examples: weighting by examples changes nothing."""
    task = TASKS["classification"]().build()
    batch = {"image": torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(1)), "label": torch.arange(8) % 3}
    out = []
    for weight in (task.weight, None):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
        tx = sgd(0.1)
        step = make_train_step(model, task.loss, tx, inputs=task.inputs, accum_steps=accum_steps, weight=weight, compile=False)
        out.append(step(init_state(model, tx), batch)[0].params)
    for name in out[0]:
        torch.testing.assert_close(out[0][name], out[1][name], atol=1e-7, rtol=1e-6)


def test_a_run_accumulating_over_batchnorm_is_told_its_step_is_not_the_whole_batchs():
    from conftest import ROOT

    from craft.checks import batchnorm_note
    from craft.config import load

    exp = load(ROOT / "experiments" / "resnet_shapes.toml", {"train.accum_steps": 2, "data.batch_size": 16})
    (note,) = batchnorm_note(exp, nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    assert note.startswith("note: train.accum_steps = 2 with BatchNorm: each micro-batch of 8 is normalised")
    assert batchnorm_note(exp, nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4))) == []
    assert batchnorm_note(load(ROOT / "experiments" / "resnet_shapes.toml"), nn.BatchNorm2d(4)) == []
