"""The experiment's records: the frozen attrs classes a TOML experiment is read into.

``Experiment`` holds one record per section. The sections that pick a registry
entry are a ``Component`` (``kind`` and its ``Config``), or for ``[optim]`` an
``Optim``, which adds the peak ``lr`` the schedule is built on and the
``[[optim.groups]]``. The other records (``Train``, ``EarlyStopping``,
``Sample``, ``Sweep``) are plain settings; their validators are the checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from craft.config.entries import config_class
from craft.optim import OPTIMIZERS, SCHEDULES
from craft.registry import Registry
from craft.tasks import TASKS, metric_mode
from craft.validators import (
    at_least, between, device_name, each_one_of, not_empty, one_of, only_with, path_component, seed_value,
)


@attrs.frozen
class Component:
    """A registry entry by name (``kind``) and its structured ``config``."""

    kind: str
    config: Any


@attrs.frozen
class OptimGroup:
    """One ``[[optim.groups]]`` table: the parameters whose names match the glob
    ``match`` train with ``lr_scale`` times the learning rate and their own
    ``weight_decay`` (on every parameter of the group, biases and norms included,
    as in a torch parameter group), or not at all (``freeze``: no optimizer state either).
    A parameter belongs to the first group that matches it; the rest train as
    ``[optim]`` says (see ``craft.optim.groups``)."""

    match: str = attrs.field(validator=not_empty)
    lr_scale: float = attrs.field(default=1.0, validator=at_least(0.0))
    weight_decay: float | None = attrs.field(default=None, validator=at_least(0.0))
    freeze: bool = False


DEFAULT_LR = 1e-3
"""``[optim] lr`` where the experiment leaves it out."""


@attrs.frozen
class Optim:
    """The optimizer: ``kind`` and ``config`` as in ``Component``; ``lr`` is the peak
    learning rate the run feeds into the schedule; ``groups`` split the parameters."""

    kind: str
    lr: float
    config: Any
    groups: list[OptimGroup] = attrs.field(factory=list)


def _default(registry: Registry, kind: str) -> Component:
    return Component(kind, config_class(registry[kind])())


def _mode_of(rule) -> str | None:
    """the metric's: 'min' for loss, perplexity and bits, 'max' for accuracy, top5 and exact_match"""
    return metric_mode(rule.metric)


@attrs.frozen
class EarlyStopping:
    """Stop when ``metric`` has not improved (per ``mode``) for ``patience`` evaluations. ``mode`` follows the
    metric when not given (``craft.tasks.metric_mode``: min for a loss, max for an accuracy); a metric whose
    direction craft does not know needs it (None: unknown, refused by ``craft.checks.check_early_stopping``)."""

    metric: str = attrs.field(default="loss", validator=not_empty)
    mode: Literal["min", "max"] | None = attrs.field(default=attrs.Factory(_mode_of, takes_self=True))
    patience: int = attrs.field(default=5, validator=at_least(0))


@attrs.frozen
class Sample:
    """Text sampled from the model after every ``every``-th evaluation, written to the log.

    Needs a text dataset (its tokenizer) and a model that returns next-token
    logits; the options are those of ``craft generate``.
    """

    every: int = attrs.field(default=1, validator=at_least(1))
    prompt: str = attrs.field(default="\n", validator=not_empty)
    max_new_tokens: int = attrs.field(default=200, validator=at_least(1))
    temperature: float = attrs.field(default=0.8, validator=at_least(0.0))
    top_k: int | None = attrs.field(default=None, validator=at_least(1))
    top_p: float | None = attrs.field(default=None, validator=between(0, 1, low_open=True))
    seed: int = attrs.field(default=0, validator=seed_value)


TRACKERS = ("tensorboard", "wandb", "mlflow")
"""``train.loggers`` entries: the trackers of ``craft.trackers``."""


