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

The sweep runs the same loop as a run (``craft.loop.fit``), its step the
ensemble step: Ctrl-C/SIGTERM stops it with a checkpoint of every member,
``--resume`` continues the whole sweep, and ``train.on_nonfinite`` acts per
member (``"stop"``: the member is frozen at its last finite state, ``"skip"``:
its non-finite updates are skipped) while the others go on.

The run folder::

    runs/NAME/config.toml          the sweep as written
    runs/NAME/checkpoints/         the whole sweep (stacked states), for --resume
    runs/NAME/metrics.jsonl        every member's events, with "member" and "hparams"
    runs/NAME/members/003/         member 3 as an ordinary run folder (config.toml,
                                   metrics.jsonl, loss.png, tokenizer.json or classes.json
                                   from the start; checkpoints/ at the end): evaluate it,
                                   plot it, or resume it alone
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import attrs
import torch
from torch.utils import _pytree as pytree

from craft import checkpoint, hooks, init_from
from craft.checks import check_accumulation, check_components, check_sweep_train
from craft.config import SWEEPABLE, Experiment, build, dumps, to_dict
from craft.ensemble import choose_strategy, make_ensemble_step, stack_states, unstack_state
from craft.logging import MetricsLog, plot_quietly, progress_bar, truncate_metrics
from craft.loop import Progress, chain, due, every, fit, when
from craft.optim import Transform, inject_hyperparams, set_hyperparams
from craft.parts import (
    build_data, build_optimizer, build_parts, evaluate_batches, fit_schedule, fit_to_data, learning_rate, measured,
    to_device, trainable_names,
)
from craft.rundir import (
    CHECKPOINTS, CONFIG_FILE, Interrupted, RunError, check_members_not_ahead, check_run_dir, checkpoint_payload, config_line,
    fresh_name, claimed, prepare_run_dir, save_checkpoint, start_or_resume, write_atomic, write_data_files,
)
from craft.other_data import check_same_data_files
from craft.runfolder import MEMBERS_DIR
from craft.step import TrainState, init_state, make_eval_step
from craft.sweep_logs import MemberLogs, evaluate_members, log_members
from craft.unreadable import UnreadableBatch, data_summary, one_class_warning, read_or_raise, remember_in, saved_after_unreadable
from craft.words import plural


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


def sweep_transform(exp: Experiment, names: list[str]) -> Transform:
    """The experiment's optimizer and schedule (``parts.build_optimizer`` over the parameter ``names``),
    the swept values held as tensors in its state."""
    config = exp.optim.config
    # seeds alone sweep no value: the learning rate is held in the state all the same, one state layout for every sweep
    swept = {SWEEPABLE[k]: v[0] for k, v in exp.sweep.values.items()} or {"learning_rate": exp.optim.lr}
    if "weight_decay" in swept and "weight_decay" not in attrs.fields_dict(type(config)):
        raise RunError(f"sweep.optim.weight_decay: optimizer {exp.optim.kind!r} has no weight_decay option")

    def factory(learning_rate: Any = exp.optim.lr, **options: Any) -> Transform:
        schedule = build(exp.schedule, learning_rate, total_steps=exp.train.steps)
        return build_optimizer(exp, schedule, names, **options)

    return inject_hyperparams(factory, **swept)


def stacked_start(exp: Experiment, team: list[Member], tx: Transform, val_data, weights: Path | None = None, data=None):
    """Every member's initial state (its own seed, its swept values) stacked, with the shared model and task, and
    what ``train.init_from`` loaded; each member's model first meets a val batch, as a run's does
    (``check_components``: a lazy model takes its shapes), then gets the ``weights`` (``craft.init_from``, checked
    against the train ``data``'s tokenizer and classes), every member the same ones."""
    states, model, weights = [], None, init_from.weights_at(weights)  # read once, for every member
    for m in team:
        parts = build_parts(member_experiment(exp, m))  # the member's own initial weights
        check_components(exp, parts, val_data)
        # every member the same weights; a tensor init_skip leaves keeps the member's seed's init
        loaded = init_from.load_into(parts.model, weights, exp.train.init_skip, exp.model.kind, data)
        model = model or parts.model  # the first member's module serves all
        state = init_state(parts.model, tx, seed=m.seed)
        swept = {SWEEPABLE[k]: v for k, v in m.values.items()}
        states.append(state._replace(opt_state=set_hyperparams(state.opt_state, **swept)))
    return model, measured(parts, val_data), stack_states(states), loaded


def how_members_run(model, device) -> str:
    """The sweep's first line, in words: the strategy ``make_ensemble_step`` picks for the model on the device."""
    if choose_strategy(model, device) == "sequential":
        return "one ensemble step, each member in turn (convolutions on the CPU)"
    return "one vmapped step"


def _select(keep: torch.Tensor, new: Any, old: Any) -> Any:
    """Per member: ``new``'s leaves where ``keep`` (shape ``(K,)``), else ``old``'s."""
    return pytree.tree_map(lambda n, o: torch.where(keep.view(-1, *[1] * (n.ndim - 1)), n, o), new, old)


