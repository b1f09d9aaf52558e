"""Tasks: what a model's inputs are and how its outputs are scored.

A ``Task`` holds pure functions: ``inputs(batch) -> tuple`` (the model's
positional arguments), ``loss(outputs, batch) -> (loss, metrics)``, and for
evaluation ``weight(batch)`` (what a batch's mean counts: examples, or scored
tokens) and ``summarize(means) -> means`` (figures derived from the means, such
as perplexity, which is not itself a mean). Entries of ``TASKS`` are frozen
attrs configs whose ``build()`` gives a Task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import math

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from craft.registry import Registry

TASKS: Registry = Registry("task")

Batch = dict[str, Tensor]

LOWER_IS_BETTER = ("loss", "perplexity", "bits_per_token", "bpc", "bpb")
HIGHER_IS_BETTER = ("accuracy", "top5", "exact_match")


def metric_mode(name: str) -> str | None:
    """Which way ``name``, a metric craft's tasks report, improves: ``"min"``, ``"max"``, or None where unknown."""
    return "min" if name in LOWER_IS_BETTER else "max" if name in HIGHER_IS_BETTER else None


def batch_size(batch: Batch) -> int:
    """Rows in ``batch``: dim 0 of its first tensor."""
    return next(iter(batch.values())).shape[0]


def _same(metrics: dict[str, float]) -> dict[str, float]:
    return metrics


class Task(NamedTuple):
    """A task's pure functions; ``metric_names``: the val metrics it may report (None: not declared)."""

    inputs: Callable[[Batch], tuple]
    loss: Callable[[Any, Batch], tuple[Tensor, dict[str, Tensor]]]
    weight: Callable[[Batch], int | Tensor] = batch_size
    summarize: Callable[[dict[str, float]], dict[str, float]] = _same
    metric_names: tuple[str, ...] | None = None
    text_units: bool = False
    """Whether the loss is a mean over ``batch["target"]``'s scored tokens, so that ``with_text_units``
    may add the characters or bytes behind them (``{unit}s_per_token``) for ``summarize`` to read."""


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
        return Task(image_inputs, classification_loss, metric_names=("loss", "accuracy", "top5"))


IGNORE = -100
"""Target value of padding: ``F.cross_entropy(..., ignore_index=IGNORE)`` skips it."""


