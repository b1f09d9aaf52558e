"""Checks that an experiment's pieces fit each other, before anything is trained or written.

Each raises one clear error naming the config key and the fix: a model key
that disagrees with the data, a first batch the model or the task cannot
take, an early-stopping metric the task does not report, a sample prompt
outside the vocabulary, ranks that read different data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import attrs
import torch

from craft.config import ConfigError, Experiment
from craft.contracts import loss_and_metrics
from craft.distributed import Replicas
from craft.rundir import RunError
from craft.tasks import Task
from craft.words import few, plural


FROM_DATA = {"num_classes": "classes", "vocab_size": "tokenizer", "block_size": "sequence length"}
"""Model keys the data decides: left unset (``None``), a run fills each in from the train iterator's
attribute of the same name (and the resolved ``config.toml`` records it)."""


def check_fit(config: Any, data, given: dict[str, int]) -> None:
    """Raise a ``RunError`` where an explicit model key disagrees with the data's ``given`` value."""
    want, have = getattr(config, "num_classes", None), given.get("num_classes")
    if want is not None and have is not None and want != have:
        raise RunError(
            f"model.num_classes = {want} but the data has {plural(have, 'class', 'classes')} ({few(getattr(data, 'classes', []))}); "
            f"set model.num_classes = {have} or remove it to take it from the data"
        )
    want, have = getattr(config, "vocab_size", None), given.get("vocab_size")
    if want is not None and have is not None and want < have:
        raise RunError(
            f"model.vocab_size = {want} but the data's tokenizer has {have} tokens; "
            "remove model.vocab_size to take it from the data"
        )
    want, have = getattr(config, "block_size", None), given.get("block_size")
    if want is not None and have is not None and have > want:
        raise RunError(
            f"the data's sequences have {have} tokens but model.block_size = {want}; "
            f"remove model.block_size to take it from the data, or lower the data's length"
        )


def need_data_keys(exp: Experiment) -> None:
    """Refuse to build a model whose data-decided keys (``FROM_DATA``) no run has filled in yet."""
    config = exp.model.config
    fields = attrs.fields_dict(type(config)) if attrs.has(type(config)) else {}
    unset = [key for key in FROM_DATA if key in fields and getattr(config, key) is None]
    if unset:
        raise ConfigError([
            f"model.{unset[0]}: not set; a run takes it from the data (craft.parts.fit_to_data(exp, train_data) "
            f"fills it in), or set it"
        ])


def check_sample(exp: Experiment, data) -> Any:
    """The tokenizer ``train.sample`` decodes with (None without sampling); a run that cannot sample is refused."""
    tokenizer = getattr(data, "tokenizer", None)
    if exp.train.sample is None:
        return tokenizer
    if tokenizer is None:
        fix = "set data.tokenizer (a tiktoken encoding, e.g. 'gpt2'), or " if exp.data.kind == "tokens" else ""
        raise RunError(
            f"train.sample needs text data with a tokenizer; data.kind = {exp.data.kind!r} has none: "
            f"{fix}turn sampling off with --train.sample=None (or remove [train.sample])"
        )
    if hasattr(exp.data.config, "load_image"):
        raise RunError(
            "train.sample continues a text prompt, and a captioning run reports exact_match instead; "
            "remove [train.sample] (caption an image after training with craft generate RUN_DIR --image=PATH)"
        )
    try:  # found now, not at the first sample after an evaluation's worth of training
        tokenizer.encode(exp.train.sample.prompt)
    except ValueError as e:
        raise RunError(f"train.sample.prompt = {exp.train.sample.prompt!r}: {e}") from None
    return tokenizer


def check_same_data(data, replicas: Replicas) -> None:
    """Under torchrun, every rank must read the same dataset: compare ``data.fingerprint()`` across ranks."""
    fingerprint = getattr(data, "fingerprint", None)
    if not replicas.active or fingerprint is None:
        return
    digest = hashlib.sha256(str(fingerprint()).encode()).hexdigest()
    chunks = [torch.tensor(float(int(digest[i : i + 6], 16)), dtype=torch.float64) for i in range(0, 24, 6)]
    try:
        replicas.check_same(chunks, "data")
    except RuntimeError as e:
        raise RunError(
            f"rank {replicas.rank}: the ranks read different data ({e}); give every rank the same data.path and files"
        ) from None