def guarded(step, on_nonfinite: str):
    """The ensemble step on ``(stacked_state, alive)``, where a non-finite member keeps its state.

    ``"skip"``: that step's update is dropped for the member; ``"stop"``: the
    member is frozen from then on (``alive`` false). Chosen on device: no sync.
    """

    def guarded_step(carry, batch):
        state, alive = carry
        new, metrics = step(state, batch)
        finite = torch.isfinite(metrics["loss"]) & torch.isfinite(metrics["grad_norm"])
        keep = finite & alive
        kept = _select(keep, new[:3], state[:3])
        alive = alive & finite if on_nonfinite == "stop" else alive
        return (TrainState(*kept, new.step, new.rng), alive), metrics

    return guarded_step


def train_sweep(exp: Experiment, *, resume: bool = False, overwrite: bool = False, echo=print) -> Path:
    """Train every member of ``exp.sweep``; returns the run folder (see the module docstring)."""
    check_sweep_train(exp)
    exp, note = fresh_name(exp, resume=resume, overwrite=overwrite)
    if note:
        echo(note)
    run_dir = check_run_dir(exp, resume=resume, overwrite=overwrite, echo=echo)
    weights = init_from.source(exp.train, run_dir, resume)  # as a run: checked before anything is read or made
    if resume:
        check_members_not_ahead(run_dir, run_dir / MEMBERS_DIR)
    train_data, val_data = build_data(exp, "train"), build_data(exp, "val")
    check_accumulation(exp, train_data)
    if resume:  # the members' vocabulary and classes, as a run checks its own
        for folder in sorted((run_dir / MEMBERS_DIR).glob("[0-9]*"))[:1]:
            check_same_data_files(folder, train_data)
    exp, notes = fit_schedule(fit_to_data(exp, train_data))
    for note in notes:
        echo(note)
    team = members(exp)
    tx = sweep_transform(exp, trainable_names(build_parts(member_experiment(exp, team[0])).model))
    model, parts, state, loaded = stacked_start(exp, team, tx, val_data, weights, train_data)
    with claimed(exp, resume=resume, overwrite=overwrite, echo=echo) as (exp, run_dir):  # taken meanwhile: the next name
        prepare_run_dir(run_dir, overwrite=overwrite)
        alive = torch.ones(len(team), dtype=torch.bool)
        restore = lambda saved, template: (checkpoint.state_from_dict(saved, template[0]), template[1])  # noqa: E731
        start = start_or_resume(run_dir, to_dict(exp), (state, alive), resume=resume, main=True, echo=echo, restore=restore)
        if start.payload is not None:
            train_data.load_state_dict(start.payload["data"])
            start = start._replace(state=(start.state[0], torch.tensor(start.payload["progress"]["alive"])))
        write_atomic(run_dir / CONFIG_FILE, dumps(exp))
        first = f"sweep: {plural(len(team), 'member')}, {how_members_run(model, parts.device)}"
        said = [config_line(run_dir), first, *loaded, *data_summary(train_data, val_data, exp.train.eval_batches), *one_class_warning(exp, train_data)]
        for line in said:  # as a run says
            echo(line)
        member_dirs = [run_dir / MEMBERS_DIR / f"{m.index:03d}" for m in team]
        for m, folder in zip(team, member_dirs):  # each an ordinary run folder from the start (Ctrl-C included)
            prepare_run_dir(folder, overwrite=False)
            truncate_metrics(folder, int(start.state[0].step[0]))
            write_atomic(folder / CONFIG_FILE, dumps(alone(exp, m, folder)))
            write_data_files(folder, train_data)
        logs = MemberLogs(team, [MetricsLog(run_dir)] + [MetricsLog(d) for d in member_dirs])
        try:
            progress = _fit_sweep(exp, model, parts, tx, start, run_dir, (train_data, val_data), logs)
        finally:  # on every exit, Ctrl-C included, as a run: the curves so far, the sweep's and each member's
            for folder in (run_dir, *member_dirs):
                plot_quietly(folder, echo)
        _finish(exp, team, member_dirs, progress, train_data.state_dict(), echo)
    return run_dir


