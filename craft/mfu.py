"""Model FLOPs utilisation: the share of the device's peak that training achieves.

    mfu = examples/s * flops_per_example(model, T) / peak_flops(device)

FLOPs count what the model needs, not what the kernels do (no recomputation):
nanoGPT's ``6N + 12 L H Q T`` per token for the GPT (``GPT.flops_per_token``),
``6N`` per token for another model that reads one ``(B, T)`` tensor of tokens,
N without embedding lookups (a table tied to a matmul, the GPT's head, counts).
Every one of the batch's ``T`` positions counts, padding included: the model
computes them. A model with other inputs (images, an image and its caption)
has no MFU. Peaks are dense bf16 tensor-core figures, as nanoGPT and llm.c
quote MFU (also for fp32 runs, whose matmuls then run in TF32). A device
missing from ``PEAK_FLOPS`` has no MFU unless ``train.peak_flops`` gives its
peak: never a made-up figure.
"""

from __future__ import annotations

import torch
from torch import nn

PEAK_FLOPS = {
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM and NVL
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
}
"""Dense bf16 peak FLOP/s by a substring of ``torch.cuda.get_device_name``; the first match wins."""


def peak_flops(device: torch.device, override: float | None = None) -> float | None:
    """The device's peak FLOP/s: ``override`` when given, else ``PEAK_FLOPS`` by the CUDA device's name, else None."""
    if override is not None:
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def flops_per_token(model: nn.Module, context: int) -> int:
    """Training FLOPs per token at ``context`` tokens: ``model.flops_per_token(context)`` when it
    has one (the GPT), else ``6N`` with N its trainable parameters (each weight: one multiply-add
    forward, two backward) other than embedding tables, which are looked up, not multiplied."""
    own = getattr(model, "flops_per_token", None)
    if callable(own):
        return int(own(context))
    return 6 * sum(p.numel() for p in matmul_params(model) if p.requires_grad)


def parameter_count(model: nn.Module) -> str:
    """``"N parameters"`` (tied weights once); for a model with ``num_params`` (the GPT), also nanoGPT's
    count, which leaves out the position embeddings."""
    total = sum(p.numel() for p in model.parameters())
    own = getattr(model, "num_params", None)
    shown = own() if callable(own) else total
    return f"{total:,} parameters" + (f" ({shown:,} without position embeddings, as nanoGPT counts)" if shown != total else "")


def matmul_params(model: nn.Module) -> list[nn.Parameter]:
    """``model``'s parameters less those only ``nn.Embedding`` tables hold (a table tied to a head stays)."""
    lookup = (nn.Embedding, nn.EmbeddingBag)
    tables = {id(p) for m in model.modules() if isinstance(m, lookup) for p in m.parameters(recurse=False)}
    used = {id(p) for m in model.modules() if not isinstance(m, lookup) for p in m.parameters(recurse=False)}
    return [p for p in model.parameters() if id(p) not in tables or id(p) in used]


def tokens_per_example(inputs: tuple) -> int | None:
    """``T`` when the model's inputs (``task.inputs(batch)``) are one ``(B, T)`` integer tensor of
    tokens; None for any other model (images; an image and its caption)."""
    if len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor):
        return None
    tokens = inputs[0]
    return tokens.shape[1] if tokens.ndim == 2 and not tokens.is_floating_point() else None


def flops_per_example(model: nn.Module, context: int | None) -> int | None:
    """Training FLOPs per example of ``context`` tokens; None without a context (not a token model)."""
    return None if context is None else flops_per_token(model, context) * context


def mfu(examples_per_s: float, flops_per_example: int | None, peak: float | None) -> float | None:
    """Achieved over peak FLOP/s, a fraction; None when either figure is unknown."""
    if not flops_per_example or not peak:
        return None
    return examples_per_s * flops_per_example / peak
