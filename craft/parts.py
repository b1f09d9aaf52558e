"""Building an experiment's parts from its config: device, model, task, optimizer, data, and checks that they fit.

Every function here is usable on its own from a research script::

    train_data = build_data(exp, "train")
    exp = fit_to_data(exp, train_data)
    model, task, optimizer, device = build_parts(exp)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import attrs
import torch
from torch import nn

from craft import distributed
from craft.checks import FROM_DATA, check_fit, need_data_keys
from craft.config import Component, ConfigError, Experiment, build, build_problem
from craft.data.text_units import text_units
from craft.distributed import Replicas
from craft.optim import (
    EmaState, Group, Transform, chain, clip_trained, ema, find_state, param_groups,
)
from craft.rundir import RunError
from craft.step import TrainState
from craft.tasks import Task, mean_metrics, with_text_units
from craft.words import plural

SINGLE = distributed.single()


class Parts(NamedTuple):
    """What a run trains: the model (on ``device``), its task, and the optimizer (a ``craft.optim.Transform``)."""

    model: nn.Module
    task: Task
    optimizer: Any
    device: torch.device


def resolve_device(name: str, replicas: Replicas = SINGLE) -> torch.device:
    """``"auto"``: CUDA when present, else the CPU. Under torchrun, the device ``LOCAL_RANK`` picks."""
    if replicas.device is not None:
        if name not in ("auto", replicas.device.type):
            raise RunError(
                f"train.device = {name!r} but torchrun's process group runs on {replicas.device.type}; "
                'use train.device = "auto"'
            )
        return replicas.device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"train.device = {name!r} but no CUDA device is available; use \"auto\" or \"cpu\"")
    return device


def build_parts(exp: Experiment, replicas: Replicas = SINGLE) -> Parts:
    """Model (initialised from ``exp.seed``, on the device), task and optimizer."""
    device = resolve_device(exp.train.device, replicas)
    need_data_keys(exp)
    buildable(exp, "model", "schedule", "optim", "task")
    torch.manual_seed(exp.seed)
    model = made(exp, "model", _built("model", lambda: build(exp.model)), "an nn.Module").to(device)
    schedule = _built("schedule", lambda: build(exp.schedule, exp.optim.lr, total_steps=exp.train.steps))
    optimizer = _built("optim", lambda: build_optimizer(exp, schedule, trainable_names(model)))
    return Parts(model, made(exp, "task", build(exp.task), "a craft.tasks.Task"), optimizer, device)


def measured(parts: Parts, data) -> Parts:
    """``parts`` whose task also counts the characters or bytes behind its scored tokens, from ``data``'s
    tokenizer (``craft.data.text_units``), so a language model reports ``bpc`` or ``bpb`` of the text it read."""
    units = text_units(getattr(data, "tokenizer", None), getattr(data, "vocab_size", None) or 0)
    if units is None:
        return parts
    return parts._replace(task=with_text_units(parts.task, units[0], units[1].to(parts.device)))


def buildable(exp: Experiment, *sections: str) -> None:
    """A ``ConfigError`` when a section's config cannot be built as a run builds it (no ``build``, or one
    that does not take the run's arguments: ``craft.config.build_problem``), before anything is built."""
    problems = [f"{s}.kind: {p}" for s in sections if (p := build_problem(s, getattr(exp, s).config)) is not None]
    if problems:
        raise ConfigError(problems)


MADE = {
    "model": lambda obj: isinstance(obj, nn.Module),
    "task": lambda obj: all(hasattr(obj, k) for k in ("inputs", "loss")),
    "optim": lambda obj: all(callable(getattr(obj, k, None)) for k in ("init", "update")),
}
"""What a section's ``build()`` must return, as a test of the object."""


def made(exp: Experiment, section: str, obj: Any, what: str) -> Any:
    """``obj``, what ``[section]``'s ``build()`` returned, or a ``RunError`` saying it is not ``what``."""
    if not MADE[section](obj):
        entry = getattr(getattr(exp, section).config, "entry", None)  # a function entry (FunctionConfig)
        maker = f"{entry.__name__}()" if entry is not None else "build()"
        raise RunError(
            f"{section}.kind = {getattr(exp, section).kind!r}: {maker} returned {type(obj).__name__}, not {what}; "
            f"return one from {maker}"
        )
    return obj