def _fit_sweep(exp: Experiment, model, parts, tx: Transform, start, run_dir: Path, data, logs: MemberLogs) -> Progress:
    """The loop of a sweep: the guarded ensemble step and the sweep's hooks."""
    cfg, (train_data, val_data), task, device = exp.train, data, parts.task, parts.device
    common = dict(inputs=task.inputs, precision=cfg.precision, compile=cfg.compile)
    ensemble_step = make_ensemble_step(model, task.loss, tx, accum_steps=cfg.accum_steps, weight=task.weight, **common)
    # vmap runs CPU flash attention member by member, as expected here: torch's multi-line note on it is no news to the user
    warnings.filterwarnings("ignore", "There is a performance drop because we have not yet implemented the batching rule")
    step = guarded(ensemble_step, cfg.on_nonfinite)
    eval_step = make_eval_step(model, task.loss, **common)
    elapsed = hooks.clock(start.progress["elapsed"])
    first = int(start.state[0].step[0])
    bar = progress_bar(cfg.steps, first, compiling=cfg.compile)

    def save(p: Progress) -> Path:
        alive, window = p.state[1].tolist(), hooks.window_state(p)
        progress = {"elapsed": elapsed(), "best": None, "bad_evals": 0, "alive": alive, "window": window}
        path = checkpoint.step_path(run_dir / CHECKPOINTS, p.step)
        save_checkpoint(path, checkpoint_payload(p.state[0], train_data.state_dict(), progress, to_dict(exp)))
        checkpoint.prune(run_dir / CHECKPOINTS, cfg.keep_checkpoints)
        return path

    run_eval = lambda state: evaluate_batches(eval_step, state, val_data, device, task, cfg.eval_batches)  # noqa: E731
    rates = [learning_rate(member_experiment(exp, m)) for m in logs.team]
    saving = lambda p: due(p, cfg.checkpoint_every or cfg.eval_every) or due(p, cfg.eval_every) or p.stop is not None  # noqa: E731
    flag = hooks.SignalFlag()
    progress = Progress(start.state, first, cfg.steps, last_good=start.path, window=time.perf_counter())
    progress = hooks.restore_window(progress, start.progress.get("window"), device)  # the log window's steps so far
    hook = chain(
        hooks.advance(bar),
        hooks.count_nonfinite,
        hooks.accumulate,
        every(cfg.log_every, log_members(logs, task.summarize, bar, elapsed, rates)),
        hooks.stop_on_signal(flag),
        when(saving, hooks.untimed(hooks.checkpoint(save))),
        every(cfg.eval_every, hooks.untimed(evaluate_members(run_eval, logs, elapsed))),
        remember_in(latest := [progress]),  # the last finished step: saved if a batch cannot be read
    )
    try:
        with flag.installed():
            progress = fit(progress, read_or_raise(train_data), lambda carry, batch: step(carry, to_device(batch, device)), hook)
    except UnreadableBatch as e:  # a frozen or skipping member keeps a finite state: the sweep's state always saves
        raise saved_after_unreadable(e.__cause__, latest[0], exp, run_dir, save) from None
    finally:
        bar.close()
        logs.close()
    if progress.stop == "signal":
        raise Interrupted(progress.step, progress.last_good)
    return progress


def _finish(exp: Experiment, team: list[Member], member_dirs: list[Path], progress: Progress, data_state, echo) -> None:
    """Write each member's run folder (never a non-finite state), say which members stopped, and which is best."""
    state, bad = progress.state[0], [0] * len(team) if progress.nonfinite is None else progress.nonfinite.tolist()
    first = [-1] * len(team) if progress.first_nonfinite is None else progress.first_nonfinite.tolist()
    for m, folder in zip(team, member_dirs):
        member = unstack_state(state, m.index)
        if bad[m.index]:
            what = "was frozen at its last finite state" if exp.train.on_nonfinite == "stop" else f"skipped {bad[m.index]} update(s)"
            echo(f"member {m.index} ({m.describe()}): non-finite loss or gradient norm from step {first[m.index]}; it {what}")
        if not all(torch.isfinite(t).all() for t in member.params.values()):
            echo(f"member {m.index}: parameters are not finite; no checkpoint written for it")
            continue
        _save_member(folder, alone(exp, m, folder), member, data_state)
    last_val = progress.val or [{} for _ in team]
    best = min(range(len(team)), key=lambda i: _loss_key(last_val[i]))
    echo(f"best member {best} ({team[best].describe()}): " + "  ".join(f"val {k} {v:.4f}" for k, v in last_val[best].items()))
    echo(f"its run folder: {member_dirs[best]}")


def alone(exp: Experiment, member: Member, folder: Path) -> Experiment:
    """The member's experiment as a run of its own in ``folder`` (where ``craft train FOLDER --resume`` continues it)."""
    return attrs.evolve(member_experiment(exp, member), name=folder.name, out_dir=str(folder.parent))


def _loss_key(metrics: dict[str, float]) -> float:
    loss = metrics.get("loss", math.inf)
    return loss if math.isfinite(loss) else math.inf


def _save_member(folder: Path, exp: Experiment, state: TrainState, data_state: dict[str, Any]) -> Path:
    """``state`` written as a checkpoint of ``exp``, in the member's run folder (its config.toml written at the start)."""
    inner = state._replace(opt_state=state.opt_state.inner)  # the plain optimizer's state, as the member builds it
    progress = {"elapsed": 0.0, "best": None, "bad_evals": 0}
    path = checkpoint.step_path(folder / CHECKPOINTS, int(state.step))
    return save_checkpoint(path, checkpoint_payload(inner, data_state, progress, to_dict(exp)))
