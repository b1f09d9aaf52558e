"""Sweeps: every member of a ``[sweep]`` trained in one process, through one vmapped step.

::

    [sweep]
    "optim.lr" = [1e-4, 3e-4, 1e-3]     # or --sweep.optim.lr=[1e-4,3e-4,1e-3]
    seeds = 2                           # seed, seed + 1

trains 6 members: every combination of the value lists, each with every seed.
Member ``i`` is the experiment ``member_experiment(exp, members(exp)[i])``
(the sweep's values set, ``sweep`` removed), except that all members read the
training batches in the order of the experiment's own ``seed``: a member's seed
sets its initial weights and dropout. Only values that live in the optimizer
state can differ (``craft.config.SWEEPABLE``), so one compiled step serves all.

The run folder::

    runs/NAME/config.toml          the sweep as written
    runs/NAME/metrics.jsonl        every member's events, with "member" and "hparams"
    runs/NAME/members/003/         member 3 as an ordinary run folder (config.toml,
                                   metrics.jsonl, checkpoints/, loss.png): evaluate it,
                                   plot it, or resume it alone
"""

from __future__ import annotations

import itertools
import math
import random
import time
from pathlib import Path
from typing import Any, NamedTuple

import attrs
import torch

from craft import checkpoint
from craft.config import SWEEPABLE, Experiment, FunctionConfig, build, dumps, to_dict
from craft.ensemble import make_ensemble_step, stack_states, unstack_state
from craft.logging import MetricsLog, plot_metrics, progress_bar
from craft.optim import Transform, inject_hyperparams, set_hyperparams
from craft.parts import build_data, build_parts, evaluate_batches, fit_to_data, to_device
from craft.rundir import CONFIG_FILE, RunError, check_run_dir, prepare_run_dir
from craft.step import TrainState, init_state, make_eval_step

MEMBERS_DIR = "members"


class Member(NamedTuple):
    index: int
    seed: int
    values: dict[str, float]  # "optim.lr" -> value, for the swept keys

    def hparams(self) -> dict[str, float | int]:
        return {**self.values, "seed": self.seed}

    def describe(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.hparams().items())


def members(exp: Experiment) -> list[Member]:
    """Every combination of the sweep's value lists (in key order), each with each seed."""
    if exp.sweep is None:
        raise ValueError(f"experiment {exp.name!r} has no [sweep] section")
    keys = list(exp.sweep.values)
    grid = itertools.product(*(exp.sweep.values[k] for k in keys), range(exp.sweep.seeds))
    return [Member(i, exp.seed + combo[-1], dict(zip(keys, combo[:-1]))) for i, combo in enumerate(grid)]


def member_experiment(exp: Experiment, member: Member) -> Experiment:
    """The experiment member ``member`` trains: its values set, its seed, no sweep."""
    optim = exp.optim
    if "optim.lr" in member.values:
        optim = attrs.evolve(optim, lr=member.values["optim.lr"])
    if "optim.weight_decay" in member.values:
        optim = attrs.evolve(optim, config=attrs.evolve(optim.config, weight_decay=member.values["optim.weight_decay"]))
    return attrs.evolve(exp, optim=optim, seed=member.seed, sweep=None)


def sweep_transform(exp: Experiment) -> Transform:
    """The experiment's optimizer and schedule, the swept values held as tensors in its state."""
    config = exp.optim.config
    swept = {SWEEPABLE[k]: v[0] for k, v in exp.sweep.values.items()}
    if "weight_decay" in swept and not (
        isinstance(config, FunctionConfig) and "weight_decay" in attrs.fields_dict(type(config))
    ):
        raise RunError(f"sweep.optim.weight_decay: optimizer {exp.optim.kind!r} has no weight_decay option")
    fields = {a.name: getattr(config, a.name) for a in attrs.fields(type(config))} if isinstance(config, FunctionConfig) else None

    def factory(learning_rate: Any = exp.optim.lr, **options: Any) -> Transform:
        schedule = build(exp.schedule, learning_rate, total_steps=exp.train.steps)
        if fields is None:
            return build(exp.optim, schedule)
        return type(config).entry(schedule, **{**fields, **options})

    return inject_hyperparams(factory, **swept)


