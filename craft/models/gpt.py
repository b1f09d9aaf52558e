"""A small GPT (decoder-only transformer), nanoGPT style, with a static KV cache.

``GPT(idx)`` maps token ids ``(B, T)`` to next-token logits ``(B, T, V)``.
Generation passes a cache made by ``init_cache``: a dict of preallocated
keys and values that the forward fills **in place** at positions
``pos .. pos+T-1`` (like gpt-fast's static cache). The cache is plain data
owned by the caller, so a cached forward still goes through
``functional_call(model, params, (idx,), {"cache": cache, "pos": pos})``.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from craft.models import MODELS, need_vocab_size
from craft.validators import at_least, between, divides

Cache = dict[str, Tensor]


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (``nn.LayerNorm`` always has one before torch 2.1)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, k_cache: Tensor | None = None, v_cache: Tensor | None = None, pos: int = 0) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        dropout = self.dropout if self.training else 0.0
        if k_cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)  # (B, nh, T, hs)
        else:
            k_cache[:, :, pos : pos + T] = k
            v_cache[:, :, pos : pos + T] = v
            k, v = k_cache[:, :, : pos + T], v_cache[:, :, : pos + T]  # (B, nh, pos+T, hs)
            # Query i sits at position pos + i and sees keys 0 .. pos + i.
            mask = torch.arange(pos + T, device=x.device) <= torch.arange(pos, pos + T, device=x.device)[:, None]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(n_embd, bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = LayerNorm(n_embd, bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x: Tensor, k_cache: Tensor | None = None, v_cache: Tensor | None = None, pos: int = 0) -> Tensor:
        x = x + self.attn(self.ln_1(x), k_cache, v_cache, pos)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class GPT(nn.Module):
    """Token + learned position embeddings, ``n_layer`` pre-LN blocks, final LayerNorm, linear head.

    ``forward(idx (B, T)) -> logits (B, T, vocab_size)`` for positions
    ``0 .. T-1``, ``T <= block_size``. With ``cache`` (from ``init_cache``),
    ``idx`` holds positions ``pos .. pos+T-1``: their keys and values are
    written into the cache and attention covers every cached position up to
    ``pos + T - 1``, so a prefill followed by one token per call gives the
    logits of one full forward.
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int = 64,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        bias: bool = True,
        tie_weights: bool = True,
        checkpoint_activations: bool = False,
    ) -> None:
        super().__init__()
        if checkpoint_activations and dropout:
            raise ValueError("checkpoint_activations needs dropout = 0: the recomputed forward would draw other dropout masks")
        self.block_size = block_size
        self.checkpoint_activations = checkpoint_activations
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout, bias) for _ in range(n_layer))
        self.ln_f = LayerNorm(n_embd, bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        if tie_weights:
            # One tensor for both: named_parameters() lists it once, as wte.weight.
            self.lm_head.weight = self.wte.weight
        self.apply(init_gpt_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                # GPT-2: each block adds two residual branches; scale so the
                # residual stream's variance does not grow with depth.
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx: Tensor, cache: Cache | None = None, pos: int = 0) -> Tensor:
        B, T = idx.shape
        end = T if cache is None else pos + T
        if end > self.block_size:
            where = f"positions {pos}..{end - 1}" if cache is not None else f"a sequence of {T} tokens"
            raise ValueError(
                f"GPT got {where} but block_size is {self.block_size}; "
                f"feed at most {self.block_size} positions (or build the model with a larger block_size)"
            )
        x = self.trunk(self.embed(idx, end - T), cache, pos)  # (B, T, C)
        return self.lm_head(x)  # (B, T, vocab_size)

    def embed(self, idx: Tensor, start: int = 0) -> Tensor:
        """Token + position embeddings ``(B, T, C)`` of ids ``idx (B, T)`` at positions ``start .. start+T-1``."""
        positions = torch.arange(start, start + idx.shape[1], device=idx.device)  # (T,)
        return self.wte(idx) + self.wpe(positions)  # (B, T, C)

    def trunk(self, x: Tensor, cache: Cache | None = None, pos: int = 0) -> Tensor:
        """Dropout, the blocks and the final LayerNorm over embedded inputs ``x (B, T, C)``: ``(B, T, C)``.

        With ``cache``, ``x`` holds positions ``pos .. pos+T-1`` (as in
        ``forward``). A model that puts other embeddings before the text
        (the captioner's image tokens) calls ``embed`` and ``trunk`` itself.
        """
        x = self.drop(x)
        recompute = self.checkpoint_activations and cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if recompute:
                x = checkpointed(block, x)  # (B, T, C); only x is kept for the backward
            elif cache is None:
                x = block(x)
            else:
                x = block(x, cache[f"k.{i}"], cache[f"v.{i}"], pos)  # (B, T, C)
        return self.ln_f(x)  # (B, T, C)

    def init_cache(self, batch_size: int, *, device=None, dtype=None) -> Cache:
        """Zeroed keys and values ``k.{layer}``, ``v.{layer}``: each ``(B, n_head, block_size, head_dim)``.

        ``device`` and ``dtype`` default to those of the model's own parameters;
        pass them when calling with other params (``functional_call``).
        """
        ref = self.wte.weight
        shape = (batch_size, self.n_head, self.block_size, self.n_embd // self.n_head)
        options = dict(device=ref.device if device is None else device, dtype=ref.dtype if dtype is None else dtype)
        return {f"{kv}.{i}": torch.zeros(shape, **options) for i in range(len(self.blocks)) for kv in "kv"}

    def num_params(self, non_embedding: bool = True) -> int:
        """Number of parameters; tied weights count once.

        ``non_embedding`` leaves out the position embeddings (as nanoGPT does):
        the token embedding is the head's weight when tied, so it stays in.
        """
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self, T: int) -> int:
        """Training FLOPs (forward + backward) per token at context ``T``: nanoGPT's ``6N + 12 L H Q T``.

        ``6N`` counts the weight matmuls (N: ``num_params()``, less an untied token
        embedding, a lookup); ``12 L H Q T`` the attention scores and their
        weighted sum. Divide achieved FLOP/s by the peak for MFU.
        """
        L, H, Q = self.n_layer, self.n_head, self.n_embd // self.n_head
        untied = 0 if self.lm_head.weight is self.wte.weight else self.wte.weight.numel()
        return 6 * (self.num_params() - untied) + 12 * L * H * Q * T


class Recompute(torch.autograd.Function):
    """``fn(x, *params)`` whose backward runs ``fn`` again instead of keeping its activations.

    ``torch.utils.checkpoint`` relies on saved-tensor hooks, which
    ``torch.func.grad`` (craft's step) does not support; a custom Function with
    ``setup_context`` is supported by ``torch.func`` and ``torch.compile``.
    The backward is ``torch.func.vjp`` of ``fn`` at the saved inputs;
    ``call`` is the module itself, what the forward runs under ``torch.compile``.
    """

    @staticmethod
    def forward(call, fn, *args: Tensor) -> Tensor:
        # Eager: fn on the unwrapped inputs records nothing for torch.func.grad.
        # Traced: dynamo cannot speculate fn's nested functional_call, and the
        # module call records the same graph, from which inductor keeps only x.
        if torch.compiler.is_compiling():
            return call(args[0])
        with torch.no_grad():
            return fn(*args)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.fn = inputs[1]
        ctx.save_for_backward(*inputs[2:])

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        _, vjp_fn = torch.func.vjp(ctx.fn, *ctx.saved_tensors)
        return (None, None, *vjp_fn(grad_out))


def checkpointed(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)``, activation-checkpointed: the backward recomputes it from ``x`` and the parameters.

    The parameters are passed explicitly (the ones in use, also under
    ``functional_call``), so their gradients flow through ``Recompute``.
    """
    params = dict(module.named_parameters())

    def run(x: Tensor, *tensors: Tensor) -> Tensor:
        return torch.func.functional_call(module, dict(zip(params, tensors)), (x,))

    return Recompute.apply(module, run, x, *params.values())


def init_gpt_weights(module: nn.Module) -> None:
    """GPT-2's initialisation, for ``module.apply``: weights of ``Linear`` and ``Embedding`` from
    N(0, 0.02), ``Linear`` biases zero; other modules are left as they are."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def _no_dropout(instance: GPTConfig, attribute, value: bool) -> None:
    if value and instance.dropout:
        raise ValueError(f"needs dropout = 0 (got {instance.dropout}): the recomputed forward would draw other dropout masks")


@MODELS.register("gpt")
@attrs.frozen
class GPTConfig:
    """``[model] kind = "gpt"``: a GPT language model; ``vocab_size`` comes from the data's tokenizer and
    ``block_size`` left unset is the data's sequence length (``data.block_size``)."""

    vocab_size: int | None = attrs.field(default=None, validator=at_least(1))
    block_size: int | None = attrs.field(default=None, validator=at_least(1))
    n_layer: int = attrs.field(default=4, validator=at_least(1))
    n_head: int = attrs.field(default=4, validator=[at_least(1), divides("n_embd")])
    n_embd: int = attrs.field(default=128, validator=at_least(1))
    dropout: float = attrs.field(default=0.0, validator=between(0, 1, high_open=True))
    bias: bool = True
    tie_weights: bool = True
    # Recompute each block's activations in the backward instead of keeping them:
    # memory for about a third more compute. Needs dropout = 0.
    checkpoint_activations: bool = attrs.field(default=False, validator=_no_dropout)

    def build(self) -> GPT:
        need_vocab_size(self)
        return GPT(**attrs.asdict(self))
