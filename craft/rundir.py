"""The run folder: its name, the marker and lock craft keeps in it, atomic writes, and start-or-resume.

::

    runs/NAME/.craft-run           marker: craft made this folder (only such a folder is --overwrite'n)
    runs/NAME/.lock                held (flock) by the run using the folder; holds its PID
    runs/NAME/config.toml          the resolved experiment (load() reproduces it)
    runs/NAME/metrics.jsonl        one JSON object per log event
    runs/NAME/checkpoints/         step_XXXXXXXX.pt (the last K), best.pt
    runs/NAME/loss.png             train / val curves
    runs/NAME/tokenizer.json       text and caption data: what ``craft generate`` decodes with

A folder from before the marker existed (``config.toml`` with ``checkpoints/``
or ``metrics.jsonl``) is accepted as a run folder, so old runs can still be replaced.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import attrs

from craft import checkpoint
from craft.config import load as load_config
from craft.config import tomllib
from craft.logging import truncate_metrics

CONFIG_FILE = "config.toml"
TOKENIZER_FILE = "tokenizer.json"
MARKER_FILE = ".craft-run"
LOCK_FILE = ".lock"
CHECKPOINTS = "checkpoints"
_OWN = {MARKER_FILE, LOCK_FILE}  # files that alone do not make a folder "used"
# Keys that steer the run but not the arithmetic: a resumed run may change them.
RUN_CONTROL = {
    "steps", "eval_every", "log_every", "eval_batches", "compile", "device",
    "checkpoint_every", "keep_checkpoints", "early_stopping", "sample", "tensorboard", "loggers",
    "on_nonfinite",  # after a non-finite stop, resuming with "skip" is the way on
}
WHERE = {"out_dir", "name"}  # where a run lives is not what it computes: a moved run resumes


class RunError(Exception):
    """A run that cannot start or go on, for a reason the user can fix."""


class Interrupted(Exception):
    """SIGINT/SIGTERM: the current step finished and a checkpoint was written."""

    def __init__(self, step: int, path: Path | None) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint saved to {path}")
        self.step, self.path = step, path


def is_used(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds anything besides craft's own marker and lock."""
    return run_dir.is_dir() and any(p.name not in _OWN for p in run_dir.iterdir())


def is_run_folder(run_dir: Path) -> bool:
    """Whether craft made ``run_dir``: its marker, or (runs from before the marker) a config with logs or checkpoints."""
    if (run_dir / MARKER_FILE).is_file():
        return True
    return (run_dir / CONFIG_FILE).is_file() and ((run_dir / CHECKPOINTS).is_dir() or (run_dir / "metrics.jsonl").is_file())


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def fresh_name(exp: Any, *, resume: bool, overwrite: bool) -> tuple[Any, str | None]:
    """A new run's own folder: ``exp`` unchanged when its folder is free or a flag names it (``--resume``
    continues it, ``--overwrite`` replaces it); else ``exp`` named ``NAME-2``, ``NAME-3``... (the first
    free one, as Lightning numbers versions) and a line saying so. A folder another run holds is still
    reported by ``check_run_dir``, naming that process."""
    out, name = Path(exp.out_dir), exp.name
    if resume or overwrite or not is_used(out / name):
        return exp, None
    check_free(out / name)
    n = 2
    while is_used(out / f"{name}-{n}") or (out / f"{name}-{n}" / LOCK_FILE).exists():
        n += 1
    new = attrs.evolve(exp, name=f"{name}-{n}")
    return new, (
        f"{str(out / name)!r} holds an earlier run: this one is {str(out / new.name)!r} "
        f"(--resume continues {name!r}, --overwrite replaces it)"
    )


def check_run_dir(exp: Any, *, resume: bool, overwrite: bool) -> Path:
    """The run folder, after checking the flags fit it; nothing is touched yet."""
    run_dir = Path(exp.out_dir) / exp.name
    if resume and overwrite:
        raise RunError("choose one of --resume and --overwrite")
    check_free(run_dir)
    used = is_used(run_dir)
    if used and not (resume or overwrite):
        raise RunError(f"run folder {str(run_dir)!r} already exists; pass --resume to continue it or --overwrite to replace it")
    if resume and not used:
        raise RunError(f"nothing to resume: {str(run_dir)!r} does not exist; drop --resume to start the run")
    if overwrite and used:
        check_replaceable(run_dir, Path(exp.out_dir), data_paths(exp))
    return run_dir


