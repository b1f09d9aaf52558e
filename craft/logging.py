"""What a run leaves behind: ``metrics.jsonl``, a progress bar, ``loss.png``.

``metrics.jsonl`` holds one JSON object per log event::

    {"step": 200, "split": "val", "metrics": {"loss": 0.41, "accuracy": 0.88}, "elapsed": 12.3}

- ``split``: ``train`` (every ``log_every`` steps), ``val`` (every
  ``eval_every``), ``sample`` (generated text in ``text``).
- ``train`` metrics are means over the steps since the last log (finite
  values only), with ``loss``, ``grad_norm`` (before clipping), the task's
  metrics, ``lr`` (the learning rate of the last update: skipped ones leave the schedule behind) and, with
  ``on_nonfinite = "skip"``, ``skipped_steps``; the event also holds
  ``samples_per_s`` (the training rate: counted from this process's second step, as
  the first compiles, and without the time of evaluations, samples and checkpoints
  (``craft.hooks.untimed``); a log of the first step alone has none) and, where the device's peak is known (``craft.mfu``),
  ``mfu``: the model FLOPs utilisation, a fraction of the peak.
- ``val`` metrics are means over the whole validation split (or
  ``eval_batches`` batches of examples spread evenly over it), weighted by
  examples or scored tokens; ``craft evaluate`` reads the same part.
- ``elapsed``: seconds of training so far, resumed runs included.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from craft.words import cannot_write

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class LogUnwritable(OSError):
    """A write to ``metrics.jsonl`` failed (a full disk, a read-only folder); the message names the file, the cause and the fix."""


class MetricsLog:
    """Appends events to ``metrics.jsonl``, and hands each to the ``trackers`` (``craft.trackers``): its
    metrics and its other numbers (``samples_per_s``, ``mfu``) as ``split/name``.

    Each event is one unbuffered write, taken back if it fails: the log never ends in half a line, and
    closing it has nothing left to write (a failed write is said once, ``LogUnwritable``, kept as ``failure``).
    """

    def __init__(self, run_dir: Path, *, tensorboard: bool = False, trackers: tuple = ()) -> None:
        self.path, self.failure = run_dir / METRICS_FILE, None
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise LogUnwritable(cannot_write(repr(str(self.path)), e)) from None
        if tensorboard:
            from craft.trackers import open_tracker

            trackers = (*trackers, open_tracker("tensorboard", run_dir, run_dir.name, {}))
        self._trackers = list(trackers)

    def write(self, step: int, split: str, metrics: Mapping[str, float], elapsed: float, **extra: Any) -> None:
        event = {"step": step, "split": split, "metrics": dict(metrics), "elapsed": round(elapsed, 3), **extra}
        line, size = (json.dumps(event) + "\n").encode("utf-8"), os.fstat(self._fd).st_size
        try:
            append_line(self._fd, line)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)  # the part written is taken back: no torn line
            self.failure = LogUnwritable(cannot_write(repr(str(self.path)), e, then="--resume"))
            raise self.failure from None
        numbers = {k: v for k, v in extra.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self._trackers:  # every number of the event: samples_per_s and mfu too
            tracker.log(step, split, {**metrics, **numbers})

    def close(self) -> None:
        os.close(self._fd)
        for tracker in self._trackers:
            tracker.close()


def append_line(fd: int, line: bytes) -> None:
    """Write all of ``line`` to ``fd``: ``os.write`` may write part of it (a disk filling up) before it raises."""
    while line:
        line = line[os.write(fd, line):]


class NullLog:
    """A log that writes nothing: what data-parallel ranks other than 0 log to."""

    failure = None

    def write(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The events of ``metrics.jsonl``.

    A damaged last line (a write cut short when the run was killed) is left
    out; a damaged line before it raises ``ValueError`` naming the file and
    the line, since skipping it would hide a hole in the log.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    events = []
    for i, (n, line) in enumerate(numbered):
        event = _event(line)
        if event is not None:
            events.append(event)
        elif i < len(numbered) - 1:
            raise ValueError(
                f"{str(path)!r} line {n} is not a metrics event ({line[:40]!r}); "
                "delete or repair that line, then run again"
            )
    return events


def _event(line: str) -> dict[str, Any] | None:
    """The event a line of ``metrics.jsonl`` holds, or None if it is damaged."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    ok = (
        isinstance(event, dict) and isinstance(event.get("step"), int) and isinstance(event.get("split"), str)
        and isinstance(event.get("metrics"), dict)
    )
    return event if ok else None