def learning_rate(exp: Experiment) -> Callable[[int], float]:
    """``step -> lr``: the schedule's learning rate at an update count (the default group's, with groups)."""
    schedule = build(exp.schedule, exp.optim.lr, total_steps=exp.train.steps)
    return lambda step: float(schedule(torch.tensor(step)))


def trainable_names(model: nn.Module) -> list[str]:
    """The names of ``model``'s parameters that train (``requires_grad``): the keys of ``TrainState.params``."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def build_optimizer(exp: Experiment, schedule: Any, names: list[str], **options: Any) -> Transform:
    """``[optim]`` built on ``schedule``, split into ``optim.groups`` over the parameter ``names``,
    with the weights' moving average last when ``train.ema_decay`` is set.

    ``options`` replace options of the optimizer's config (a sweep's injected
    ``weight_decay``). Global-norm clipping (``clip_norm``) stays outside the
    groups, so it sees every gradient that trains, as ``clip_grad_norm_`` does.
    """
    optim, config = exp.optim, exp.optim.config

    def make(mask: Any = None, **group_options: Any) -> Transform:
        given = {**options, **group_options}
        # param_groups passes mask=decay_all with a group's own weight_decay: it decays every parameter it matches.
        everything = {"mask": mask} if mask is not None and takes_mask(config) else {}
        tx = (attrs.evolve(config, **given) if given else config).build(schedule, **everything)
        return made(exp, "optim", tx, "a craft.optim.Transform (init, update)")

    if optim.groups:
        clip = getattr(config, "clip_norm", None)
        if clip is not None:
            config = attrs.evolve(config, clip_norm=None)
        groups = optim_groups(exp)
        try:
            tx = param_groups(make, groups, names)
        except ValueError as e:
            raise ConfigError([f"optim.groups: {e}"]) from None
        tx = chain(clip_trained(clip, groups, names), tx) if clip is not None else tx
    else:
        tx = make()
    return tx if exp.train.ema_decay is None else chain(tx, ema(exp.train.ema_decay))


def optim_groups(exp: Experiment) -> list[Group]:
    """``[[optim.groups]]`` as ``craft.optim.param_groups`` takes them."""
    return [Group(g.match, g.lr_scale, g.weight_decay, g.freeze) for g in exp.optim.groups]


def takes_mask(config: Any) -> bool:
    """Whether the optimizer ``config`` builds takes a weight-decay ``mask`` (every built-in one does)."""
    maker = getattr(type(config), "entry", None) or getattr(config, "build", None)
    try:
        return "mask" in inspect.signature(maker).parameters
    except (TypeError, ValueError):
        return False


def eval_weights(state: TrainState) -> TrainState:
    """``state`` with the weights evaluation reads: their moving average when the optimizer keeps one
    (``train.ema_decay``), else its own."""
    try:
        average = find_state(state.opt_state, EmaState)
    except KeyError:
        return state
    return state._replace(params=dict(average.params))


def _built(section: str, make):
    """``make()``, with a value problem it raises named by its config section."""
    try:
        return make()
    except ConfigError:
        raise
    except ValueError as e:
        raise RunError(f"{section}: {e}") from None


def build_data(exp: Experiment, split: str, replicas: Replicas = SINGLE):
    """The iterator of ``split``; under torchrun, this rank's slice of every global batch."""
    buildable(exp, "data")
    if replicas.active:
        return build(exp.data, split, seed=exp.seed, rank=replicas.rank, world_size=replicas.world_size)
    return build(exp.data, split, seed=exp.seed)