def data_paths(exp: Any) -> list[Path]:
    """The files and folders the experiment's data is read from (``data.path``, ``data.val_path``)."""
    config = exp.data.config
    return [Path(p) for p in (getattr(config, "path", None), getattr(config, "val_path", None)) if isinstance(p, (str, os.PathLike))]


def check_replaceable(run_dir: Path, out_dir: Path, data: list[Path]) -> None:
    """Raise unless ``--overwrite`` may delete ``run_dir``: a run folder craft made, not ``out_dir``, not holding the data."""
    if _inside(out_dir, run_dir):
        raise RunError(f"--overwrite: {str(run_dir)!r} is out_dir itself or holds it; choose a run name inside out_dir")
    for path in data:
        if _inside(path, run_dir):
            raise RunError(f"--overwrite: {str(run_dir)!r} holds the data being read ({str(path)!r}); choose another name")
    if not is_run_folder(run_dir):
        raise RunError(
            f"--overwrite: {str(run_dir)!r} was not made by craft (no {MARKER_FILE} marker); "
            "remove it yourself or choose another name"
        )


def _take(fd: int, run_dir: Path) -> None:
    """``flock`` ``fd`` exclusively, or raise the ``RunError`` naming the process that holds it."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        raise RunError(
            f"run folder {str(run_dir)!r} is in use by another craft run (PID {holder}); "
            "wait for it to end, or choose another name"
        ) from None


def check_free(run_dir: Path) -> None:
    """Raise if another run holds ``run_dir``'s lock (checked before anything else is said about the folder)."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return
    try:
        _take(fd, run_dir)
    finally:
        os.close(fd)  # closing releases the probe's lock


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (made if missing) for the block; a held lock is a ``RunError``.

    The lock is ``flock`` on ``.lock`` inside the folder: the kernel releases
    it when the process ends, crash or not. A folder this call made and the
    run left empty is removed again.
    """
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _take(fd, run_dir)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
        if made and not is_used(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)


def prepare_run_dir(run_dir: Path, *, overwrite: bool) -> Path:
    """Empty ``run_dir`` when overwriting (its lock stays), make sure it exists, and mark it as craft's."""
    if overwrite and run_dir.exists():
        for path in run_dir.iterdir():
            if path.name != LOCK_FILE:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / MARKER_FILE).exists():
        write_atomic(run_dir / MARKER_FILE, "a run folder made by craft: craft train --overwrite may replace it\n")
    return run_dir


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a kill leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunError(f"cannot write {str(path)!r}: {e.strerror or e}") from None


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """``checkpoint.save``, with a failed write (a full disk) reported naming the file."""
    try:
        return checkpoint.save(path, payload)
    except OSError as e:
        raise RunError(f"cannot write checkpoint {str(path)!r}: {e.strerror or e}; free some space and --resume") from None


