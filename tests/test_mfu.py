"""MFU: FLOPs per token from the model, the device's peak, and the `mfu` key a run logs; train.cuda_graphs off CUDA."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli as craft
from conftest import tiny_gpt
from craft import cuda, mfu
from craft.models.gpt import GPTConfig
from craft.models.lstm import CharLSTMConfig


def test_gpt_flops_per_token_is_nanogpts_formula():
    model = GPTConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768, bias=False).build()
    n = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()  # tied head counted once
    assert mfu.flops_per_token(model, 1024) == 6 * n + 12 * 12 * 12 * 64 * 1024
    assert mfu.flops_per_example(model, 1024) == mfu.flops_per_token(model, 1024) * 1024
    assert mfu.flops_per_example(model, None) is None


def test_other_models_fall_back_to_6n():
    model = CharLSTMConfig(vocab_size=20).build()
    table = model.embedding.weight.numel()  # looked up, not multiplied
    assert mfu.flops_per_token(model, 64) == 6 * (sum(p.numel() for p in model.parameters()) - table)


def test_peak_is_looked_up_overridden_or_unknown(monkeypatch):
    assert mfu.peak_flops(torch.device("cpu")) is None
    assert mfu.peak_flops(torch.device("cpu"), 1e12) == 1e12
    for name, peak in [("NVIDIA H200", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 80GB HBM3", 989e12),
                       ("NVIDIA A100-SXM4-80GB", 312e12), ("Tesla T4", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert mfu.peak_flops(torch.device("cuda")) == peak, name
    assert mfu.mfu(1000.0, 10**9, None) is None
    assert mfu.mfu(1000.0, None, 1e12) is None
    assert mfu.mfu(1000.0, 10**9, 1e13) == pytest.approx(0.1)


def test_cuda_graphs_are_ignored_with_a_warning_off_cuda():
    said = []
    assert cuda.step_compile(True, True, torch.device("cpu"), said.append) is True
    assert said and "train.cuda_graphs" in said[0] and "cpu" in said[0]
    assert cuda.step_compile(True, False, torch.device("cpu"), said.append) is True and len(said) == 1
    assert cuda.step_compile(True, True, torch.device("cuda"), said.append) == {"mode": "reduce-overhead"}
    assert cuda.step_compile(False, True, torch.device("cuda"), said.append) is False and "compile" in said[-1]


def test_a_run_logs_mfu_with_a_given_peak_and_runs_with_cuda_graphs_on_the_cpu(tmp_path):
    config = tiny_gpt(tmp_path, """
[train]
steps = 10
eval_every = 10
log_every = 5
compile = false
cuda_graphs = true
""", batch_size=4, text="the cat sat on the mat\n" * 40)
    result = craft(str(config), "--train.peak_flops=1e9")
    assert result.returncode == 0, result.stderr
    assert "train.cuda_graphs = true is ignored" in result.stdout + result.stderr
    events = [json.loads(line) for line in (tmp_path / "runs" / "gpt" / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in events if e["split"] == "train"]
    assert train and all(e["mfu"] > 0 for e in train)
    # mfu is samples/s x FLOPs per example over the peak
    vocab = len(set("the cat sat on the mat\n"))
    model = GPTConfig(vocab_size=vocab, block_size=16, n_layer=1, n_head=2, n_embd=32).build()
    expected = train[-1]["samples_per_s"] * mfu.flops_per_example(model, 16) / 1e9
    assert train[-1]["mfu"] == pytest.approx(expected, rel=1e-2, abs=1e-4)


def measured_flops_per_token(model, tokens: torch.Tensor) -> float:
    """FLOPs of one forward and backward as torch's FlopCounterMode counts them (matmuls), per token."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(tokens).float().sum().backward()
    return counter.get_total_flops() / tokens.numel()


def test_an_untied_token_embedding_is_a_lookup_not_flops():
    """GPT-2 small untied counted its 38.6M-weight embedding table as matmuls: 6N was 30% high."""
    options = dict(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32)
    tied, untied = (GPTConfig(**options, tie_weights=tie).build() for tie in (True, False))
    assert mfu.flops_per_token(untied, 16) == mfu.flops_per_token(tied, 16)
    tokens = torch.randint(0, 97, (2, 16))
    assert measured_flops_per_token(untied, tokens) == measured_flops_per_token(tied, tokens)


class Tagger(torch.nn.Module):
    def __init__(self, tie: bool) -> None:
        super().__init__()
        self.embed, self.head = torch.nn.Embedding(50, 8), torch.nn.Linear(8, 50, bias=False)
        self.mix = torch.nn.Linear(8, 8, bias=False)
        if tie:
            self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(self.embed(tokens)))


@pytest.mark.parametrize("tie", [True, False])
def test_6n_counts_the_matmuls_flop_counter_counts(tie):
    model = Tagger(tie)
    assert mfu.flops_per_token(model, 7) == measured_flops_per_token(model, torch.randint(0, 50, (3, 7)))
    assert mfu.flops_per_token(model, 7) == 6 * (8 * 8 + 50 * 8)  # the table counts once, as the head


def test_only_a_model_of_token_sequences_has_tokens_per_example():
    assert mfu.tokens_per_example((torch.zeros(4, 80, dtype=torch.long),)) == 80
    assert mfu.tokens_per_example((torch.zeros(4, 3, 32, 32),)) is None  # images
    assert mfu.tokens_per_example((torch.zeros(4, 64),)) is None  # features, not tokens
    assert mfu.tokens_per_example((torch.zeros(4, 9, dtype=torch.long), torch.zeros(4, 3, 32, 32))) is None  # captions


def test_mfu_of_padded_lines_counts_their_max_length(tmp_path):
    """format = "lines" pads to max_length = 24; the logged mfu counted data.block_size = 16 tokens an example."""
    from craft import run
    from craft.config import load

    config = tiny_gpt(tmp_path, "[train]\nsteps = 6\neval_every = 6\nlog_every = 3\ncompile = false\n", batch_size=4)
    exp = load(config, {"data.format": "lines", "data.max_length": 24, "train.peak_flops": 1e9})
    run_dir = run.train(exp, echo=lambda *a, **k: None)
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [e for e in events if e["split"] == "train"][-1]
    vocab = len(set("the cat sat on the mat\n"))
    model = GPTConfig(vocab_size=vocab, block_size=24, n_layer=1, n_head=2, n_embd=32).build()
    assert last["mfu"] == pytest.approx(last["samples_per_s"] * mfu.flops_per_example(model, 24) / 1e9, rel=1e-2, abs=1e-4)


def test_a_gpts_parameter_count_also_gives_nanogpts_which_leaves_out_position_embeddings():
    """The start line said '136,960 parameters' where nanoGPT prints the same shape as 132,864 (no wpe)."""
    model = GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64).build()
    assert mfu.parameter_count(model) == "136,960 parameters (132,864 without position embeddings, as nanoGPT counts)"
    lstm = CharLSTMConfig(vocab_size=10, embedding_dim=4, hidden_dim=8).build()
    assert mfu.parameter_count(lstm) == f"{sum(p.numel() for p in lstm.parameters()):,} parameters"
