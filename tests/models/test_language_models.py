"""Language models (gpt, char_lstm): shapes, training through the step, caches, tying, dropout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from craft.models import MODELS, GPT, CharLSTM
from craft.optim import adamw
from craft.step import init_state, make_train_step

V = 11
TINY = {
    "gpt": dict(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16),
    "char_lstm": dict(vocab_size=V, embedding_dim=8, hidden_dim=16),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def build(kind: str, seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MODELS[kind](**{**TINY[kind], **options}).build()


def lm_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), batch["target"].flatten(), ignore_index=-100)


def pattern_batch(batch_size: int = 4, T: int = 12) -> dict[str, torch.Tensor]:
    """A tiny repeated pattern: every next token is predictable from the context."""
    seq = torch.tensor([0, 1, 2, 3, 4, 2, 7]).repeat(4)[: T + 1]
    batch = {"input": seq[:-1].repeat(batch_size, 1), "target": seq[1:].repeat(batch_size, 1)}
    batch["target"][:, :2] = -100  # padding targets are not scored
    return batch


def train(model, steps: int, compile: bool = False, seed: int = 0) -> tuple[list[float], dict]:
    tx = adamw(3e-2)
    state = init_state(model, tx, seed=seed)
    step = make_train_step(model, lm_loss, tx, compile=compile)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, pattern_batch())
        losses.append(float(metrics["loss"]))
    return losses, state.params


@pytest.mark.parametrize("kind", ["gpt", "char_lstm"])
def test_models_map_token_ids_to_next_token_logits(kind):
    model = build(kind)
    assert isinstance(model, GPT if kind == "gpt" else CharLSTM)
    assert model(torch.randint(0, V, (3, 10))).shape == (3, 10, V)


@pytest.mark.parametrize("kind", ["gpt", "char_lstm"])
def test_build_without_vocab_size_names_the_key(kind):
    with pytest.raises(ValueError, match="model.vocab_size is not set"):
        MODELS[kind]().build()


def test_gpt_config_rejects_heads_that_do_not_divide_the_width():
    with pytest.raises(ValueError, match="must divide n_embd=128, got 3"):
        MODELS["gpt"](vocab_size=V, n_head=3)


def test_gpt_refuses_more_positions_than_block_size():
    model = build("gpt")
    with pytest.raises(ValueError, match="17 tokens but block_size is 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"positions 14\.\.17 but block_size is 16"):
        model(torch.zeros(1, 4, dtype=torch.long), model.init_cache(1), pos=14)


@pytest.mark.parametrize("kind", ["gpt", "char_lstm"])
def test_train_steps_lower_the_loss_on_a_repeated_pattern(kind):
    losses, _ = train(build(kind), steps=30)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt", "char_lstm"])
def test_compiled_step_trains_like_the_eager_one(kind):
    # The LSTM graph-breaks (dynamo does not trace nn.LSTM) and runs eagerly
    # inside the compiled step; it must still give the same numbers.
    options = dict(n_layer=1) if kind == "gpt" else {}
    eager, _ = train(build(kind, **options), steps=3)
    compiled, _ = train(build(kind, **options), steps=3, compile=True)
    assert compiled[-1] < compiled[0]
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["gpt", "char_lstm"])
@pytest.mark.parametrize("chunks", [[5, 1, 1, 1, 1, 1, 1, 1], [3, 4, 1, 2]])
def test_cached_forward_gives_the_full_forward_logits(kind, chunks):
    model = build(kind).eval()
    idx = torch.randint(0, V, (2, sum(chunks)))
    full = model(idx)  # (B, T, V)
    cache, pos, parts = model.init_cache(2), 0, []
    for n in chunks:
        parts.append(model(idx[:, pos : pos + n], cache, pos))
        pos += n
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)


def test_cache_is_written_in_place_through_functional_call():
    model = build("gpt").eval()
    params = dict(model.named_parameters())
    cache = model.init_cache(1)
    functional_call(model, params, (torch.tensor([[1, 2, 3]]),), {"cache": cache, "pos": 0})
    assert cache["k.0"][:, :, :3].abs().sum() > 0
    assert cache["k.0"][:, :, 3:].abs().sum() == 0


def test_gpt_ties_the_head_to_the_token_embedding():
    tied, untied = build("gpt"), build("gpt", tie_weights=False)
    assert tied.lm_head.weight is tied.wte.weight
    assert "lm_head.weight" not in dict(tied.named_parameters())
    assert untied.lm_head.weight is not untied.wte.weight
    assert untied.num_params() - tied.num_params() == V * 16
    # Through functional_call the one params entry drives both uses.
    params = {k: v.detach().clone() for k, v in tied.named_parameters()}
    params["wte.weight"].zero_()
    logits = functional_call(tied, params, (torch.tensor([[1, 2]]),))
    assert torch.equal(logits, torch.zeros_like(logits))


def test_gpt_flops_per_token_follow_the_nanogpt_estimate():
    model = build("gpt")
    N = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    assert model.num_params() == N
    assert model.flops_per_token(16) == 6 * N + 12 * 2 * 2 * 8 * 16


@pytest.mark.parametrize("kind", ["gpt", "char_lstm"])
def test_dropout_masks_are_a_function_of_the_step_seed(kind):
    options = dict(dropout=0.5, **({"num_layers": 2} if kind == "char_lstm" else {}))
    first = train(build(kind, **options), steps=2, seed=1)[1]
    again = train(build(kind, **options), steps=2, seed=1)[1]
    other = train(build(kind, **options), steps=2, seed=2)[1]
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
