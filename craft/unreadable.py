"""What a run says about its data, and a training batch that cannot be read mid-run.

``data_summary`` and ``one_class_warning`` are lines a run prints before its
first step. ``read_or_raise`` marks an error reading the next training batch
(an image that stops decoding), and ``saved_after_unreadable`` saves the last
finished step before the run ends with one line, so fixing the data and
``--resume`` lose nothing.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from craft import checkpoint
from craft.config import Experiment
from craft.loop import Hook, Progress
from craft.rundir import CHECKPOINTS, RunError


def data_summary(train_data, val_data, eval_batches: int | None = None) -> list[str]:
    """What each split's data says it read, where it says (a ``summary`` line: an image folder's files by
    kind and what it left out), so that files left out of a folder are never left out silently; and what
    each evaluation reads of val where the data says (a token folder's ``evaluation``: all of val.bin, or
    ``data.val_windows`` windows), the line ``craft evaluate`` prints too."""
    lines = [line for split, data in (("train", train_data), ("val", val_data)) if (line := split_line(split, data))]
    evaluation = getattr(val_data, "evaluation", None)
    if isinstance(evaluation, str) and evaluation:
        limit = f"; train.eval_batches = {eval_batches} of its batches are read" if eval_batches is not None else ""
        lines.append(evaluation + limit)
    return lines


def split_line(split: str, data) -> str | None:
    """``"val data: 9 images in data/x (split 'validation'), 3 classes"``: what ``data`` says it read (its
    ``summary``), or None where it says nothing."""
    said = getattr(data, "summary", None)
    return f"{split} data: {said}" if isinstance(said, str) and said else None


def one_class_warning(exp: Experiment, train_data) -> list[str]:
    """A warning when a classifier's training data has one class: every prediction is right, nothing is
    learned (most often ``data.path`` names one class folder instead of the folder holding them)."""
    classes = getattr(train_data, "classes", None)
    if exp.task.kind != "classification" or not classes or len(classes) != 1:
        return []
    return [
        f"warning: the train data has one class ({classes[0]!r}): a classifier learns nothing from it; "
        "point data.path at the folder that holds the class folders"
    ]


def remember_in(latest: list) -> Hook:
    """A hook that keeps each step's progress in ``latest[0]`` (for ``saved_after_unreadable``)."""

    def remember(progress: Progress, metrics) -> Progress:
        latest[0] = progress
        return progress

    return remember


class UnreadableBatch(Exception):
    """The next training batch could not be read (an image that does not decode); its error is the cause."""


class DataEnded(Exception):
    """The train iterator raised ``StopIteration``: a train split must yield batches without end."""


ENDED = (
    "data.kind = {kind!r}: the train iterator ended (StopIteration) after step {step}; a train split yields "
    "batches without end: start a new pass over the data when one ends, as craft.data.batching.TrainBatches does"
)


def read_or_raise(batches):
    """``batches``, with an error reading one raised as ``UnreadableBatch`` (the step's own errors stay as they
    are), and an iterator that ends as ``UnreadableBatch`` from ``DataEnded`` (inside this generator, its
    ``StopIteration`` would be a bare ``RuntimeError: generator raised StopIteration``)."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            raise UnreadableBatch() from DataEnded()
        except (ValueError, OSError) as e:
            raise UnreadableBatch() from e
        yield batch


def saved_after_unreadable(error: Exception, progress: Progress, exp: Experiment, run_dir: Path, save) -> RunError:
    """The one-line error for a training batch that cannot be read mid-run, after saving the last finished
    step (unless it is saved already, or ``save`` refuses it with a ``RunError``: a non-finite state), so
    that fixing the data loses no step. A run and a sweep both end this way; ``--resume`` continues either.

    The data's position is the unread batch's (a failed read does not advance it): the resumed run reads it again.
    """
    ended = isinstance(error, DataEnded)
    if ended:
        error = ENDED.format(kind=exp.data.kind, step=progress.step)
    skips = not ended and getattr(exp.data.config, "skip_unreadable", None) is False
    hint = " (a new run with data.skip_unreadable = true leaves such files out)" if skips else ""
    saved = progress.last_good
    if progress.step > 0 and not checkpoint.step_path(run_dir / CHECKPOINTS, progress.step).exists():
        try:
            saved = save(progress)
        except RunError:
            pass
    if saved is None:
        return RunError(f"{error}; no checkpoint was written: after fixing the data, start the run again{hint}")
    resume = shlex.join(["craft", "train", str(run_dir), "--resume"])
    return RunError(f"{error}; the run is saved in {saved}: after fixing the data, resume with: {resume}{hint}")