class Reads(dict):
    """A batch that records the keys read from it but missing."""

    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        super().__init__(batch)
        self.missing: list[str] = []

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self:
            self.missing.append(key)
        return super().__getitem__(key)


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_components(exp: Experiment, parts, batches: Iterable) -> dict[str, torch.Tensor] | None:
    """Run the task's inputs, the model and the task's loss once on the first of ``batches``; return
    that batch (``None`` for empty ``batches``), for whoever else wants to look at one.

    A mismatch between user components (a dataset without a key the task
    reads, a model whose outputs the task cannot score) is reported here,
    naming each component by its config ``kind``, instead of surfacing as a
    key or shape error from inside the step. Empty ``batches`` are left to
    evaluation to report. The model runs in eval mode, without gradients.
    """
    data, model, task = (f"{section}.kind = {getattr(exp, section).kind!r}" for section in ("data", "model", "task"))
    batch = first_batch(data, batches)
    if batch is None:
        return None
    reads = Reads({k: v.to(parts.device, non_blocking=True) for k, v in batch.items()})

    def missing() -> RunError:
        return RunError(
            f"{data} yields batches with keys {sorted(batch)}, but {task} reads "
            f"{', '.join(map(repr, reads.missing))}; make the dataset yield the keys the task reads"
        )

    try:
        args = parts.task.inputs(reads)
    except KeyError:
        if reads.missing:
            raise missing() from None
        raise
    was_training = parts.model.training
    parts.model.eval()
    try:
        with torch.no_grad():
            outputs = parts.model(*args)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in batch.items())
        keys = [f"data.{k}" for k in ("image_size", "channels") if "image" in batch and hasattr(exp.data.config, k)]
        hint = f"; check {' and '.join(keys)} against what the model takes" if keys else ""
        raise RunError(f"{model} failed on the first batch of {data} ({shapes}): {first_line(e)}{hint}") from None
    finally:
        parts.model.train(was_training)
    try:
        with torch.no_grad():
            scored = parts.task.loss(outputs, reads)
    except KeyError:
        if reads.missing:
            raise missing() from None
        raise
    except (ValueError, TypeError, AttributeError, IndexError) as e:
        raise RunError(
            f"{model} returned outputs that {task} cannot score (first batch of {data}): {first_line(e)}"
        ) from None
    except RuntimeError as e:  # torch's own checks: a label of the wrong dtype or shape, as often as the outputs
        raise RunError(
            f"{task} failed on the first batch of {data} ({tensors(batch)}) and the outputs of {model} "
            f"({tensors(outputs)}): {first_line(e)}; check the dtypes and shapes the task expects"
        ) from None
    check_scores(task, parts.task, scored)
    return batch


def first_batch(data: str, batches: Iterable) -> dict[str, torch.Tensor] | None:
    """The first of the val ``batches`` of ``data`` (None for none), checked: a dict of tensors, from a split that
    can be read again (a generator would lose this batch to the look, and the next evaluation every batch)."""
    if iter(batches) is batches:
        raise RunError(
            f"{data} gives a val split that can be read only once ({type(batches).__name__}); every evaluation "
            f"reads it again: return a list of batches, or an object whose __iter__ starts a new pass"
        )
    batch = next(iter(batches), None)
    if batch is not None and (not isinstance(batch, dict) or not all(isinstance(v, torch.Tensor) for v in batch.values())):
        raise RunError(f"{data} yields {type(batch).__name__} batches; a batch must be a dict of tensors")
    return batch


def check_scores(task: str, built: Task, scored: Any) -> None:
    """The task's loss gave a 0-d loss and 0-d metrics (``craft.contracts.loss_and_metrics``), and its
    ``summarize`` turns their means into a dict: else a ``RunError`` naming ``task``."""
    try:
        loss, metrics = loss_and_metrics(scored)
    except ValueError as e:
        raise RunError(f"{task}: {first_line(e)}") from None
    summary = built.summarize({"loss": float(loss), **{k: float(v) for k, v in metrics.items()}})
    if not isinstance(summary, dict):
        raise RunError(f"{task}: summarize(means) returned {type(summary).__name__}; return the dict of means, "
                       f"with any figures derived from them added")