def checkpoint_payload(state: Any, data_state: dict[str, Any], progress: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """What every checkpoint of a run or a sweep holds; ``state`` a (stacked) TrainState."""
    return {
        "state": checkpoint.state_to_dict(state),
        "data": data_state,
        **checkpoint.rng_states(),
        "progress": progress,
        "config": config,
    }


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The resolved config a run folder holds, or None when it has none that parses."""
    try:
        return tomllib.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None


def check_resumable(now: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    """A resumed run may change how it runs (steps, eval cadence, where it lives), not what it computes.

    ``now`` and ``saved`` are resolved configs (``to_dict``). One change to
    the arithmetic is allowed when asked for: ``schedule.total_steps``
    (stretching the schedule over a longer run); the returned lines say so.
    """
    saved = {**saved, "schedule": _schedule_length(saved)}
    differ, notes = [], []
    for section in sorted((now.keys() | saved.keys()) - WHERE):
        a, b = now.get(section), saved.get(section)
        if section == "train" and isinstance(a, dict) and isinstance(b, dict):
            differ += [f"train.{k}" for k in sorted(a.keys() | b.keys()) if k not in RUN_CONTROL and a.get(k) != b.get(k)]
        elif section == "schedule" and isinstance(a, dict) and isinstance(b, dict) and a != b:
            if {**a, "total_steps": None} != {**b, "total_steps": None}:
                differ.append(section)
            else:
                notes.append(
                    f"schedule.total_steps: {b.get('total_steps')} -> {a.get('total_steps')}: the learning-rate "
                    "schedule is stretched to the new length from this step on"
                )
        elif a != b:
            differ.append(section)
    if differ:
        raise RunError(
            f"cannot resume: the experiment differs from the saved run in {', '.join(differ)}; "
            "restore those settings, or start a new run (--overwrite or another name)"
        )
    return notes


def _schedule_length(config: dict[str, Any]) -> Any:
    """``config``'s schedule, with the length a run from before craft recorded it ran on: its ``train.steps``."""
    schedule, train = config.get("schedule"), config.get("train")
    if isinstance(schedule, dict) and "total_steps" not in schedule and isinstance(train, dict) and "steps" in train:
        return {**schedule, "total_steps": train["steps"]}
    return schedule


def resume_target(config: str | Path, texts: dict[str, str]) -> Any:
    """The experiment ``--resume`` continues: the run folder's own ``config.toml`` with only ``texts``
    (this command line's overrides) on top, not the TOML file again.

    ``config`` is the experiment file (its run folder is ``out_dir/name`` after
    ``texts``) or the run folder itself. A run folder moved since keeps its new place.
    """
    config = Path(config)
    if config.is_dir():
        run_dir = config
    else:
        given = load_config(config, texts=texts)
        run_dir = Path(given.out_dir) / given.name
    if not (run_dir / CONFIG_FILE).is_file():
        return _no_run(run_dir) if config.is_dir() else given
    exp = load_config(run_dir / CONFIG_FILE, texts=texts)
    recorded = _schedule_length(saved_config(run_dir) or {})
    if getattr(exp.schedule.config, "total_steps", 0) is None and isinstance(recorded, dict):
        # A run from before the length was recorded: its schedule ran over its own train.steps.
        config_ = attrs.evolve(exp.schedule.config, total_steps=recorded.get("total_steps"))
        exp = attrs.evolve(exp, schedule=attrs.evolve(exp.schedule, config=config_))
    return attrs.evolve(exp, out_dir=str(run_dir.parent), name=run_dir.name)


def _no_run(run_dir: Path) -> Any:
    raise RunError(f"nothing to resume: {str(run_dir)!r} has no {CONFIG_FILE}; give the experiment's TOML file")


class Start(NamedTuple):
    """Where a run begins: the state and progress to start from, and the checkpoint they came from."""

    state: Any
    progress: dict[str, Any]
    payload: dict[str, Any] | None  # the resumed checkpoint (its "data", "numpy_rng", ...); None: from scratch
    path: Path | None


def start_or_resume(
    run_dir: Path, resolved: dict[str, Any], state: Any, *, resume: bool, main: bool, echo: Callable[[str], None],
    restore: Callable[[dict[str, Any], Any], Any] = checkpoint.state_from_dict,
) -> Start:
    """From ``state`` (fresh), or with ``resume`` from the newest usable checkpoint in ``run_dir``.

    Resuming checks the config, restores the host generators, sets aside
    unreadable newer checkpoints and cuts ``metrics.jsonl`` back to the
    checkpoint's step (``main`` only). The caller restores its data position
    from ``payload["data"]``.
    """
    fresh = {"elapsed": 0.0, "best": None, "bad_evals": 0}
    if not resume:
        return Start(state, fresh, None, None)
    ckpt_dir = run_dir / CHECKPOINTS
    found = checkpoint.load_latest(ckpt_dir, on_skip=lambda e: echo(f"warning: skipping {e}"), check=checkpoint.check_run_payload)
    if found is None:
        if checkpoint.step_files(ckpt_dir):
            raise RunError(f"nothing to resume: no readable checkpoint in {str(ckpt_dir)!r}; pass --overwrite to start again")
        saved = saved_config(run_dir)  # stopped before its first checkpoint: nothing is lost by starting over
        if saved is not None:
            for note in check_resumable(resolved, saved):
                echo(note)
        if main:
            truncate_metrics(run_dir, 0)
        echo(f"{run_dir} has no checkpoint yet: starting it again from step 0")
        return Start(state, fresh, None, None)
    path, payload = found
    for note in check_resumable(resolved, payload["config"]):
        echo(note)
    state = restore(payload["state"], state)
    for moved in checkpoint.set_aside_after(ckpt_dir, path):
        echo(f"warning: set aside the unreadable {moved.name}")
    checkpoint.restore_rng(payload)
    if main:
        truncate_metrics(run_dir, int(payload["state"]["step"].reshape(-1)[0]))
    echo(f"resuming {run_dir} from {path.name} (step {int(payload['state']['step'].reshape(-1)[0])})")
    return Start(state, {**fresh, **payload["progress"]}, payload, path)
