"""nanoGPT's GPT-2 model, written afresh as the benchmarks' imperative reference (no craft code).

The architecture of Karpathy's ``model.py``: token + position embeddings,
pre-LN blocks (``F.scaled_dot_product_attention(..., is_causal=True)``, a
4x GELU MLP), a final LayerNorm and a head tied to the token embedding; no
biases for GPT-2 small as nanoGPT trains it. Parameter names follow craft's
GPT (``wte``, ``blocks.0.attn.c_attn.weight``, ...), so the same initial
weights load into both with ``load_state_dict``. Its training loop is
``common.imperative_step`` in mode ``compile(model)``: fused AdamW, bf16
autocast, ``clip_grad_norm_``, the learning rate set per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm(nn.Module):
    def __init__(self, n: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class SelfAttention(nn.Module):
    def __init__(self, c: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn, self.c_proj = nn.Linear(c, 3 * c, bias=bias), nn.Linear(c, c, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs): flash on CUDA
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, c: int, bias: bool) -> None:
        super().__init__()
        self.c_fc, self.c_proj = nn.Linear(c, 4 * c, bias=bias), nn.Linear(4 * c, c, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, c: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.ln_1, self.attn = LayerNorm(c, bias), SelfAttention(c, heads, bias)
        self.ln_2, self.mlp = LayerNorm(c, bias), MLP(c, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """``forward(idx (B, T)) -> logits (B, T, vocab)``; load craft's GPT weights with ``load_state_dict``."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, bias: bool = False) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, bias) for _ in range(n_layer))
        self.ln_f = LayerNorm(n_embd, bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as GPT-2

    def forward(self, idx: Tensor) -> Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