def fit_schedule(exp: Experiment) -> tuple[Experiment, list[str]]:
    """``exp`` with the schedule's length recorded and a warmup that does not fit shortened, and what was said.

    - ``schedule.total_steps`` left unset becomes ``train.steps``: the resolved
      config records it, so a resumed run that trains longer keeps its schedule
      (stretching it is the explicit ``--schedule.total_steps=N``).
    - A warmup as long as the schedule or longer (``--train.steps=30`` of a file
      with ``warmup_steps = 100``) is cut to a tenth of it, with a warning.
    """
    config, steps, notes = exp.schedule.config, exp.train.steps, []
    fields = attrs.fields_dict(type(config))
    if "total_steps" in fields and config.total_steps is None:
        config = attrs.evolve(config, total_steps=steps)
    total = getattr(config, "total_steps", None) or steps
    warmup = getattr(config, "warmup_steps", None)
    if warmup is not None and warmup >= total:
        short = total // 10  # a tenth of the run, and shorter than it (warmup_cosine needs a decay)
        notes.append(
            f"warning: schedule.warmup_steps = {warmup} is not shorter than the run ({plural(total, 'step')}); "
            f"shortened to {short} (set schedule.warmup_ratio to scale the warmup with train.steps)"
        )
        config = attrs.evolve(config, warmup_steps=short)
    if total < steps:  # the rate those steps get is said: a decay to 0 learns nothing more
        lrs = (exp.sweep.values.get("optim.lr") if exp.sweep is not None else None) or [exp.optim.lr]  # a sweep's: each member's
        rates = [learning_rate(attrs.evolve(exp, optim=attrs.evolve(exp.optim, lr=lr), schedule=Component(exp.schedule.kind, config)))
                 for lr in dict.fromkeys(lrs)]
        last, end = [float(r(total)) for r in rates], [float(r(steps - 1)) for r in rates]
        say = lambda rs: ", ".join(f"{r:.3g}" for r in rs) + (" (its members')" if len(rs) > 1 else "")  # noqa: E731
        kept = (f"keep the schedule's last learning rate, {say(last)}{' (nothing is learned in those steps)' if not any(last) else ''}"
                if end == last else f"get {say(last)} to {say(end)}: this schedule goes on past its total_steps")
        notes.append(
            f"train.steps = {steps} runs past schedule.total_steps = {total}: the steps after {total} {kept} "
            f"(--schedule.total_steps={steps} stretches the schedule instead)"
        )
    if config == exp.schedule.config:
        return exp, notes
    return attrs.evolve(exp, schedule=Component(exp.schedule.kind, config)), notes


def fit_to_data(exp: Experiment, data) -> Experiment:
    """``exp`` with the model keys the data decides filled in (``FROM_DATA``), after checking the rest.

    ``num_classes``, ``vocab_size`` and ``block_size`` left unset are the
    data's class count, tokenizer size and sequence length (the resolved
    config then records them, so the run can be rebuilt without the data).
    A ``num_classes`` that differs from the data's, a ``vocab_size`` below
    the tokenizer's and a ``block_size`` below the data's length are errors:
    they would surface as index errors mid-step.
    """
    config = exp.model.config
    if not attrs.has(type(config)):
        return exp
    fields = attrs.fields_dict(type(config))
    keys = [key for key in FROM_DATA if key in fields]
    given = {key: getattr(data, key) for key in keys if getattr(data, key, None) is not None}
    check_fit(config, data, given)
    config = attrs.evolve(config, **{k: v for k, v in given.items() if getattr(config, k) is None})
    unset = [key for key in keys if getattr(config, key) is None]
    if unset:
        key = unset[0]
        raise ConfigError([
            f"model.{key}: not set, and data.kind = {exp.data.kind!r} gives no {FROM_DATA[key]} to take it from; "
            f"set model.{key}"
        ])
    return attrs.evolve(exp, model=Component(exp.model.kind, config))


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    moved = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    finish = getattr(batch, "on_device", None)  # data.augment_on = "device": the batch finishes there
    return moved if finish is None else finish(moved)


def evaluate_batches(
    eval_step,
    state: TrainState,
    batches: Iterable,
    device: torch.device,
    task: Task,
    limit: int | None = None,
    replicas: Replicas = SINGLE,
) -> dict[str, float]:
    """Eval metrics over ``batches`` (at most ``limit``): means weighted by ``task.weight``, then summarized.

    ``limit`` (``train.eval_batches``) takes that many batches spread over the split where the batches
    can (``EvalBatches.limited``), else the first ones. With ``train.ema_decay``, the averaged weights
    are evaluated (``eval_weights``).

    Under torchrun each rank evaluates its shard and the weighted totals are
    summed across ranks, so every rank gets the figures of the whole split.
    """
    metrics, weights, state = [], [], eval_weights(state)
    if limit is not None and callable(getattr(batches, "limited", None)):
        batches, limit = batches.limited(limit), None
    for i, batch in enumerate(batches):
        if limit is not None and i >= limit:
            break
        batch = to_device(batch, device)
        metrics.append(eval_step(state, batch))
        weights.append(task.weight(batch))
    if not metrics:
        raise RunError("the validation split is empty: add validation data (data.val_path) or raise data.val_fraction")
    return task.summarize(mean_metrics(metrics, weights, replicas.sum if replicas.active else None))
