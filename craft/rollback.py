"""``craft train RUN --resume --checkpoint=NAME``: a run continued from one of its earlier checkpoints, not its
newest (back to before a loss spike, to go on with another setting ``--resume`` allows).

Nothing is deleted: the checkpoints after it are renamed ``*.rolled-back`` (``best.pt`` too when it is newer),
so they no longer count as the newest nor push the kept ones out when pruning, and ``metrics.jsonl`` is copied
to ``metrics.jsonl.rolled-back`` before the resumed run cuts it back to the checkpoint's step and logs again.
W&B and MLflow runs cannot take a step back: ``trackers.json`` is set aside too, so they log to new runs.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from craft import checkpoint
from craft.logging import METRICS_FILE
from craft.trackers import STATE_FILE
from craft.runfolder import CHECKPOINTS, CONFIG_FILE, RunError, checkpoint_file

SUFFIX = ".rolled-back"


def chosen(run_dir: Path, name: str) -> tuple[Path, dict[str, Any]]:
    """``(path, payload)`` of the checkpoint ``--checkpoint=NAME`` names (``best``, a file name in the run's
    ``checkpoints/``, or a path to one of them); a file of another run is refused, pointing at ``init_from``."""
    path = checkpoint_file(run_dir, name)
    if path.resolve().parent != (run_dir / CHECKPOINTS).resolve():
        raise RunError(
            f"--checkpoint={name}: {str(path)!r} is not one of {str(run_dir)!r}'s checkpoints, which --resume continues; "
            f"to start a new run from its weights, give --train.init_from={path} instead of --resume"
        )
    payload = checkpoint.load(path)
    checkpoint.check_run_payload(path, payload)
    return path, payload


def other_settings(run_dir: Path, path: Path) -> str:
    """How to go on from ``path`` with settings ``--resume`` refuses: a new run from its weights (``init_from``)."""
    return (f"; to go on from {path.name} with other settings, start a new run from its weights: craft train "
            f"{run_dir / CONFIG_FILE} --train.init_from={path} with them (the optimizer and step start afresh)")


def set_aside_after(run_dir: Path, step: int, say: Callable[[str], None]) -> None:
    """The run's checkpoints newer than ``step`` renamed ``*.rolled-back``, and its log copied, said in one line."""
    ckpt_dir, free = run_dir / CHECKPOINTS, checkpoint.free_name
    moved = checkpoint.set_aside_after(ckpt_dir, step, SUFFIX)
    best = ckpt_dir / "best.pt"
    if best.is_file() and _step_of(best) > step:
        moved.append(best.replace(free(best.with_name(best.name + SUFFIX))))
    if not moved:
        return
    log, trackers = run_dir / METRICS_FILE, run_dir / STATE_FILE
    kept = f"; the log so far copied to {shutil.copyfile(log, free(log.with_name(log.name + SUFFIX))).name}" if log.is_file() else ""
    if trackers.is_file():  # their runs cannot take a step back: W&B and MLflow start new ones, the old keep the old steps
        trackers.replace(free(trackers.with_name(trackers.name + SUFFIX)))
        kept += f"; W&B and MLflow log to new runs from here ({trackers.name} set aside; the old runs keep the steps rolled back)"
    say(f"rolled back to step {step}: set aside {', '.join(p.name for p in moved)} in {ckpt_dir}{kept}")


def _step_of(path: Path) -> int:
    try:
        return checkpoint.saved_step(checkpoint.load(path))
    except (checkpoint.CheckpointError, KeyError, TypeError, AttributeError):
        return -1  # unreadable: not a newer best, left where it is