def truncate_metrics(run_dir: Path, after_step: int) -> None:
    """Drop events logged after ``after_step``: a resumed run logs them again."""
    path = Path(run_dir) / METRICS_FILE
    kept = [e for e in read_metrics(run_dir) if e["step"] <= after_step]
    tmp = path.with_name(f".{path.name}.tmp")  # a kill mid-write must not lose the log
    try:
        tmp.write_text("".join(json.dumps(e) + "\n" for e in kept), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise LogUnwritable(cannot_write(repr(str(path)), e, then="--resume")) from None


FIRST_STEP_BAR = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"
"""The bar until the first step is done: no rate or ETA, which that step's compile would make nonsense."""


def bar_look(steps_done: int, compiling: bool) -> tuple[str | None, str]:
    """``(bar_format, postfix)`` of the bar after ``steps_done`` steps of this process.

    Before the first step is done (it compiles the train step, up to a minute,
    or warms up), there is no rate to show: the bar says what it waits for.
    After it, tqdm's own layout (``None``), whose rate and ETA count only the
    steps after the first (``first_step_done``).
    """
    if steps_done > 0:
        return None, ""
    return FIRST_STEP_BAR, "compiling the train step" if compiling else "first step"


def progress_bar(total: int, initial: int, *, disable: bool = False, compiling: bool = False):
    """A tqdm bar on stderr: step, ETA, and the postfix the loop sets (loss, samples/s).

    ``disable``: a bar that shows nothing (data-parallel ranks other than 0).
    ``compiling``: the first step compiles (``bar_look``). The rate is the mean
    over the steps since the first (no smoothing), so the ETA is steady.
    """
    from tqdm import tqdm

    bar_format, postfix = bar_look(0, compiling)
    return tqdm(
        total=total, initial=initial, unit="step", file=sys.stderr, dynamic_ncols=True, mininterval=0.5,
        disable=disable, smoothing=0, bar_format=bar_format, postfix=postfix or None,
    )


def first_step_done(bar) -> None:
    """Give ``bar`` its full layout, its rate and ETA counted from now: the first step (its compile) left out."""
    bar.bar_format, postfix = bar_look(1, False)
    bar.set_postfix_str(postfix, refresh=False)
    now = time.time()  # tqdm's clock
    bar.initial, bar.last_print_n, bar.start_t, bar.last_print_t = bar.n, bar.n, now, now
    bar.refresh()


def plot_metrics(run_dir: Path) -> Path:
    """Draw ``loss.png``: train and val loss by step, and val accuracy where logged.

    Points are marked where there are few (a short run shows its points), and
    the legend sits below the axes, where it covers no curve.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = read_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100, layout="constrained")
    for split in ("train", "val"):
        points = [(e["step"], e["metrics"]["loss"]) for e in events if e["split"] == split and "loss" in e["metrics"]]
        if points:
            marker = "o" if split == "val" else "." if len(points) <= 100 else None
            ax.plot(*zip(*points), "-", marker=marker, label=f"{split} loss", markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    accuracy = [(e["step"], e["metrics"]["accuracy"]) for e in events if e["split"] == "val" and "accuracy" in e["metrics"]]
    axes = [ax]
    if accuracy:
        right = ax.twinx()
        right.plot(*zip(*accuracy), "s--", color="tab:green", label="val accuracy", markersize=4)
        right.set_ylabel("accuracy")
        axes.append(right)
    handles = [h for a in axes for h in a.get_legend_handles_labels()[0]]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    ax.set_title(Path(run_dir).name)
    path = Path(run_dir) / PLOT_FILE
    tmp = path.with_name(f".{path.name}.tmp")  # a failed draw (disk full) leaves the last plot, not an empty file
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def plot_quietly(run_dir: Path, say) -> None:
    """Draw ``loss.png``; a plot that fails (a damaged log) is a warning, never the run's error."""
    try:
        plot_metrics(run_dir)
    except Exception as e:  # noqa: BLE001 - whatever went wrong, the run's own outcome matters more
        say(f"warning: could not draw {run_dir / 'loss.png'}: {e}")


def check_tensorboard() -> None:
    """Raise a one-line ``ConfigError`` if ``train.tensorboard = true`` cannot work: tensorboard is not installed."""
    from craft.config import ConfigError
    from craft.trackers import check

    try:
        check(["tensorboard"])
    except ConfigError:
        raise ConfigError([
            "train.tensorboard = true needs the tensorboard package, which is not installed: "
            "run python -m pip install -e \".[tensorboard]\" in the craft checkout "
            "(or python -m pip install tensorboard), or set train.tensorboard = false"
        ]) from None
