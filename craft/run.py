"""Train one experiment: its parts, its run folder, and ``craft.loop.fit`` with the hooks a run uses.

config -> parts (``craft.parts``) -> run folder (``craft.rundir``) -> compiled
steps -> ``fit`` with hooks (log, checkpoint, evaluate, early stopping, sample,
signal stop). A ``[sweep]`` is dispatched to ``craft.sweep``; serving a finished
run is ``craft.trained``. The run folder's contents are listed in ``craft.rundir``.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import attrs
import torch

from craft import checkpoint, compiling, cuda, distributed, hooks, init_from
from craft.config import Experiment, dumps, to_dict
from craft.distributed import Replicas
from craft.logging import MetricsLog, NullLog, check_tensorboard, plot_quietly, progress_bar, read_metrics
from craft.loop import Progress, chain, due, every, fit, when
from craft.report import log_failed, outcome, summary, utilisation
from craft.checks import (
    model_notes, check_accumulation, check_components, check_early_stopping, check_same_data, check_sample,
)
from craft.parts import Parts, build_data, build_parts, evaluate_batches, measured, fit_schedule, fit_to_data, learning_rate, to_device
from craft.rundir import (
    CHECKPOINTS, CONFIG_FILE, Interrupted, RunError, check_run_dir, checkpoint_payload, claimed,
    fresh_name, prepare_run_dir, save_checkpoint, start_or_resume, write_atomic, write_data_files,
)
from craft.step import init_state, make_eval_step, make_train_step
from craft.trackers import check as check_trackers
from craft.trackers import open_tracker
from craft.other_data import check_same_data_files
from craft.trained import sample_text
from craft.unreadable import UnreadableBatch, data_summary, one_class_warning, read_or_raise, remember_in, saved_after_unreadable
from craft.words import plural

__all__ = ["Interrupted", "RunError", "train"]


def train(exp: Experiment, *, resume: bool | str = False, overwrite: bool = False, echo=print) -> Path:
    """Train ``exp``; returns the run folder. ``resume``: True, or the checkpoint to roll back to (``craft.rollback``).

    Launched by torchrun (``WORLD_SIZE > 1``), every process trains one
    data-parallel replica and rank 0 alone writes the run folder; see
    ``craft.distributed``.
    """
    if exp.sweep is not None:  # many members through one vmapped step
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RunError("a [sweep] trains its members in one process; run it without torchrun")
        from craft.sweep import train_sweep

        return train_sweep(exp, resume=resume, overwrite=overwrite, echo=echo)
    replicas = distributed.from_env()
    finished = False
    try:
        run_dir = _train(exp, resume, overwrite, echo if replicas.is_main else _quiet, replicas)
        finished = True
        return run_dir
    except RuntimeError as e:
        if replicas.active and distributed.is_collective_failure(e):
            # Another rank died (its own error is printed by that rank): say so in one line.
            raise RunError(
                f"rank {replicas.rank}: stopped because another rank failed or left (its error is above); "
                "set CRAFT_DEBUG=1 for the collective's own message"
            ) from e
        raise
    finally:
        distributed.close(replicas, wait=finished)


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def open_trackers(exp: Experiment, run_dir: Path, start_step: int = 0) -> list:
    """The trackers ``train.loggers`` (and ``train.tensorboard``) ask for, logging to ``run_dir`` (``craft.trackers``),
    resumed at ``start_step``."""
    names = list(dict.fromkeys([*(["tensorboard"] if exp.train.tensorboard else []), *exp.train.loggers]))
    return [open_tracker(name, run_dir, exp.name, to_dict(exp), start_step) for name in names]


def rank_zeros_name(exp: Experiment, replicas: Replicas) -> Experiment:
    """Under torchrun, the run name rank 0 chose (ranks that looked after rank 0 made its folder would pick another)."""
    if not replicas.active:
        return exp
    import torch.distributed as dist

    names = [exp.name]
    dist.broadcast_object_list(names, src=0)
    return attrs.evolve(exp, name=names[0])


def _train(exp: Experiment, resume: bool | str, overwrite: bool, echo, replicas: Replicas) -> Path:
    if exp.train.tensorboard:
        check_tensorboard()  # a missing tracker is said before anything is built or written
    check_trackers(exp.train.loggers)
    exp, note = fresh_name(exp, resume=resume, overwrite=overwrite)
    exp = rank_zeros_name(exp, replicas)
    if note:
        echo(note)
    run_dir = check_run_dir(exp, resume=resume, overwrite=overwrite, echo=echo)
    weights = init_from.source(exp.train, run_dir, resume)  # a typo is said before the data is read or a folder made
    # Everything that can fail on the config is built before an old run is replaced.
    train_data, val_data = build_data(exp, "train", replicas), build_data(exp, "val", replicas)
    check_same_data(train_data, replicas)
    if resume:  # before what the data sets in the model (vocab_size), whose message would blame the config
        check_same_data_files(run_dir, train_data)
    check_accumulation(exp, train_data)
    exp, notes = fit_schedule(fit_to_data(exp, train_data))
    for note in notes:
        echo(note)
    parts = measured(build_parts(exp, replicas), train_data)
    check_early_stopping(exp, parts.task)
    tokenizer = check_sample(exp, train_data)
    first_batch = check_components(exp, parts, val_data)
    # After the first batch has shaped a lazy model; before init_state, which takes the module's tensors.
    loaded = init_from.load_into(parts.model, weights, exp.train.init_skip, exp.model.kind, train_data)
    held = claimed(exp, resume=resume, overwrite=overwrite, echo=echo) if replicas.is_main else contextlib.nullcontext((exp, run_dir))
    with held as (exp, run_dir):  # a name another run took meanwhile: the next free one
        exp = rank_zeros_name(exp, replicas)
        run_dir = Path(exp.out_dir) / exp.name
        if replicas.is_main:
            prepare_run_dir(run_dir, overwrite=overwrite)
        replicas.barrier()  # the others read the folder rank 0 prepares
        start = start_or_resume(
            run_dir, to_dict(exp), init_state(parts.model, parts.optimizer, seed=exp.seed),
            resume=resume, main=replicas.is_main, echo=echo,
        )
        if resume and int(start.state.step) >= exp.train.steps:  # the loop still ends it as a run ends (metrics, plot)
            echo(f"{run_dir} already finished its {plural(exp.train.steps, 'step')}; to train it further, raise --train.steps")
        if start.payload is not None:
            train_data.load_state_dict(start.payload["data"])
        # Replicas start equal: every rank built the same state from the same seed;
        # copy rank 0's anyway, then check (a rank that read another checkpoint fails here).
        replicas.broadcast(start.state)
        replicas.check_same(start.state, "the replicas' initial states")
        text = dumps(exp)
        if replicas.is_main:
            write_atomic(run_dir / CONFIG_FILE, text)
            write_data_files(run_dir, train_data)
        said = summary(exp, parts, start, run_dir, first_batch, replicas) + loaded + data_summary(train_data, val_data, exp.train.eval_batches)
        for line in said + one_class_warning(exp, train_data) + model_notes(exp, parts.model, train_data):
            echo(line)
        return _fit(exp, parts, start, run_dir, (train_data, val_data, first_batch), tokenizer, replicas)




def _fit(exp: Experiment, parts: Parts, start, run_dir: Path, data, tokenizer, replicas: Replicas) -> Path:
    """Compile the steps, run ``fit`` with the run's hooks, and turn its stop reason into the outcome."""
    cfg, (train_data, val_data, first_batch), main = exp.train, data, replicas.is_main
    cuda.fast_matmuls(parts.device)
    common = dict(inputs=parts.task.inputs, precision=cfg.precision, compile=cfg.compile)
    eval_step = make_eval_step(parts.model, parts.task.loss, **common)
    log = MetricsLog(run_dir, trackers=open_trackers(exp, run_dir, int(start.state.step))) if main else NullLog()
    step = int(start.state.step)
    bar = progress_bar(cfg.steps, step, disable=not main, compiling=cfg.compile)
    say = bar.write if main else _quiet
    compile = cuda.step_compile(cfg.compile, cfg.cuda_graphs, parts.device, say)
    train_step = make_train_step(
        parts.model, parts.task.loss, parts.optimizer, accum_steps=cfg.accum_steps, weight=parts.task.weight,
        donate=not compiling.uses_cuda_graphs(compile),  # a CUDA graph replay cannot donate
        skip_nonfinite=cfg.on_nonfinite == "skip", cross_replica_mean=replicas.mean(), **{**common, "compile": compile}
    )
    elapsed = hooks.clock(start.progress["elapsed"])
    skipped = start.progress.get("skipped", 0)
    progress = Progress(
        start.state, step, cfg.steps, best=start.progress["best"], bad_evals=start.progress["bad_evals"],
        skipped=skipped, last_good=start.path, window=time.perf_counter(), stop=start.progress.get("stop"),
        nonfinite=torch.tensor(skipped, device=parts.device),
    )
    progress = hooks.restore_window(progress, start.progress.get("window"), parts.device)

    run_eval = lambda state: evaluate_batches(eval_step, state, val_data, parts.device, parts.task, cfg.eval_batches, replicas)  # noqa: E731
    flag, save = hooks.SignalFlag(say=main), saver(exp, run_dir, train_data, elapsed, main, best=False)
    hook, evaluate_due = run_hooks(
        exp, summarize=parts.task.summarize, log=log, bar=bar, say=say, elapsed=elapsed, replicas=replicas, flag=flag,
        save=save, save_best=saver(exp, run_dir, train_data, elapsed, main, best=True),
        run_eval=run_eval, utilisation=utilisation(exp, parts, first_batch),
        make_text=(lambda state: cfg.sample.prompt + sample_text(parts.model, state, tokenizer, cfg.sample))  # as generate prints
        if main and cfg.sample else None,
    )
    hook = chain(hook, remember_in(latest := [progress]))  # the last finished step: saved if a batch cannot be read
    try:
        with flag.installed():
            if start.payload is not None and due(progress, cfg.eval_every) and unevaluated(run_dir, step, main, replicas):
                progress = evaluate_due(progress, {})  # killed between that step's checkpoint and its evaluation
            batches = read_or_raise(train_data)
            progress = fit(progress, batches, lambda state, batch: train_step(state, to_device(batch, parts.device)), hook)
    except UnreadableBatch as e:
        never_nonfinite = lambda p: save(hooks.stop_on_nonfinite(p, {}))  # noqa: E731
        raise saved_after_unreadable(e.__cause__, latest[0], exp, run_dir, never_nonfinite) from None
    except RunError as e:
        if log.failure is None:
            raise
        raise log_failed(log.failure, latest[0].last_good, also=e) from None  # the save on the way out failed too
    finally:
        bar.close()
        log.close()
        if main:  # on every exit, Ctrl-C and SIGTERM included: the curves so far
            plot_quietly(run_dir, say)
    outcome(progress, cfg, log.failure, say)
    return run_dir