@attrs.frozen
class Train:
    """The loop's settings; ``None`` means off (``eval_batches``: the whole eval set; N: N batches of
    examples spread evenly over it, which ``craft evaluate`` reads too)."""

    steps: int = attrs.field(default=1000, validator=at_least(1))
    eval_every: int = attrs.field(default=200, validator=at_least(1))
    log_every: int = attrs.field(default=20, validator=at_least(1))
    eval_batches: int | None = attrs.field(default=None, validator=at_least(1))
    precision: str = attrs.field(default="fp32", validator=one_of("fp32", "bf16"))
    compile: bool = True
    device: str = attrs.field(default="auto", validator=device_name)
    accum_steps: int = attrs.field(default=1, validator=at_least(1))
    checkpoint_every: int | None = attrs.field(default=None, validator=at_least(1))
    keep_checkpoints: int = attrs.field(default=3, validator=at_least(1))
    early_stopping: EarlyStopping | None = None
    sample: Sample | None = None
    tensorboard: bool = False  # the same as "tensorboard" in loggers
    loggers: list[str] = attrs.field(factory=list, validator=each_one_of(*TRACKERS))  # see craft.trackers
    # Keep an exponential moving average of the weights (decay per step); evaluation,
    # best.pt, `craft evaluate` and `craft generate` then use the averaged weights.
    ema_decay: float | None = attrs.field(default=None, validator=between(0, 1, high_open=True))
    # A NaN/Inf loss or gradient norm: "stop" the run (no checkpoint is written
    # past the last good one), or "skip" the update and count it in the log.
    on_nonfinite: Literal["stop", "skip"] = attrs.field(default="stop", validator=one_of("stop", "skip"))
    # Replay the compiled step as a CUDA graph (torch.compile mode "reduce-overhead"):
    # no per-kernel launch cost. Ignored, with a warning, off CUDA or without compile.
    cuda_graphs: bool = False
    # The device's peak FLOP/s for the logged `mfu`, where craft.mfu.PEAK_FLOPS lacks it.
    peak_flops: float | None = attrs.field(default=None, validator=at_least(1.0))
    # Start from these weights (a run folder, an export folder, a .safetensors or state-dict file): fine-tuning,
    # the optimizer, step and generators fresh (craft.init_from); a resumed run takes its checkpoint instead.
    init_from: str | None = attrs.field(default=None, validator=attrs.validators.optional(not_empty))
    # fnmatch globs of the tensors left at their fresh init (a new head): ["fc.*"].
    init_skip: list[str] = attrs.field(factory=list, validator=only_with("init_from"))


SWEEPABLE = {"optim.lr": "learning_rate", "optim.weight_decay": "weight_decay"}
"""``[sweep]`` keys -> the optimizer argument each one sets; only these can differ between members."""


@attrs.frozen
class Sweep:
    """``[sweep]``: members trained together through one vmapped step (``craft.sweep``).

    Every combination of the ``values`` lists (``"optim.lr" = [1e-4, 1e-3]``),
    each with ``seeds`` seeds (the experiment's ``seed``, ``seed + 1``, ...).
    """

    values: dict[str, list[float]] = attrs.field(factory=dict)
    seeds: int = attrs.field(default=1, validator=at_least(1))


@attrs.frozen
class Experiment:
    """One run, as written in TOML. ``imports`` are modules imported before the
    sections are read, so they can register models, datasets, etc."""

    name: str = attrs.field(validator=path_component)  # the run folder's name under out_dir
    model: Component
    data: Component
    seed: int = attrs.field(default=0, validator=seed_value)
    out_dir: str = "runs"
    imports: list[str] = attrs.field(factory=list)
    task: Component = attrs.field(factory=lambda: _default(TASKS, "classification"))
    optim: Optim = attrs.field(factory=lambda: Optim("adamw", DEFAULT_LR, config_class(OPTIMIZERS["adamw"])()))
    schedule: Component = attrs.field(factory=lambda: _default(SCHEDULES, "constant"))
    train: Train = attrs.field(factory=Train)
    sweep: Sweep | None = None


TABLES = {"train": Train, "train.sample": Sample, "train.early_stopping": EarlyStopping, "optim": Optim,
          "optim.groups": OptimGroup}
"""The experiment's tables by TOML name, other than a component's options (``craft info NAME`` lists their keys)."""


def mode_follows_metric(train: Train, texts: Mapping[str, Any]) -> Train:
    """``train`` with ``early_stopping.mode`` following a metric ``texts`` (overrides) set without a mode: a
    resumed run's ``config.toml`` records the old metric's mode, which would turn an accuracy into a loss."""
    rule = train.early_stopping
    if rule is None or "train.early_stopping.metric" not in texts or "train.early_stopping.mode" in texts:
        return train
    return attrs.evolve(train, early_stopping=attrs.evolve(rule, mode=metric_mode(rule.metric)))
