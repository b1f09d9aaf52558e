"""Gradient accumulation: a batch split into micro-batches whose gradients and
metrics are averaged into those of the whole batch's mean loss.

Each micro-batch counts by its share ``w_i / sum(w)`` of what the mean loss
averages over (``weight``: examples by default, scored tokens for a padded
language-model batch), so the result does not depend on ``accum_steps``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from craft.optim import foreach
from craft.tree import Params

Batch = Any  # a pytree of tensors, usually a dict; dim 0 is the batch
Metrics = dict[str, Tensor]
GradFn = Callable[[Params, Params, Batch], tuple[Params, tuple[Tensor, dict[str, Any]]]]
"""``grad_and_value(loss, has_aux=True)`` of ``craft.step.make_loss``: ``grads, (loss, aux)``."""


def accumulate(
    grad_fn: GradFn, params: Params, buffers: Params, batch: Batch, accum_steps: int,
    weight: Callable[[Batch], Tensor | int] | None, device: torch.device,
) -> tuple[Params, Metrics, Params]:
    """``(grads, metrics, buffers)`` of ``batch`` taken in ``accum_steps`` equal micro-batches.

    ``grads`` (by param name) and ``metrics`` (``loss`` and the loss function's,
    0-d float32) are the share-weighted means over micro-batches; ``buffers``
    are those after the last one (BatchNorm statistics run through them in turn).
    The shares are computed on ``device`` (the step counter's).
    """
    micros = split_batch(batch, accum_steps)
    shares = micro_shares(micros, weight, device)
    grads, logged = None, []
    for micro, share in zip(micros, shares):
        g, (loss, aux) = grad_fn(params, buffers, micro)
        metrics, buffers = aux["metrics"], aux["buffers"]
        g = list(g.values()) if share is None else foreach.mul(list(g.values()), share)
        grads = g if grads is None else foreach.add(grads, g)
        logged.append({"loss": loss, **metrics})
    if shares[0] is None and accum_steps > 1:
        grads = foreach.div(grads, float(accum_steps))
    return dict(zip(params, grads)), mean_metrics(logged, shares), buffers


def micro_shares(micros: list[Batch], weight: Callable[[Batch], Tensor | int] | None, device: torch.device) -> list:
    """Each micro-batch's share of the whole batch's mean: ``w_i / sum(w)``, 0-d float32 tensors.

    ``[None] * n`` for equal shares (no ``weight``, or a single batch).
    """
    if weight is None or len(micros) == 1:
        return [None] * len(micros)
    w = torch.stack([torch.as_tensor(weight(m), device=device) for m in micros]).float()
    return list((w / w.sum().clamp(min=1)).unbind())


def mean_metrics(logged: list[Metrics], shares: list) -> Metrics:
    """Per-micro-batch metrics averaged with the same shares as the gradients."""
    if shares[0] is None:
        return {k: torch.stack([m[k] for m in logged]).float().mean() for k in logged[0]}
    w = torch.stack(shares)
    return {k: (torch.stack([m[k] for m in logged]).float() * w).sum() for k in logged[0]}


def split_batch(batch: Batch, n: int) -> list[Batch]:
    """``n`` equal micro-batches along dim 0 of every leaf."""
    if n == 1:
        return [batch]
    leaves, spec = pytree.tree_flatten(batch)
    size = leaves[0].shape[0]
    if size % n:
        raise ValueError(f"batch size {size} is not divisible by accum_steps={n}; pick sizes that divide")
    chunks = [leaf.chunk(n) for leaf in leaves]
    return [pytree.tree_unflatten([c[i] for c in chunks], spec) for i in range(n)]