def saver(exp: Experiment, run_dir: Path, train_data, elapsed, main: bool, *, best: bool):
    """``progress -> path``: write the run's checkpoint of ``progress`` (rank 0 only): ``best.pt``, or the step's file, pruned."""
    folder = run_dir / CHECKPOINTS

    def save(p: Progress) -> Path:
        path = folder / "best.pt" if best else checkpoint.step_path(folder, p.step)
        hooks.check_finite_params(p)  # nothing non-finite is saved (every rank: they stop at the same step)
        if main:
            progress = {
                "elapsed": elapsed(), "best": p.best, "bad_evals": p.bad_evals, "skipped": hooks.nonfinite_count(p),
                "window": hooks.window_state(p),  # a resumed run's first log averages the same steps
            }
            save_checkpoint(path, checkpoint_payload(p.state, train_data.state_dict(), progress, to_dict(exp)))
            if not best:
                checkpoint.prune(folder, exp.train.keep_checkpoints)
        return path

    return save




def run_hooks(exp: Experiment, *, summarize, log, bar, say, elapsed, replicas: Replicas, flag, save, save_best, run_eval, make_text,
              utilisation=None):
    """The hooks of one run, in the order they act on a step.

    The checkpoint comes before evaluation and sampling, so a failure there
    loses no step; the non-finite check comes before anything is logged,
    saved or evaluated.
    """
    cfg = exp.train
    stop_nonfinite = hooks.stop_on_nonfinite if cfg.on_nonfinite == "stop" else (lambda p, m: p)
    checkpoint_due = lambda p: due(p, cfg.checkpoint_every or cfg.eval_every) or due(p, cfg.eval_every) or p.stop is not None  # noqa: E731
    # Every rank must stop at the same step: with replicas, agree on the log cadence.
    signal_hook = hooks.stop_on_signal(flag, replicas.any if replicas.active else bool)
    guard, untimed = hooks.stop_on_log_failure, hooks.untimed
    log_now = guard(chain(
        stop_nonfinite, hooks.check_replicas(replicas),
        hooks.log_train(log, summarize, bar, say, elapsed, skip=cfg.on_nonfinite == "skip", learning_rate=learning_rate(exp),
                        utilisation=utilisation, replicas=replicas.world_size),
    ))
    evaluation = [untimed(hooks.evaluate(run_eval, log, say, elapsed))]
    if cfg.early_stopping is not None:  # the last train window is logged, then saved again with this evaluation's best and count
        stopped_unlogged = lambda p: p.stop == "early_stopping" and not due(p, cfg.log_every)  # noqa: E731
        evaluation += [
            untimed(hooks.early_stopping(cfg.early_stopping, save_best)), when(stopped_unlogged, log_now), untimed(hooks.checkpoint(save)),
        ]
    every_step = [hooks.advance(bar), hooks.count_nonfinite, hooks.accumulate]
    evaluate_due = chain(  # each part untimed: a train log of an early stop among them counts the training rate alone
        every(cfg.eval_every, guard(chain(stop_nonfinite, *evaluation))),
        every(cfg.eval_every * cfg.sample.every, untimed(guard(hooks.sample(make_text, log, say, elapsed)))) if make_text else (lambda p, m: p),
    )
    return chain(
        *every_step,
        every(cfg.log_every, log_now),
        every(cfg.log_every, signal_hook) if replicas.active else signal_hook,
        when(checkpoint_due, untimed(chain(stop_nonfinite, hooks.checkpoint(save)))),
        evaluate_due,
        every(cfg.eval_every, signal_hook) if replicas.active else (lambda p, m: p),  # an evaluation's log failed: all stop
    ), evaluate_due


def unevaluated(run_dir: Path, step: int, main: bool, replicas: Replicas) -> bool:
    """Whether the run's log lacks the evaluation of ``step`` (rank 0 reads it; every rank gets its answer).

    The checkpoint of an evaluation step is written before the evaluation, so
    a run killed in between resumes from that step without its figures.
    """
    missing = main and not any(e["step"] == step and e["split"] == "val" for e in read_metrics(run_dir))
    return replicas.any(missing) if replicas.active else missing
