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
    assert mfu.flops_per_token(model, 64) == 6 * sum(p.numel() for p in model.parameters())


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
