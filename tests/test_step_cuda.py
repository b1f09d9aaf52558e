"""The step on a CUDA device: parity, donation, bf16, and no host sync.

Skipped where there is no GPU (CI); run on a GPU machine with
``python -m pytest tests/test_step_cuda.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import MODELS, batch_for, cross_entropy

from craft.optim import adamw
from craft.step import init_state, make_train_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICE = torch.device("cuda")


def _cuda_batch(name, seed=0):
    return {k: v.to(DEVICE) for k, v in batch_for(name, seed=seed).items()}


@pytest.mark.parametrize("model_name", ["cnn", "bn_dropout"])
def test_compiled_cuda_step_matches_the_imperative_loop(model_name):
    """float64, as on the CPU: no TF32, and rounding too small to flip a ReLU."""
    torch.manual_seed(0)
    model = (MODELS[model_name](p=0.0) if model_name == "bn_dropout" else MODELS[model_name]()).to(DEVICE).double()
    reference = copy.deepcopy(model)
    tx = adamw(1e-3, weight_decay=0.1, clip_norm=1.0, mask=lambda p: {k: True for k in p})
    step = make_train_step(model, cross_entropy, tx)
    state = init_state(model, tx)
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-3, weight_decay=0.1)
    for i in range(3):
        batch = _cuda_batch(model_name, seed=i)
        batch["input"] = batch["input"].double()
        state, _ = step(state, batch)
        opt.zero_grad()
        cross_entropy(reference(batch["input"]), batch)[0].backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        opt.step()
    for k, v in reference.state_dict().items():
        torch.testing.assert_close({**state.params, **state.buffers}[k], v, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("precision, donate", [("fp32", False), ("fp32", True), ("bf16", True)])
def test_cuda_step_never_syncs_with_the_host(precision, donate):
    """CUDA's sync debug mode turns any device->host wait inside the step into an error."""
    model = MODELS["cnn"]().to(DEVICE)
    tx = adamw(1e-3, clip_norm=1.0)
    step = make_train_step(model, cross_entropy, tx, precision=precision, donate=donate)
    state = init_state(model, tx)
    batch = _cuda_batch("cnn")
    state, _ = step(state, batch)  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            state, metrics = step(state, batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert metrics["loss"].device.type == "cuda" and torch.isfinite(metrics["loss"]).item()


def test_cuda_graphs_step_matches_the_default_compiled_step():
    """mode="reduce-overhead" replays the step as CUDA graphs, fed its own outputs."""
    torch.manual_seed(0)
    model = MODELS["cnn"]().to(DEVICE)
    tx = adamw(1e-3, clip_norm=1.0)
    graphs = make_train_step(model, cross_entropy, tx, compile={"mode": "reduce-overhead"})
    plain = make_train_step(copy.deepcopy(model), cross_entropy, tx)
    a = b = init_state(model, tx)
    for i in range(5):
        batch = _cuda_batch("cnn", seed=i)
        a, metrics_a = graphs(a, batch)
        b, metrics_b = plain(b, batch)
        torch.testing.assert_close(metrics_a["loss"], metrics_b["loss"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.params, b.params, atol=1e-5, rtol=1e-4)


# Donated, craft copies the new state into the inputs one tensor at a time: a single
# torch._foreach_copy_ was fused by inductor into multi-tensor kernels whose other
# sub-kernels still read those inputs, a race on a GPU (benchmarks/cuda_codegen_check.py
# finds it in the CUDA code, tests/test_cuda_codegen.py keeps it out of craft's step).
DONATION_VARIANTS = [
    pytest.param(False, True, id="not-donated"),
    pytest.param(True, True, id="donated"),
]


def assert_gpt_steps_match_eager(gpt: dict, tx, steps: int, *, donate: bool, compile) -> None:
    """``steps`` compiled steps of ``GPT(**gpt)`` on random tokens end with the eager step's params."""
    from craft.models.gpt import GPT
    from craft.tasks import language_model_loss

    torch.manual_seed(0)
    model = GPT(**gpt).to(DEVICE)
    reference = copy.deepcopy(model)
    loss = lambda logits, batch: language_model_loss(logits, batch)[0]  # noqa: E731
    compiled = make_train_step(model, loss, tx, donate=donate, compile=compile)
    eager = make_train_step(reference, loss, tx, compile=False)
    state, expected = init_state(model, tx), init_state(reference, tx)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        tokens = torch.randint(0, gpt["vocab_size"], (4, gpt["block_size"] + 1), generator=g).to(DEVICE)
        batch = {"input": tokens[:, :-1], "target": tokens[:, 1:]}
        state, _ = compiled(state, batch)
        expected, _ = eager(expected, batch)
    for k, v in expected.params.items():
        torch.testing.assert_close(state.params[k], v, atol=1e-4, rtol=1e-3, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize(("donate", "compile"), DONATION_VARIANTS)
def test_compiled_gpt_step_matches_eager_on_cuda(donate, compile):
    """The GPT (tied embeddings, SDPA) through the compiled step, against the eager step.

    Measured on an H200 with torch 2.11, when craft copied the donated state back
    with one ``_foreach_copy_``: wrong by 0.03 after one step (4.4 after two),
    while the CPU matched. `python -m craft` donates on CUDA since the copy is per tensor.
    """
    gpt = dict(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=32)
    assert_gpt_steps_match_eager(gpt, adamw(1e-3, weight_decay=0.1, clip_norm=1.0), 3, donate=donate, compile=compile)


@pytest.mark.parametrize(("donate", "compile"), DONATION_VARIANTS)
def test_gpt2_shaped_step_matches_eager_on_cuda(donate, compile):
    """GPT-2 small's widths (768 wide, 12 heads, context 1024, vocabulary 50,304, no biases), 2 layers,
    fp32 with TF32 off: two compiled AdamW steps against the eager step.

    ``benchmarks/cuda_donation_repro.py`` is the same question in plain torch (no craft).
    """
    gpt = dict(vocab_size=50304, block_size=1024, n_layer=2, n_head=12, n_embd=768, bias=False)
    tx = adamw(6e-4, b2=0.95, weight_decay=0.1, clip_norm=1.0)
    torch.backends.cuda.matmul.allow_tf32, was = False, torch.backends.cuda.matmul.allow_tf32
    try:
        assert_gpt_steps_match_eager(gpt, tx, 2, donate=donate, compile=compile)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = was
