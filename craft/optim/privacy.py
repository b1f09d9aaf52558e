"""Differentially private SGD: per-example clipping and Gaussian noise, as a transform.

``dp_aggregate`` takes *per-example* gradients (every leaf ``(B, ...)``, from
``craft.ensemble.per_example_grads``) and returns one ordinary gradient: each
example's gradient clipped to global L2 norm ``clip_norm``, summed, plus
Gaussian noise of standard deviation ``noise_multiplier * clip_norm``, divided
by ``B``. Put it first in a chain (Abadi et al. 2016)::

    tx = chain(dp_aggregate(clip_norm=1.0, noise_multiplier=1.1), scale_by_learning_rate(0.1))

The noise is drawn from torch's generator, which ``make_train_step`` seeds
from ``state.rng`` (as for dropout): reproducible from the state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from craft.optim.base import Transform, Updates, stateless
from craft.tree import Params


def per_example_norms(grads: Params) -> Tensor:
    """``(B,)``: the global L2 norm of each example's gradient, over all leaves ``(B, ...)``."""
    # At least float32 (bf16 grads), never less than the grads' own precision: the
    # clipping bound must hold in the dtype the caller checks it in. reshape, not flatten(1): a 0-d
    # parameter's per-example gradients are (B,).
    wide = [g.reshape(len(g), -1).to(torch.promote_types(g.dtype, torch.float32)) for g in grads.values()]
    squares = [g.square().sum(1) for g in wide]
    return torch.stack(squares).sum(0).sqrt()


def clip_per_example(grads: Params, clip_norm: float) -> Params:
    """Scale each example's gradient (leaves ``(B, ...)``) to global norm at most ``clip_norm``."""
    coef = torch.clamp(clip_norm / (per_example_norms(grads) + 1e-6), max=1.0)  # (B,)
    return {k: g * coef.view(-1, *[1] * (g.ndim - 1)).to(g.dtype) for k, g in grads.items()}


def dp_aggregate(clip_norm: float, noise_multiplier: float) -> Transform:
    """Per-example gradients ``(B, ...)`` -> clipped mean plus Gaussian noise ``(...)``.

    One example changes the clipped sum by at most ``clip_norm`` (its
    sensitivity); the noise has standard deviation ``noise_multiplier * clip_norm``
    before the division by ``B``. ``noise_multiplier=0`` gives per-example
    clipping alone.
    """
    if clip_norm <= 0:
        raise ValueError(f"dp_aggregate: clip_norm must be > 0, got {clip_norm}")
    if noise_multiplier < 0:
        raise ValueError(f"dp_aggregate: noise_multiplier must be >= 0, got {noise_multiplier}")
    std = noise_multiplier * clip_norm

    def aggregate(u: Updates, params: Params | None) -> Updates:
        clipped = clip_per_example(u, clip_norm)
        size = next(iter(u.values())).shape[0]
        out = {}
        for k, g in clipped.items():
            total = g.sum(0)
            if std:
                total = total + std * torch.randn_like(total)
            out[k] = total / size
        return out

    return stateless(aggregate)