def train_sweep(exp: Experiment, *, resume: bool = False, overwrite: bool = False, echo=print) -> Path:
    """Train every member of ``exp.sweep``; returns the run folder (see the module docstring)."""
    if resume:
        raise RunError("a sweep cannot be resumed yet; rerun it with --overwrite, or resume one member's folder")
    if exp.train.early_stopping is not None:
        raise RunError("train.early_stopping does not apply to a sweep: members would stop at different steps")
    run_dir = check_run_dir(exp, resume=False, overwrite=overwrite)
    train_data, val_data = build_data(exp, "train"), build_data(exp, "val")
    exp = fit_to_data(exp, train_data)
    cfg, team = exp.train, members(exp)
    tx = sweep_transform(exp)
    states, model = [], None
    for m in team:
        parts = build_parts(member_experiment(exp, m))  # the member's own initial weights
        model = model or parts.model
        state = init_state(parts.model, tx, seed=m.seed)
        swept = {SWEEPABLE[k]: v for k, v in m.values.items()}
        states.append(state._replace(opt_state=set_hyperparams(state.opt_state, **swept)))
    state = stack_states(states)
    task, device = parts.task, parts.device
    prepare_run_dir(run_dir, overwrite=overwrite)
    text = dumps(exp)
    (run_dir / CONFIG_FILE).write_text(text, encoding="utf-8")
    echo(text)
    echo(f"sweep: {len(team)} members, one vmapped step")

    common = dict(inputs=task.inputs, precision=cfg.precision, compile=cfg.compile)
    train_step = make_ensemble_step(model, task.loss, tx, accum_steps=cfg.accum_steps, **common)
    eval_step = make_eval_step(model, task.loss, **common)
    member_dirs = [run_dir / MEMBERS_DIR / f"{m.index:03d}" for m in team]
    logs = [MetricsLog(run_dir)] + [MetricsLog(prepare_run_dir(d, overwrite=False)) for d in member_dirs]
    start_time = time.perf_counter()
    last_val: list[dict[str, float]] = [{} for _ in team]

    def write(step: int, split: str, i: int, metrics: dict[str, float], **extra: Any) -> None:
        elapsed = time.perf_counter() - start_time
        logs[0].write(step, split, metrics, elapsed, member=i, hparams=team[i].hparams(), **extra)
        logs[i + 1].write(step, split, metrics, elapsed, **extra)

    bar = progress_bar(cfg.steps, 0)
    try:
        for step in range(1, cfg.steps + 1):
            batch = next(train_data)
            state, metrics = train_step(state, to_device(batch, device))
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                values = {k: v.tolist() for k, v in metrics.items()}  # the only host sync
                for i in range(len(team)):
                    write(step, "train", i, task.summarize({k: v[i] for k, v in values.items()}))
                finite = [v for v in values["loss"] if math.isfinite(v)]
                bar.set_postfix(best_loss=f"{min(finite):.4f}" if finite else "nan", refresh=False)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                for i in range(len(team)):
                    last_val[i] = evaluate_batches(
                        eval_step, unstack_state(state, i), val_data, device, task, cfg.eval_batches
                    )
                    write(step, "val", i, last_val[i])
    finally:
        bar.close()
        for log in logs:
            log.close()

    for m, folder in zip(team, member_dirs):
        alone = attrs.evolve(member_experiment(exp, m), name=folder.name, out_dir=str(folder.parent))  # resumable there
        _save_member(folder, alone, unstack_state(state, m.index), train_data.state_dict())
        plot_metrics(folder)
    best = min(range(len(team)), key=lambda i: _loss_key(last_val[i]))
    echo(f"best member {best} ({team[best].describe()}): " + "  ".join(f"val {k} {v:.4f}" for k, v in last_val[best].items()))
    echo(f"its run folder: {member_dirs[best]}")
    return run_dir


def _loss_key(metrics: dict[str, float]) -> float:
    loss = metrics.get("loss", math.inf)
    return loss if math.isfinite(loss) else math.inf


def _save_member(folder: Path, exp: Experiment, state: TrainState, data_state: dict[str, Any]) -> Path:
    """``state`` written as a checkpoint of ``exp``, in an ordinary run folder."""
    inner = state._replace(opt_state=state.opt_state.inner)  # the plain optimizer's state, as the member builds it
    (folder / CONFIG_FILE).write_text(dumps(exp), encoding="utf-8")
    payload = {
        "state": checkpoint.state_to_dict(inner),
        "data": data_state,
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "progress": {"elapsed": 0.0, "best": None, "bad_evals": 0},
        "config": to_dict(exp),
    }
    return checkpoint.save(checkpoint.step_path(folder / "checkpoints", int(state.step)), payload)

