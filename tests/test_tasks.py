"""Task losses and metrics against direct computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from craft.tasks import IGNORE, TASKS, classification_loss, language_model_loss, mean_metrics, with_text_units


def test_classification_loss_and_top1():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 2.0, 0.0]])
    batch = {"label": torch.tensor([0, 1, 1])}
    loss, metrics = classification_loss(logits, batch)
    torch.testing.assert_close(loss, F.cross_entropy(logits, batch["label"]))
    assert metrics == {"accuracy": pytest.approx(2 / 3)}  # no top5 with 3 classes


def test_top5_with_more_than_five_classes():
    logits = torch.arange(8.0).repeat(2, 1)  # ranking: 7, 6, 5, 4, 3, ...
    _, metrics = classification_loss(logits, {"label": torch.tensor([3, 2])})
    assert metrics["top5"].item() == pytest.approx(0.5)
    assert metrics["accuracy"].item() == 0.0


def test_wrong_output_shape_names_what_was_expected():
    with pytest.raises(ValueError, match=r"outputs of shape \(batch, classes\) = \(4, C\), got \(4, 3, 2\)"):
        classification_loss(torch.zeros(4, 3, 2), {"label": torch.zeros(4, dtype=torch.long)})


def test_registered_task_reads_images_and_labels():
    task = TASKS["classification"]().build()
    batch = {"image": torch.zeros(2, 3, 4, 4), "label": torch.zeros(2, dtype=torch.long)}
    assert task.inputs(batch)[0] is batch["image"]


def test_mean_metrics_weights_by_batch_size():
    metrics = [{"accuracy": torch.tensor(1.0)}, {"accuracy": torch.tensor(0.0)}]
    assert mean_metrics(metrics, [3, 1]) == {"accuracy": pytest.approx(0.75)}


def test_language_model_loss_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    target = torch.randint(0, 7, (2, 5))
    target[1, 3:] = IGNORE
    loss, metrics = language_model_loss(logits, {"target": target})
    keep = target != IGNORE
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], target[keep]))
    expected = (logits.argmax(-1) == target)[keep].float().mean()
    torch.testing.assert_close(metrics["accuracy"], expected)


def test_language_model_wrong_output_shape_names_what_was_expected():
    with pytest.raises(ValueError, match=r"\(batch, time, vocab\) = \(2, 5, V\), got \(2, 7\)"):
        language_model_loss(torch.zeros(2, 7), {"target": torch.zeros(2, 5, dtype=torch.long)})


def test_language_model_eval_weights_by_tokens_and_derives_perplexity_and_bits():
    task = TASKS["language_model"]().build()
    full = {"target": torch.zeros(1, 4, dtype=torch.long)}
    padded = {"target": torch.tensor([[0, IGNORE, IGNORE, IGNORE]])}
    assert int(task.weight(full)) == 4 and int(task.weight(padded)) == 1
    means = mean_metrics([{"loss": torch.tensor(1.0)}, {"loss": torch.tensor(2.0)}], [task.weight(full), task.weight(padded)])
    summary = task.summarize(means)
    assert summary["loss"] == pytest.approx(1.2)  # (4 * 1 + 1 * 2) / 5: a mean over tokens
    assert summary["perplexity"] == pytest.approx(math.exp(1.2))
    assert summary["bits_per_token"] == pytest.approx(1.2 / math.log(2))  # per character only when known


def test_bits_are_named_for_what_they_are_per():
    """bpc only when the means say each token's characters; bits_per_token otherwise, and bpb beside it when
    they say its bytes: a BPE run's bits per token are not bits per character."""
    summarize = TASKS["language_model"]().build().summarize
    bits = 2.0 / math.log(2)
    assert summarize({"loss": 2.0, "characters_per_token": 1.0})["bpc"] == pytest.approx(bits)
    plain = summarize({"loss": 2.0})
    assert "bpc" not in plain and "bpb" not in plain and plain["bits_per_token"] == pytest.approx(bits)
    subword = summarize({"loss": 2.0, "bytes_per_token": 4.0})
    assert subword["bpb"] == pytest.approx(bits / 4) and subword["bits_per_token"] == pytest.approx(bits)
    assert "bpc" not in subword and "bytes_per_token" not in subword