def tensors(value: Any) -> str:
    """``value``'s tensors by dtype and shape, for a message: ``image float32 (8, 3), label int64 (8,)``."""
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} {tuple(value.shape)}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {tensors(v)}" for k, v in value.items())
    if isinstance(value, tuple | list):
        return f"{type(value).__name__} of " + ", ".join(tensors(v) for v in value)
    return type(value).__name__


def check_sweep_train(exp: Experiment) -> None:
    """``[train]`` settings a sweep cannot honour, refused before anything is written: early stopping
    (members would stop at different steps) and trackers (a sweep logs to ``metrics.jsonl`` files only)."""
    if exp.train.early_stopping is not None:
        raise RunError("train.early_stopping does not apply to a sweep: members would stop at different steps")
    if exp.train.loggers or exp.train.tensorboard:
        key = "train.loggers" if exp.train.loggers else "train.tensorboard"
        raise RunError(
            f"{key} does not apply to a sweep: it logs to the run's and each member's metrics.jsonl only "
            f"(members/NNN/); set {key} = {'[]' if exp.train.loggers else 'false'}, or train one run per value"
        )


def check_early_stopping(exp: Experiment, task: Task) -> None:
    """``train.early_stopping.metric`` must be one the task reports (a task that declares no names is not checked),
    and its ``mode`` known: given, or the metric's own (``craft.tasks.metric_mode``)."""
    rule, names = exp.train.early_stopping, getattr(task, "metric_names", None)
    if rule is not None and names and rule.metric not in names:
        raise ConfigError([
            f"train.early_stopping.metric: task {exp.task.kind!r} reports no {rule.metric!r}; choose one of {', '.join(map(repr, names))}"
        ])
    if rule is not None and rule.mode is None:
        raise ConfigError([f'train.early_stopping.mode: craft does not know which way {rule.metric!r} improves; set mode = "min" or "max"'])


def check_accumulation(exp: Experiment, data) -> None:
    """``train.accum_steps`` must split each batch this rank reads into equal micro-batches: found when
    the data is built, before a run folder is written, not at the first step."""
    n, size = exp.train.accum_steps, getattr(data, "batch_size", None)
    if n == 1 or not isinstance(size, int) or size % n == 0:
        return
    given = getattr(exp.data.config, "batch_size", size)
    batch = f"data.batch_size = {size}" if size == given else f"a batch of {size} (this rank's share of data.batch_size = {given})"
    raise ConfigError([
        f"train.accum_steps: {n} does not split {batch} into equal micro-batches; "
        f"make data.batch_size a multiple of {n * (given // size)} or change train.accum_steps"
    ])


def batchnorm_note(exp: Experiment, model: torch.nn.Module) -> list[str]:
    """A note when ``train.accum_steps`` splits the batch of a model with BatchNorm: each micro-batch is
    normalised by its own statistics, so the step is not the whole batch's (the README's equality)."""
    if exp.train.accum_steps == 1 or not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return []
    micro = exp.data.config.batch_size // exp.train.accum_steps if hasattr(exp.data.config, "batch_size") else "its"
    return [
        f"note: train.accum_steps = {exp.train.accum_steps} with BatchNorm: each micro-batch of {micro} is normalised "
        f"by its own statistics, so the step differs from one on the whole batch (GroupNorm or LayerNorm do not)"
    ]


def model_notes(exp: Experiment, model: torch.nn.Module, data) -> list[str]:
    """What a run says of its model before the first step: ``batchnorm_note``, and a warning when the model's
    context (``model.block_size``) is longer than the data's sequences: its later positions never train, and
    ``craft generate`` reads them once a text is that long."""
    notes = batchnorm_note(exp, model)
    want, have = getattr(model, "block_size", None), getattr(data, "block_size", None)
    if isinstance(want, int) and isinstance(have, int) and want > have:
        notes.append(
            f"warning: model.block_size = {want} but the data's sequences have {have} tokens: positions {have} to "
            f"{want - 1} never train, and craft generate reads them past {have} tokens; remove model.block_size "
            f"to take it from the data, or raise the data's block_size"
        )
    return notes
