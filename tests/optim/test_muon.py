"""Muon: orthogonal updates, batched == per matrix, parity with a plain implementation, trains a GPT, runs from TOML."""

from __future__ import annotations

import pytest
import torch

from conftest import run_cli as craft
from conftest import tiny_gpt
from craft.models.gpt import GPTConfig
from craft.optim import OPTIMIZERS, apply_updates, muon, newton_schulz, orthogonalize, scale_by_muon
from craft.optim.muon import muon_labels
from craft.step import init_state, make_train_step
from craft.tasks import language_model_loss


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (48, 48), (4, 3, 16, 8)])
def test_newton_schulz_gives_singular_values_near_one(shape):
    g = _randn(*shape) * 10  # any scale: the iteration normalises first
    x = newton_schulz(g)
    assert x.shape == g.shape and x.dtype == g.dtype
    s = torch.linalg.svdvals(x.float())
    assert 0.6 < s.min() and s.max() < 1.25, (s.min(), s.max())
    # The same singular vectors as g: U V^T is the polar factor, so x^T g is symmetric positive (semi)definite.
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    polar = u @ vh
    cos = (x * polar).sum((-2, -1)) / (torch.linalg.matrix_norm(x) * torch.linalg.matrix_norm(polar))
    assert (cos > 0.97).all(), cos


def test_newton_schulz_in_float64_stays_float64_and_is_closer():
    g = _randn(16, 24, dtype=torch.float64)
    x64 = newton_schulz(g)
    x32 = newton_schulz(g.float())
    assert x64.dtype == torch.float64
    assert not torch.equal(x64.float(), x32)  # float64 skipped the bfloat16 iteration


def test_same_shape_matrices_orthogonalised_together_equal_one_by_one():
    u = {"a": _randn(8, 12, seed=1), "b": _randn(8, 12, seed=2), "c": _randn(12, 8, seed=3), "d": _randn(8, 12, seed=4)}
    together = orthogonalize(u)
    assert list(together) == list(u)
    for name, g in u.items():
        alone = orthogonalize({name: g})[name]
        torch.testing.assert_close(together[name], alone, rtol=0, atol=2e-2)  # bfloat16 rounding at most
        torch.testing.assert_close(together[name].float(), alone.float(), rtol=1e-2, atol=1e-2)


def test_orthogonalize_rejects_a_vector_naming_it():
    with pytest.raises(ValueError, match="'bias'"):
        orthogonalize({"bias": torch.ones(3)})


def test_unknown_scale_rule_is_one_clear_error():
    with pytest.raises(ValueError, match="scale_rule 'rms'.*'match_adamw'"):
        scale_by_muon(scale_rule="rms")


# --- Parity with a straightforward implementation (Keller Jordan's muon.py, restated) ----


def _reference_newton_schulz(g, steps=5):
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    if g.size(0) > g.size(1):
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        m = x @ x.T
        x = a * x + (b * m + c * m @ m) @ x
    if g.size(0) > g.size(1):
        x = x.T
    return x.float()


def _reference_step(params, grads, buffers, lr, beta=0.95):
    """In place, one matrix at a time: Nesterov momentum, Newton-Schulz, Keller's scale."""
    for name, p in params.items():
        buf = buffers[name]
        buf.lerp_(grads[name], 1 - beta)
        update = grads[name].lerp(buf, beta)
        update = _reference_newton_schulz(update) * max(1, p.size(0) / p.size(1)) ** 0.5
        p.add_(update, alpha=-lr)


def test_matches_a_plain_per_matrix_implementation():
    shapes = {"w1": (16, 8), "w2": (8, 16), "w3": (16, 8)}
    params = {k: _randn(*s, seed=i) for i, (k, s) in enumerate(shapes.items())}
    ref = {k: v.clone() for k, v in params.items()}
    buffers = {k: torch.zeros_like(v) for k, v in params.items()}
    tx = muon(0.02, scale_rule="keller", adamw_match=[])
    state = tx.init(params)
    for step in range(5):
        grads = {k: _randn(*s, seed=100 + 10 * step + i) for i, (k, s) in enumerate(shapes.items())}
        updates, state = tx.update(grads, state, params)
        params = apply_updates(params, updates)
        _reference_step(ref, grads, buffers, 0.02)
    for k in params:
        torch.testing.assert_close(params[k], ref[k], rtol=0, atol=2e-4)


def test_vectors_embeddings_and_head_go_to_adamw():
    model = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, tie_weights=False).build()
    labels = muon_labels(dict(model.named_parameters()), ["*wte*", "*wpe*", "*emb*", "*head*"])
    assert labels["blocks.0.attn.c_attn.weight"] == labels["blocks.0.mlp.c_fc.weight"] == "muon"
    assert labels["wte.weight"] == labels["wpe.weight"] == labels["lm_head.weight"] == "adamw"
    assert labels["blocks.0.ln_1.weight"] == labels["blocks.0.attn.c_attn.bias"] == "adamw"


# Compiled through aot_eager_decomp_partition: dynamo traces the whole step, Newton-Schulz's batched bf16
# matmuls included, and AOTAutograd differentiates and partitions it with inductor's decompositions.
# Inductor's C++ code for Muon's kernels cost one to one and a half minutes cold here; its GPU (Triton)
# code is what tests/test_step_cuda.py and `benchmarks/cuda_codegen_check.py Muon` check.
@pytest.mark.slow
def test_trains_a_tiny_gpt_compiled():
    torch.manual_seed(0)
    model = GPTConfig(vocab_size=13, block_size=16, n_layer=1, n_head=2, n_embd=32).build()
    tx = muon(3e-3, weight_decay=0.01, clip_norm=1.0)
    compile = {"backend": "aot_eager_decomp_partition", "fullgraph": True}
    step = make_train_step(model, lambda out, b: language_model_loss(out, b)[0], tx, compile=compile)
    state = init_state(model, tx)
    tokens = torch.arange(17).remainder(13).repeat(8, 1)  # a pattern to memorise
    batch = {"input": tokens[:, :-1], "target": tokens[:, 1:]}
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.25 * losses[0], losses


def test_muon_from_toml_trains_through_the_cli(tmp_path):
    config = tiny_gpt(tmp_path, """
[optim]
kind = "muon"
lr = 3e-3
weight_decay = 0.01
adamw_match = ["wte.*", "wpe.*"]
[[optim.groups]]
match = "wpe.*"
lr_scale = 0.5
[train]
steps = 20
eval_every = 20
log_every = 10
compile = false
""")
    result = craft(str(config))
    assert result.returncode == 0, result.stderr
    bad = craft(str(config), "--optim.scale_rule=rms", "--overwrite")
    assert bad.returncode != 0 and "scale_rule 'rms'" in bad.stderr and "Traceback" not in bad.stderr


def test_registered_as_an_optimizer_kind():
    assert OPTIMIZERS["muon"] is muon