def test_text_units_count_the_bytes_behind_the_scored_targets_only():
    task = with_text_units(TASKS["language_model"]().build(), "byte", torch.tensor([0.0, 1.0, 3.0]))
    batch = {"target": torch.tensor([[1, 2, 0, IGNORE]])}  # 1 + 3 + 0 (end of text) bytes over 3 tokens
    loss, metrics = task.loss(torch.zeros(1, 4, 3), batch)
    assert float(metrics["bytes_per_token"]) == pytest.approx(4 / 3) and float(loss) == pytest.approx(math.log(3))
    means = mean_metrics([{"loss": loss, **metrics}], [task.weight(batch)])
    assert task.summarize(means)["bpb"] == pytest.approx(3 * math.log(3) / math.log(2) / 4)  # the bits over the bytes
    assert task.metric_names == ("loss", "accuracy", "perplexity", "bits_per_token", "bpb")  # early stopping may name them
    chars = with_text_units(TASKS["language_model"]().build(), "character", torch.ones(3))
    assert chars.metric_names == ("loss", "accuracy", "perplexity", "bpc")
    captioning = TASKS["captioning"]().build()
    assert with_text_units(captioning, "byte", torch.ones(3)) is captioning  # its loss is not declared per token


# -- captioning ------------------------------------------------------------------


def _one_hot_logits(predicted: torch.Tensor, vocab: int = 6) -> torch.Tensor:
    return F.one_hot(predicted.clamp(min=0), vocab).float() * 5.0  # (B, T, V), argmax = predicted


def test_captioning_exact_match_needs_every_scored_token_and_ignores_padding():
    target = torch.tensor([[1, 2, 0, IGNORE], [3, 3, 0, IGNORE], [4, 0, IGNORE, IGNORE]])
    predicted = torch.tensor([[1, 2, 0, 5], [3, 1, 0, 5], [4, 0, 2, 2]])  # row 1 misses one token
    task = TASKS["captioning"]().build()
    batch = {"input": target.clamp(min=0), "target": target, "image": torch.zeros(3, 1, 2, 2)}
    assert [t.shape for t in task.inputs(batch)] == [(3, 4), (3, 1, 2, 2)]
    loss, metrics = task.loss(_one_hot_logits(predicted), batch)
    summary = task.summarize(mean_metrics([{"loss": loss, **metrics}], [task.weight(batch)]))
    assert summary["exact_match"] == pytest.approx(2 / 3)
    assert summary["accuracy"] == pytest.approx(7 / 8)
    assert summary["perplexity"] == pytest.approx(math.exp(loss.item()))
    assert set(summary) == {"loss", "accuracy", "exact_match", "perplexity"}


def test_captioning_exact_match_counts_captions_across_uneven_batches():
    # Eval means are weighted by scored tokens; exact_match must still be a share of captions.
    task = TASKS["captioning"]().build()
    long = torch.tensor([[1, 1, 1, 1, 0]] * 4)  # 4 captions of 5 tokens, all right
    short = torch.tensor([[2, 0, IGNORE, IGNORE, IGNORE]] * 2)  # 2 captions of 2 tokens, both wrong
    metrics, weights = [], []
    for target, predicted in ((long, long), (short, torch.full_like(short, 3))):
        batch = {"target": target}
        loss, m = task.loss(_one_hot_logits(predicted), batch)
        metrics.append({"loss": loss, **m})
        weights.append(task.weight(batch))
    assert task.summarize(mean_metrics(metrics, weights))["exact_match"] == pytest.approx(4 / 6)
