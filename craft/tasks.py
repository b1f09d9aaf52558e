"""Tasks: what a model's inputs are and how its outputs are scored.

A ``Task`` holds two pure functions: ``inputs(batch) -> tuple`` (the model's
positional arguments) and ``loss(outputs, batch) -> (loss, metrics)``.
Entries of ``TASKS`` are frozen attrs configs whose ``build()`` gives a Task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from craft.registry import Registry

TASKS: Registry = Registry("task")

Batch = dict[str, Tensor]


class Task(NamedTuple):
    inputs: Callable[[Batch], tuple]
    loss: Callable[[Any, Batch], tuple[Tensor, dict[str, Tensor]]]


def classification_loss(logits: Tensor, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross entropy of ``logits (B, C)`` against ``batch["label"] (B,)``.

    Metrics: ``accuracy`` (top-1) and, when there are more than 5 classes, ``top5``.
    """
    labels = batch["label"]
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"classification expects model outputs of shape (batch, classes) = ({labels.shape[0]}, C), "
            f"got {tuple(logits.shape)}"
        )
    loss = F.cross_entropy(logits.float(), labels)
    metrics = {"accuracy": (logits.argmax(-1) == labels).float().mean()}
    if logits.shape[-1] > 5:
        top5 = logits.topk(5, dim=-1).indices
        metrics["top5"] = (top5 == labels[:, None]).any(-1).float().mean()
    return loss, metrics


def image_inputs(batch: Batch) -> tuple[Tensor]:
    return (batch["image"],)


@TASKS.register("classification")
@attrs.frozen
class ClassificationConfig:
    """Image classification: ``batch["image"]`` in, ``batch["label"]`` scored."""

    def build(self) -> Task:
        return Task(image_inputs, classification_loss)


def mean_metrics(metrics: list[dict[str, Tensor]], weights: list[int]) -> dict[str, float]:
    """Weighted mean of per-batch metrics (weights: batch sizes), read to the host once."""
    w = torch.tensor(weights, dtype=torch.float64)
    stacked = {k: torch.stack([m[k] for m in metrics]).cpu().double() for k in metrics[0]}
    return {k: float((v * w).sum() / w.sum()) for k, v in stacked.items()}
