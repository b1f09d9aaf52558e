"""The GPT's activation checkpointing: the same gradients through craft's pure step, eager and compiled."""

from __future__ import annotations

import copy

import pytest
import torch

from craft.config import ConfigError, loads
from craft.models.gpt import GPTConfig
from craft.optim import sgd
from craft.step import init_state, make_train_step
from craft.tasks import language_model_loss


def _two_steps(model, batch, compile):
    tx = sgd(0.1, momentum=0.9)
    step = make_train_step(model, lambda logits, b: language_model_loss(logits, b)[0], tx, compile=compile)
    state = init_state(copy.deepcopy(model), tx)
    for _ in range(2):
        state, metrics = step(state, batch)
    return state.params, metrics


# Compiled: dynamo traces the checkpointed block as one region and AOTAutograd's partitioner (inductor's
# own, with its decompositions) chooses what the backward recomputes; inductor's code generation after
# that is the same as for any step, and cost a minute and a half here cold for the two float64 models.
PARTITIONED = {"backend": "aot_eager_decomp_partition"}


@pytest.mark.parametrize("compile", [False, pytest.param(PARTITIONED, marks=pytest.mark.slow)])
def test_checkpointed_blocks_give_the_gradients_of_the_plain_model(compile):
    torch.manual_seed(0)
    sizes = dict(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)
    plain = GPTConfig(**sizes).build().double()
    recomputed = GPTConfig(**sizes, checkpoint_activations=True).build().double()
    recomputed.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 13, (4, 9), generator=torch.Generator().manual_seed(1))
    batch = {"input": tokens[:, :-1], "target": tokens[:, 1:]}
    expected, expected_metrics = _two_steps(plain, batch, compile)
    got, metrics = _two_steps(recomputed, batch, compile)
    torch.testing.assert_close(metrics["grad_norm"], expected_metrics["grad_norm"], rtol=1e-12, atol=1e-12)
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=1e-12, atol=1e-12, msg=lambda m, k=k: f"{k}: {m}")


def test_checkpointing_leaves_generation_and_eval_alone():
    torch.manual_seed(0)
    model = GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=16, checkpoint_activations=True).build()
    idx = torch.randint(0, 13, (2, 8))
    with torch.no_grad():
        full = model(idx)
        cache = model.init_cache(2)
        cached = model(idx, cache=cache, pos=0)
    torch.testing.assert_close(cached, full)


def test_checkpointing_with_dropout_is_a_config_error():
    text = 'name = "x"\n[model]\nkind = "gpt"\ndropout = 0.1\ncheckpoint_activations = true\n[data]\nkind = "text"\n'
    with pytest.raises(ConfigError, match="model.checkpoint_activations.*dropout = 0"):
        loads(text)
