"""A custom task (craft's "trainer" logic): loss and metrics as pure functions.

A ``Task`` says what the model reads from a batch (``inputs``), how its
outputs are scored (``loss``: a 0-d mean loss and a dict of 0-d metrics), and
how evaluation means are summarized. Here: cross entropy with label
smoothing, reporting accuracy and the plain (unsmoothed) cross entropy, and
at evaluation the error rate.
"""

from __future__ import annotations

import functools

import attrs
import torch.nn.functional as F
from torch import Tensor

from craft.tasks import TASKS, Task

Batch = dict[str, Tensor]


def image_inputs(batch: Batch) -> tuple[Tensor]:
    return (batch["image"],)


def smoothed_loss(logits: Tensor, batch: Batch, *, smoothing: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Label-smoothed cross entropy of ``logits (B, C)`` against ``batch["label"] (B,)``."""
    labels = batch["label"]
    if logits.shape != (labels.shape[0], logits.shape[-1]):
        raise ValueError(f"expected logits of shape (batch, classes) = ({labels.shape[0]}, C), got {tuple(logits.shape)}")
    logits = logits.float()
    loss = F.cross_entropy(logits, labels, label_smoothing=smoothing)
    metrics = {
        "accuracy": (logits.argmax(-1) == labels).float().mean(),
        "nll": F.cross_entropy(logits.detach(), labels),  # comparable with runs that do not smooth
    }
    return loss, metrics


def with_error_rate(means: dict[str, float]) -> dict[str, float]:
    return {**means, "error": 1 - means["accuracy"]}


@TASKS.register("smoothed_classification")
@attrs.frozen
class SmoothedClassificationConfig:
    """``[task] kind = "smoothed_classification"``: ``label_smoothing`` in [0, 1)."""

    label_smoothing: float = 0.1

    def build(self) -> Task:
        loss = functools.partial(smoothed_loss, smoothing=self.label_smoothing)
        return Task(inputs=image_inputs, loss=loss, summarize=with_error_rate)
