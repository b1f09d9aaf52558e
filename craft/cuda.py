"""The GPU settings of a run: TF32 matmuls and CUDA graphs.

On CUDA a run computes float32 matmuls in TF32 (``torch.set_float32_matmul_precision("high")``,
and cuDNN's convolutions likewise), as nanoGPT does; bf16 autocast is
``train.precision``; attention is the GPT's ``F.scaled_dot_product_attention(...,
is_causal=True)``, which picks the flash kernel on CUDA. ``train.cuda_graphs``
compiles the step with ``mode="reduce-overhead"``: the optimizer update is
already inside the compiled graph, so one replay runs the whole step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch


def fast_matmuls(device: torch.device) -> None:
    """On CUDA, let float32 matmuls and convolutions use TF32 tensor cores (process-wide); elsewhere nothing."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def step_compile(compile: bool, cuda_graphs: bool, device: torch.device, warn: Callable[[str], None]) -> bool | Mapping[str, Any]:
    """``make_train_step``'s ``compile`` for ``train.compile`` and ``train.cuda_graphs`` on ``device``.

    CUDA graphs need a CUDA device and a compiled step: elsewhere ``cuda_graphs``
    is ignored with a one-line warning (a GPU experiment file still runs on the CPU).
    """
    if not cuda_graphs:
        return compile
    if device.type != "cuda" or not compile:
        why = f"the device is {device.type}" if device.type != "cuda" else "train.compile is false"
        warn(f"warning: train.cuda_graphs = true is ignored: {why} (CUDA graphs replay a compiled step on a CUDA device)")
        return compile
    return {"mode": "reduce-overhead"}