def next_token_scores(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, correct, scored)`` of ``logits (B, T, V)`` against ``target (B, T)``.

    ``loss``: cross entropy averaged over scored tokens (targets equal to
    ``IGNORE``, padding, count for nothing); ``scored``: bool ``(B, T)``, the
    targets that count; ``correct``: bool ``(B, T)``, scored and predicted exactly (argmax).
    """
    if logits.ndim != 3 or logits.shape[:2] != target.shape:
        raise ValueError(
            f"language modelling expects model outputs of shape (batch, time, vocab) = "
            f"({target.shape[0]}, {target.shape[1]}, V), got {tuple(logits.shape)}"
        )
    flat = logits.float().flatten(0, 1)  # (B*T, V)
    loss = F.cross_entropy(flat, target.flatten(), ignore_index=IGNORE)
    scored = target != IGNORE
    return loss, (logits.argmax(-1) == target) & scored, scored


def language_model_loss(logits: Tensor, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
    """Next-token cross entropy of ``logits (B, T, V)`` against ``batch["target"] (B, T)``.

    The mean is over scored tokens: targets equal to ``IGNORE`` (padding) count
    for nothing. Metric: ``accuracy``, the share of tokens predicted exactly.
    """
    loss, correct, scored = next_token_scores(logits, batch["target"])
    return loss, {"accuracy": correct.sum() / scored.sum().clamp(min=1)}


def scored_tokens(batch: Batch) -> Tensor:
    """Targets that are not padding: a 0-d tensor, left on the device."""
    return (batch["target"] != IGNORE).sum()


def perplexity_and_bits(metrics: dict[str, float]) -> dict[str, float]:
    """Add ``perplexity`` (exp of the mean loss) and the loss in bits: ``bpc`` (per character) when the
    means hold ``characters_per_token``, else ``bits_per_token``, and ``bpb`` (per byte) when they hold
    ``bytes_per_token`` (``with_text_units``). Bits per character or byte are the evaluated tokens' bits
    over the characters or bytes behind them (special tokens, such as the end of a file, are none)."""
    metrics = dict(metrics)
    loss, bits = metrics["loss"], metrics["loss"] / math.log(2)
    chars, size = metrics.pop("characters_per_token", None), metrics.pop("bytes_per_token", None)
    out = {**metrics, "perplexity": math.exp(min(loss, 700.0))}
    if chars:
        return {**out, "bpc": bits / chars}
    return {**out, "bits_per_token": bits, **({"bpb": bits / size} if size else {})}


def with_text_units(task: Task, unit: str, sizes: Tensor) -> Task:
    """``task`` whose loss also reports ``{unit}s_per_token``: the ``unit``s (characters or bytes) behind
    the batch's scored targets, ``sizes[id]`` each, over their count. Evaluation weights it by scored tokens,
    so its mean is the split's units over its tokens, exactly. ``task`` unchanged unless ``task.text_units``."""
    if not task.text_units:
        return task
    name, loss_fn = f"{unit}s_per_token", task.loss

    def loss(outputs: Any, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        value, metrics = loss_fn(outputs, batch)
        target = batch["target"]
        scored = target != IGNORE
        units = torch.where(scored, sizes.to(target.device)[target.clamp(min=0)], 0.0).sum()
        return value, {**metrics, name: units / scored.sum().clamp(min=1)}

    names = task.metric_names
    if names is not None:  # the bits it reports: bpc in place of bits per token, or bpb beside them
        names = tuple("bpc" if n == "bits_per_token" else n for n in names) if unit == "character" else (*names, "bpb")
    return task._replace(loss=loss, metric_names=names)


def token_inputs(batch: Batch) -> tuple[Tensor]:
    return (batch["input"],)


@TASKS.register("language_model")
@attrs.frozen
class LanguageModelConfig:
    """Next-token prediction: ``batch["input"] (B, T)`` in, ``batch["target"] (B, T)`` scored.

    Evaluation weights each batch by its scored tokens, so the reported loss is
    the mean over every token of the split; ``perplexity`` and the bits are derived from that mean:
    ``bpc`` (bits per character) for character tokens, else ``bits_per_token``, and ``bpb`` (bits per
    byte) where the tokenizer says how many bytes each token is (see ``perplexity_and_bits``).
    """

    def build(self) -> Task:
        return Task(
            token_inputs, language_model_loss, scored_tokens, perplexity_and_bits,
            metric_names=("loss", "accuracy", "perplexity", "bits_per_token"), text_units=True,
        )


def caption_inputs(batch: Batch) -> tuple[Tensor, Tensor]:
    return (batch["input"], batch["image"])


def captioning_loss(logits: Tensor, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
    """Teacher-forced cross entropy of ``logits (B, T, V)`` against ``batch["target"] (B, T)``, padding ignored.

    Metrics: ``accuracy`` (tokens), and what ``exact_match`` is made of: the
    captions whose every token (the end marker included) is the argmax given
    the true prefix. That is exactly the captions greedy decoding reproduces:
    greedy's first token is the argmax after the begin marker, so it equals
    the target's, and by induction so does every later one. Evaluation weights
    batches by scored tokens, so a per-caption share is reported as two
    per-token ratios (``exact_per_token``, ``captions_per_token``) whose
    weighted means ``exact_match_share`` divides back into captions.
    """
    loss, correct, scored = next_token_scores(logits, batch["target"])
    tokens = scored.sum().clamp(min=1)
    exact = (correct | ~scored).all(-1)  # (B,)
    return loss, {
        "accuracy": correct.sum() / tokens,
        "exact_per_token": exact.sum() / tokens,
        "captions_per_token": torch.full_like(loss, scored.shape[0]) / tokens,
    }


def exact_match_share(metrics: dict[str, float]) -> dict[str, float]:
    """Replace the per-token ratios by ``exact_match``, the share of exact captions; add ``perplexity``."""
    metrics = dict(metrics)
    exact, captions = metrics.pop("exact_per_token"), metrics.pop("captions_per_token")
    metrics["exact_match"] = exact / captions if captions else 0.0
    return {**metrics, "perplexity": math.exp(min(metrics["loss"], 700.0))}


@TASKS.register("captioning")
@attrs.frozen
class CaptioningConfig:
    """Image captioning: ``batch["input"] (B, T)`` and ``batch["image"]`` in, ``batch["target"] (B, T)`` scored.

    Teacher forcing: the model sees the true caption so far at every position.
    Metrics ``loss``, ``accuracy`` (tokens), ``perplexity`` and ``exact_match``:
    the share of captions greedy decoding gets exactly right (see
    ``captioning_loss``), with each (image, caption) pair counted once.
    """

    def build(self) -> Task:
        return Task(
            caption_inputs, captioning_loss, scored_tokens, exact_match_share,
            metric_names=("loss", "accuracy", "exact_match", "perplexity"),
        )


def mean_metrics(
    metrics: list[dict[str, Tensor]], weights: list[int | Tensor], reduce: Callable[[Tensor], Tensor] | None = None
) -> dict[str, float]:
    """Weighted mean of per-batch metrics (weights: examples or tokens), read to the host once.

    ``reduce`` sums the weighted totals over data-parallel replicas before the
    division (``craft.distributed.Replicas.sum``), so the mean covers every shard.
    """
    w = torch.stack([torch.as_tensor(x).detach().cpu() for x in weights]).double()
    keys = list(metrics[0])
    totals = torch.stack([(torch.stack([m[k] for m in metrics]).cpu().double() * w).sum() for k in keys] + [w.sum()])
    if reduce is not None:
        totals = reduce(totals)
    return {k: float(totals[i] / totals[-1]) for i, k in enumerate(keys)}
