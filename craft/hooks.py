"""The hooks a run composes around ``craft.loop.fit``: log, evaluate, sample, stop, checkpoint.

Each factory takes what its hook needs and returns a plain function
``progress, metrics -> progress``; ``craft.loop.every`` decides when it runs.
A hook never shares mutable state with another: what one learns (the last eval
metrics, the last checkpoint written) goes into the returned progress record.
The one exception is ``SignalFlag``: the operating system sets it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from craft.logging import FIRST_STEP_BAR, LogUnwritable, first_step_done
from craft.loop import Hook, Metrics, Progress
from craft.rundir import RunError

Say = Callable[[str], None]


def clock(elapsed_before: float = 0.0) -> Callable[[], float]:
    """``() -> seconds`` of training so far: ``elapsed_before`` (a resumed run's) plus the time since this call."""
    start = time.perf_counter()
    return lambda: elapsed_before + time.perf_counter() - start


def advance(bar) -> Hook:
    """Move the progress bar one step; after the first, show its rate and ETA (``logging.first_step_done``)
    and restart the log's samples/s window, so that neither counts the first step's compile."""

    def hook(progress: Progress, metrics: Metrics) -> Progress:
        bar.update(1)
        if getattr(bar, "bar_format", None) == FIRST_STEP_BAR:  # a disabled bar has none (nor a log to write)
            first_step_done(bar)
            return progress._replace(samples=0, window=time.perf_counter())
        return progress

    return hook


def untimed(hook: Hook) -> Hook:
    """``hook``, with the time it takes (an evaluation, a sample, a checkpoint) left out of the log's
    samples/s window: the figure is the training rate, not the rate of a window that happened to hold
    an evaluation (whose first call compiles the eval step)."""

    def timed_out(progress: Progress, metrics: Metrics) -> Progress:
        start = time.perf_counter()
        progress = hook(progress, metrics)
        return progress._replace(window=progress.window + time.perf_counter() - start)

    return timed_out


def count_nonfinite(progress: Progress, metrics: Metrics) -> Progress:
    """Count steps whose loss or gradient norm is NaN/Inf, on device (no sync): elementwise for a sweep's members."""
    bad = ~(torch.isfinite(metrics["loss"]) & torch.isfinite(metrics["grad_norm"]))
    count = bad.long() if progress.nonfinite is None else progress.nonfinite + bad
    first = torch.full_like(count, -1) if progress.first_nonfinite is None else progress.first_nonfinite
    first = torch.where(bad & (first < 0), torch.full_like(first, progress.step), first)
    return progress._replace(nonfinite=count, first_nonfinite=first)


def nonfinite_count(progress: Progress) -> int:
    return 0 if progress.nonfinite is None else int(progress.nonfinite.sum())


def stop_on_nonfinite(progress: Progress, metrics: Metrics) -> Progress:
    """Raise a ``RunError`` once any step was non-finite: nothing non-finite is evaluated or saved."""
    if nonfinite_count(progress) <= progress.skipped:
        return progress
    good = f"the last good checkpoint is {progress.last_good}" if progress.last_good else "no checkpoint was written"
    first = int(progress.first_nonfinite.max())
    raise RunError(
        f"non-finite loss or gradient norm at step {first} (stopped at step {progress.step}); {good}. "
        'Set train.on_nonfinite = "skip" and --resume to skip such updates, or start again with a lower '
        "optim.lr or optim.clip_norm"
    )


def check_finite_params(progress: Progress) -> Progress:
    """Raise a ``RunError`` if a parameter holds NaN/Inf (one host sync: called once per checkpoint, before it is
    written): an update can overflow (a learning rate beyond float32) from a finite loss and gradient."""
    params = progress.state.params.values()
    if not params or bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
        return progress
    good = f"the last good checkpoint is {progress.last_good}" if progress.last_good else "no checkpoint was written"
    raise RunError(
        f"non-finite parameters at step {progress.step}, not saved; {good}. An update overflowed: "
        "start again with a lower optim.lr"
    )


def accumulate(progress: Progress, metrics: Metrics) -> Progress:
    """Add the step's finite metrics to the log window's on-device sums (no host sync)."""
    sums, counts = progress.window_sums or {}, progress.window_counts or {}
    new_sums, new_counts = {}, {}
    for name, value in metrics.items():
        value = value.detach().float()
        finite = torch.isfinite(value)
        new_sums[name] = torch.where(finite, value, 0.0) + sums.get(name, 0.0)
        new_counts[name] = finite.float() + counts.get(name, 0.0)
    return progress._replace(window_sums=new_sums, window_counts=new_counts)


def window_state(progress: Progress) -> dict[str, list]:
    """The log window's sums and counts as checkpoint data: ``{name: [sum, count]}`` (lists of them for a sweep)."""
    sums, counts = progress.window_sums or {}, progress.window_counts or {}
    return {k: [sums[k].tolist(), counts[k].tolist()] for k in sums}


def restore_window(progress: Progress, saved: dict[str, list] | None, device) -> Progress:
    """``progress`` with the log window a checkpoint saved (``window_state``); unchanged without one."""
    if not saved:
        return progress
    sums = {k: torch.tensor(v[0], dtype=torch.float32, device=device) for k, v in saved.items()}
    counts = {k: torch.tensor(v[1], dtype=torch.float32, device=device) for k, v in saved.items()}
    return progress._replace(window_sums=sums, window_counts=counts)


def window_means(progress: Progress, metrics: Metrics) -> dict[str, Any]:
    """Each metric's mean over the log window's finite steps (the one host sync of a log); this step's
    value where the window holds none (every step non-finite, or no ``accumulate`` hook). A float per
    metric, or for a sweep's metrics (one value per member) a list: each member's own mean."""
    if not progress.window_sums:
        return {k: v.tolist() for k, v in metrics.items()}
    names = list(progress.window_sums)
    sums = torch.stack([progress.window_sums[k] for k in names])
    counts = torch.stack([progress.window_counts[k] for k in names])
    last = torch.stack([metrics[k].detach().float() for k in names])
    return dict(zip(names, torch.where(counts > 0, sums / counts.clamp(min=1), last).tolist()))


def log_train(
    log, summarize: Callable[[dict], dict], bar, say: Say, elapsed: Callable[[], float], *, skip: bool,
    learning_rate: Callable[[int], float] | None = None, utilisation: Callable[[float], float | None] | None = None,
    replicas: int = 1,
) -> Hook:
    """Write the log window's mean metrics and samples/s (and the learning rate of the last update,
    ``learning_rate(updates - 1)``: a skipped update leaves the schedule's count behind the step);
    with ``skip``, report skipped steps. samples/s is the global batch's: this process's examples times
    ``replicas`` (data-parallel processes, each reading an equal slice). ``utilisation(samples/s of one
    process)`` gives the model FLOPs utilisation of its device (``craft.mfu``), logged as ``mfu`` unless None."""

    def hook(progress: Progress, metrics: Metrics) -> Progress:
        values = summarize(window_means(progress, metrics))
        skipped = nonfinite_count(progress) if skip else progress.skipped
        if learning_rate is not None:
            values["lr"] = learning_rate(max(progress.step - 1 - (skipped if skip else 0), 0))
        if skip:
            values["skipped_steps"] = skipped
            if skipped > progress.skipped:
                say(f"step {progress.step}: skipped {skipped - progress.skipped} non-finite update(s), {skipped} in all")
        now = time.perf_counter()
        rate = progress.samples * replicas / max(now - progress.window, 1e-9)
        share = utilisation(rate / replicas) if utilisation is not None else None
        extra = {"samples_per_s": round(rate, 1), **({"mfu": round(share, 4)} if share is not None else {})}
        shown = {"samples_s": f"{rate:,.0f}", **({"mfu": f"{share:.1%}"} if share is not None else {})}
        if not progress.samples:  # the window held only the first step, whose compile is no rate (``advance``)
            extra, shown = {}, {}
        log.write(progress.step, "train", values, elapsed(), **extra)
        bar.set_postfix(loss=f"{values['loss']:.4f}", **shown, refresh=False)
        return progress._replace(samples=0, window=now, skipped=skipped, window_sums=None, window_counts=None)

    return hook


def stop_on_log_failure(hook: Hook) -> Hook:
    """``hook``, with a failed write to the run's log (``LogUnwritable``: a full disk) turned into ``stop = "log"``,
    the progress as it was before ``hook``: the run then saves this step, as on Ctrl-C. Once stopped so, ``hook``
    is skipped (an evaluation whose figures cannot be logged is not worth its time; a resume evaluates again)."""

    def guarded(progress: Progress, metrics: Metrics) -> Progress:
        if progress.stop == "log":
            return progress
        try:
            return hook(progress, metrics)
        except LogUnwritable:
            return progress._replace(stop="log")

    return guarded


def check_replicas(replicas) -> Hook:
    """Verify every data-parallel rank holds the same parameters (checksums)."""

    def hook(progress: Progress, metrics: Metrics) -> Progress:
        replicas.check_same(progress.state.params, f"parameters at step {progress.step}")
        return progress

    return hook


def evaluate(run_eval: Callable[[Any], dict[str, float]], log, say: Say, elapsed: Callable[[], float]) -> Hook:
    """Evaluate ``progress.state`` with ``run_eval``, log and print the figures, keep them as ``progress.val``."""

    def hook(progress: Progress, metrics: Metrics) -> Progress:
        values = run_eval(progress.state)
        log.write(progress.step, "val", values, elapsed())
        say(f"step {progress.step}: " + "  ".join(f"val {k} {v:.4f}" for k, v in values.items()))
        return progress._replace(val=values)

    return hook


def sample(make_text: Callable[[Any], str], log, say: Say, elapsed: Callable[[], float]) -> Hook:
    """Log and print text sampled from ``progress.state`` (``make_text(state) -> str``)."""

    def hook(progress: Progress, metrics: Metrics) -> Progress:
        text = make_text(progress.state)
        log.write(progress.step, "sample", {}, elapsed(), text=text)
        say(f"step {progress.step}: sample\n{text}")
        return progress

    return hook


def early_stopping(rule, save_best: Callable[[Progress], Any]) -> Hook:
    """Track ``rule.metric`` in ``progress.val``: save the best (``save_best``), stop after ``rule.patience`` worse evaluations."""

    def hook(progress: Progress, metrics: Metrics) -> Progress:
        if rule.metric not in progress.val:
            raise RunError(f"train.early_stopping.metric = {rule.metric!r} is not logged; choose one of {sorted(progress.val)}")
        value, best = progress.val[rule.metric], progress.best
        if best is None or (value < best if rule.mode == "min" else value > best):
            progress = progress._replace(best=value, bad_evals=0)
            save_best(progress)
            return progress
        bad = progress.bad_evals + 1
        return progress._replace(bad_evals=bad, stop="early_stopping" if bad >= rule.patience else progress.stop)

    return hook


def checkpoint(save: Callable[[Progress], Path]) -> Hook:
    """Write a checkpoint (``save(progress) -> path``); it becomes ``progress.last_good``."""

    def hook(progress: Progress, metrics: Metrics) -> Progress:
        return progress._replace(last_good=save(progress))

    return hook


class SignalFlag:
    """Turns SIGINT/SIGTERM into a flag the loop reads between steps; a second signal stops at once.

    The first signal is acknowledged on stderr at once (``say``): a step being compiled can take a minute.
    """

    def __init__(self, say: bool = True) -> None:
        self.raised: int | None = None
        self.say = say

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        def handler(signum, frame):
            if self.raised is not None:
                raise KeyboardInterrupt
            self.raised = signum
            if self.say:  # os.write: a print here could land inside another write to stderr (reentrant)
                os.write(2, b"\nstopping: a checkpoint is saved after the current step (again to stop at once, unsaved)\n")

        try:
            old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: leave signals alone
            yield
            return
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def stop_on_signal(flag: SignalFlag, agree: Callable[[bool], bool] = bool) -> Hook:
    """Set ``stop = "signal"`` once ``flag`` is raised; ``agree`` makes data-parallel ranks decide together, on a
    failed log write of rank 0's too (``stop = "log"``, kept there), so no rank waits on a collective alone."""

    def hook(progress: Progress, metrics: Metrics) -> Progress:
        if agree(flag.raised is not None or progress.stop == "log"):
            return progress._replace(stop=progress.stop or "signal")
        return progress

    return hook
