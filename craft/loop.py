"""The training loop: a progress record, one ``fit`` function, and the combinators that schedule hooks.

``fit`` draws a batch, calls the step, and hands the progress record and the
step's metrics to a hook; that is all it does::

    progress = fit(progress, batches, step, chain(
        every(log_every, log_hook),
        every(eval_every, evaluate_hook),
    ))

A hook is a plain function ``progress, metrics -> progress`` (see
``craft.hooks`` for the ones a run uses). It returns a replaced copy of the
record, never changes it; setting ``stop`` ends the loop after that step's hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from torch import Tensor

from craft.tasks import batch_size

Metrics = dict[str, Tensor]


class Progress(NamedTuple):
    """Where a run stands after ``step`` steps of ``total``.

    ``samples``/``window``: examples seen since the last log and when that log
    was (``time.perf_counter``); ``nonfinite``/``first_nonfinite``: on-device
    counters of non-finite steps (per member in a sweep), read only when
    something is logged, evaluated or saved; ``val``: the last eval metrics;
    ``window_sums``/``window_counts``: the step metrics since the last log,
    kept on device so that the log reports their mean, not one batch's.
    """

    state: Any
    step: int
    total: int
    samples: int = 0
    window: float = 0.0
    best: float | None = None
    bad_evals: int = 0
    skipped: int = 0  # non-finite steps skipped and already reported
    nonfinite: Tensor | None = None
    first_nonfinite: Tensor | None = None
    val: Any = None
    window_sums: dict[str, Tensor] | None = None  # on device: each metric summed over the log window's finite steps
    window_counts: dict[str, Tensor] | None = None  # on device: how many finite values each sum holds
    last_good: Path | None = None
    stop: str | None = None  # why the loop ends early: "early_stopping", "signal"


Hook = Callable[[Progress, Metrics], Progress]
Step = Callable[[Any, dict[str, Tensor]], tuple[Any, Metrics]]


def fit(progress: Progress, batches: Iterator[dict[str, Tensor]], step: Step, hook: Hook) -> Progress:
    """Train from ``progress`` until ``progress.total`` steps, or until a hook sets ``stop``."""
    while progress.stop is None and progress.step < progress.total:
        batch = next(batches)
        state, metrics = step(progress.state, batch)
        progress = progress._replace(state=state, step=progress.step + 1, samples=progress.samples + batch_size(batch))
        progress = hook(progress, metrics)
    return progress


def due(progress: Progress, n: int) -> bool:
    """Whether a task every ``n`` steps runs now: a multiple of ``n``, or the last step."""
    return progress.step % n == 0 or progress.step == progress.total


def every(n: int, hook: Hook) -> Hook:
    """``hook`` on every ``n``-th step and on the last one."""
    return when(lambda p: due(p, n), hook)


def when(condition: Callable[[Progress], bool], hook: Hook) -> Hook:
    """``hook`` on the steps where ``condition(progress)`` holds."""

    def scheduled(progress: Progress, metrics: Metrics) -> Progress:
        return hook(progress, metrics) if condition(progress) else progress

    return scheduled


def chain(*hooks: Hook) -> Hook:
    """The hooks one after another, each given the progress the previous one returned."""

    def chained(progress: Progress, metrics: Metrics) -> Progress:
        for hook in hooks:
            progress = hook(progress, metrics)
        return progress

    return chained
