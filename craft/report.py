"""What a run says on the terminal and in its log's figures: the lines before its first step (``summary``)
and the model FLOPs utilisation figure its train logs carry (``utilisation``, from ``craft.mfu``), and the
lines of its end (``outcome``; ``log_failed``: a run stopped by a failed write to its log)."""

from __future__ import annotations

from pathlib import Path

import torch

from craft import mfu
from craft.hooks import nonfinite_count
from craft.config import Experiment
from craft.distributed import Replicas
from craft.optim.groups import frozen_names
from craft.parts import Parts, optim_groups
from craft.rundir import Interrupted, RunError, config_line
from craft.words import plural


def summary(exp: Experiment, parts: Parts, start, run_dir: Path, batch, replicas: Replicas) -> list[str]:
    """What a run says before its first step: where its config is, the device, the model's size,
    what one step reads (shapes from ``batch``, a validation batch or ``None``), and that the first
    (compiled) step takes a while."""
    frozen = frozen_names(optim_groups(exp), start.state.params) if exp.optim.groups else set()  # freeze = true
    trainable = sum(p.numel() for name, p in start.state.params.items() if name not in frozen)
    total = mfu.parameter_count(parts.model)
    size = getattr(exp.data.config, "batch_size", None)
    per_step = plural(size, "example") if size is not None else "one batch"
    if batch is not None and batch.get("input") is not None and batch["input"].ndim == 2:
        per_step = f"{plural(size * batch['input'].shape[1], 'token')} ({per_step} of {batch['input'].shape[1]})"
    elif batch is not None and "image" in batch and size is not None:
        per_step = f"{plural(size, 'image')} of {'x'.join(map(str, batch['image'].shape[1:]))}"
    threads = f" ({torch.get_num_threads()} threads)" if parts.device.type == "cpu" else ""
    ranks = f" x {replicas.world_size} processes" if replicas.active else ""
    lines = [
        config_line(run_dir),
        f"device {parts.device}{threads}{ranks}; model {exp.model.kind!r}: {total}, {trainable:,} trainable",
        f"{plural(exp.train.steps, 'step')} of {per_step}, from step {int(start.state.step)}",
    ]
    if exp.train.ema_decay is not None:
        lines.append(f"val figures, best.pt and craft evaluate/generate/export use the weights' moving average "
                     f"(train.ema_decay = {exp.train.ema_decay})")
    if exp.train.compile:
        lines.append("compiling the train step (the first step takes a while)")
    return lines


def utilisation(exp: Experiment, parts: Parts, batch):
    """``samples/s -> mfu`` (``craft.mfu``) for examples shaped as ``batch``'s; None where a figure is unknown."""
    tokens = mfu.tokens_per_example(parts.task.inputs(batch)) if batch is not None else None
    per_example = mfu.flops_per_example(parts.model, tokens)
    peak = mfu.peak_flops(parts.device, exp.train.peak_flops)
    return lambda rate: mfu.mfu(rate, per_example, peak)


def log_failed(failure: Exception, saved: Path | None, also: Exception | None = None) -> RunError:
    """The one line of a run stopped by a failed write to ``metrics.jsonl`` (``failure``: the file, the cause,
    the fix): where the run is saved, the step it stopped at (saved on the way out, as on Ctrl-C, its log
    line taken back), or ``also``, the save that failed too, and the last good checkpoint before it."""
    if saved is None:
        where = "no checkpoint was written"
    else:
        where = f"the last good checkpoint is {saved}" if also is not None else f"the run is saved in {saved}"
    return RunError(f"{failure}; saving the run failed too ({also}); {where}" if also is not None else f"{failure}; {where}")


def outcome(progress, cfg, failure: Exception | None, say) -> None:
    """The end of a run's ``fit`` (``cfg``: its ``[train]``), from why it stopped: ``Interrupted`` (a signal), the
    failed log write's ``RunError`` (``failure``), or the early stop said in one line; and how many updates
    ``on_nonfinite = "skip"`` left out."""
    if progress.stop == "signal":
        raise Interrupted(progress.step, progress.last_good)
    if progress.stop == "log":
        raise log_failed(failure, progress.last_good)
    if progress.stop == "early_stopping":
        rule = cfg.early_stopping
        better = "lower" if rule.mode == "min" else "higher"
        say(f"early stopping at step {progress.step}: no {better} {rule.metric} in {plural(rule.patience, 'evaluation')}")
    if skipped := nonfinite_count(progress):  # each was said as it came; the run's end says what they add up to
        every = ": every one, so nothing was learned; lower optim.lr or look for bad data" if skipped >= progress.step else ""
        say(f"warning: {skipped} of {progress.step} updates were skipped as non-finite (train.on_nonfinite = 'skip'){every}")
