"""The run folder's layout and safety: its files, a fresh name, the marker and lock craft
keeps in it, the ``--resume``/``--overwrite`` checks, and atomic writes.

::

    runs/NAME/.craft-run           marker: craft made this folder (only such a folder is --overwrite'n)
    runs/NAME/.lock                held (flock) by the run using the folder; holds its PID
    runs/NAME/config.toml          the resolved experiment (load() reproduces it)
    runs/NAME/metrics.jsonl        one JSON object per log event
    runs/NAME/checkpoints/         step_XXXXXXXX.pt (the last K), best.pt
    runs/NAME/loss.png             train / val curves
    runs/NAME/tokenizer.json       text and caption data: what ``craft generate`` decodes with
    runs/NAME/classes.json         a classifier's class names, in the order of its outputs
    runs/NAME/trackers.json        the W&B and MLflow run ids a resume continues, and the steps each was sent
    runs/NAME/members/003/         a sweep's member 3, a run folder of its own (craft.sweep)

A folder from before the marker existed (``config.toml`` with ``checkpoints/``
or ``metrics.jsonl``) is accepted as a run folder, so old runs can still be replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from craft.words import cannot_write

CONFIG_FILE = "config.toml"
TOKENIZER_FILE = "tokenizer.json"
CLASSES_FILE = "classes.json"
MARKER_FILE = ".craft-run"
LOCK_FILE = ".lock"
CHECKPOINTS = "checkpoints"
MEMBERS_DIR = "members"  # a sweep's members, each an ordinary run folder: runs/NAME/members/003
_OWN = {MARKER_FILE, LOCK_FILE}  # files that alone do not make a folder "used"


class RunError(Exception):
    """A run that cannot start or go on, for a reason the user can fix."""


class InUse(RunError):
    """``run_dir``'s lock is held by another craft run, process ``pid``."""

    def __init__(self, run_dir: Path, pid: str) -> None:
        super().__init__(f"run folder {str(run_dir)!r} is in use by another craft run (PID {pid}); "
                         "wait for it to end, or choose another name")
        self.pid = pid


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
    free one, as Lightning numbers versions) and a line saying so, a folder another run holds too (with a flag,
    ``check_run_dir`` refuses that one, naming the process)."""
    out, name = Path(exp.out_dir), exp.name
    pid = None if resume or overwrite else holder(out / name)
    if resume or overwrite or not (is_used(out / name) or pid):
        return exp, None
    n = 2
    while is_used(out / f"{name}-{n}") or (out / f"{name}-{n}" / LOCK_FILE).exists():
        n += 1
    new = attrs.evolve(exp, name=f"{name}-{n}")
    why = f"is in use by another craft run (PID {pid})" if pid else "holds an earlier run"
    return new, (
        f"{str(out / name)!r} {why}: this one is {str(out / new.name)!r} "
        f"(--resume continues {name!r}, --overwrite replaces it)"
    )


@contextlib.contextmanager
def claimed(exp: Any, *, resume: bool, overwrite: bool, echo: Callable[[str], None]) -> Iterator[tuple[Any, Path]]:
    """``locked`` on ``exp``'s run folder for the block, yielding ``(exp, run_dir)``. A new run (neither flag)
    whose folder another run locked first, after ``fresh_name`` found it free (two identical commands started at
    once), takes the next free name instead, said as ``fresh_name`` says it; with a flag, the lock is the error."""
    with contextlib.ExitStack() as stack:
        while True:
            run_dir = Path(exp.out_dir) / exp.name
            try:
                stack.enter_context(locked(run_dir))
                break
            except InUse:
                if resume or overwrite:
                    raise
                exp, note = fresh_name(exp, resume=False, overwrite=False)
                if note:  # None: the other run let go meanwhile, so the folder is tried again
                    echo(note)
        yield exp, run_dir


def config_line(run_dir: Path) -> str:
    """The line a run (or a sweep) starts with: its folder, and where its resolved config is."""
    return f"run folder {run_dir} (the resolved config: {run_dir / CONFIG_FILE}; --print_config prints it)"


def check_run_dir(exp: Any, *, resume: bool, overwrite: bool, echo: Callable[[str], None] = print) -> Path:
    """The run folder, after checking the flags fit it (``echo`` says what ``--overwrite`` replaces);
    nothing is touched yet."""
    run_dir = Path(exp.out_dir) / exp.name
    if resume and overwrite:
        raise RunError("choose one of --resume and --overwrite")
    check_free(run_dir)
    used = is_used(run_dir)
    if used and not (resume or overwrite):
        raise RunError(f"run folder {str(run_dir)!r} already exists; pass --resume to continue it or --overwrite to replace it")
    if resume and not used:
        raise RunError(f"nothing to resume: {str(run_dir)!r} does not exist; drop --resume to start the run")
    if resume and not is_run_folder(run_dir):  # taken over, a later --overwrite would delete what it held
        raise RunError(f"nothing to resume: {str(run_dir)!r} was not made by craft (no {MARKER_FILE} marker); "
                       "choose another name, or out_dir")
    if not resume:
        check_not_nested(run_dir)
    if overwrite and used:
        check_replaceable(run_dir, Path(exp.out_dir), data_paths(exp))
        echo(f"--overwrite: the run in {run_dir} is replaced as this one starts")
    return run_dir


def check_not_nested(run_dir: Path) -> None:
    """Raise if ``run_dir`` would be inside another run folder (not as a sweep's member): ``--overwrite``
    of that run would delete this one."""
    inner = run_dir.resolve()
    for outer in inner.parents:  # by the marker only: a project's root may hold config.toml and checkpoints/
        if (outer / MARKER_FILE).is_file() and inner.relative_to(outer).parts[0] != MEMBERS_DIR:
            raise RunError(f"run folder {str(run_dir)!r} would be inside the run folder {str(outer)!r}, and replacing "
                           "that run would delete it; choose an out_dir outside it")


def checkpoint_file(run_dir: Path, name: str) -> Path:
    """The file ``--checkpoint=NAME`` names (``latest`` is the caller's): ``best`` is ``checkpoints/best.pt``; a
    bare file name one in ``checkpoints/``; a path is read as any command-line path (from the current folder),
    else from the run folder. None there: a ``RunError`` naming the paths tried and the checkpoints the run has."""
    ckpt_dir, given = run_dir / CHECKPOINTS, Path(name)
    if name == "best":
        tried = [ckpt_dir / "best.pt"]
    else:  # a file name alone (step_00000200.pt) is first of all one of the run's checkpoints
        tried = list(dict.fromkeys(([ckpt_dir / given] if len(given.parts) == 1 else []) + [given, run_dir / given]))
    found = next((path for path in tried if path.is_file()), None)
    if found is not None:
        return found
    have = sorted(p.name for p in ckpt_dir.glob("*.pt")) if ckpt_dir.is_dir() else []
    hint = " (best.pt is written with train.early_stopping)" if name == "best" else ""
    raise RunError(
        f"--checkpoint={name}: no file at {' nor at '.join(repr(str(p)) for p in tried)}{hint}; "
        f"{str(ckpt_dir)!r} has: {', '.join(have) or 'no checkpoints'} (or use latest)"
    )


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
    nested = next(nested_runs(run_dir), None)
    if nested is not None:
        raise RunError(f"--overwrite: {str(run_dir)!r} holds another run ({str(nested)!r}); move that run out first, "
                       "or choose another name")


def nested_runs(run_dir: Path) -> Iterator[Path]:
    """Run folders inside ``run_dir`` other than its sweep members (``members/NNN``); links are not followed."""
    for folder, subfolders, files in os.walk(run_dir):
        here = Path(folder)
        if here == run_dir:
            subfolders[:] = [d for d in subfolders if d != MEMBERS_DIR]
        elif MARKER_FILE in files:
            yield here


def _take(fd: int, run_dir: Path) -> None:
    """``flock`` ``fd`` exclusively, or raise the ``RunError`` naming the process that holds it."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InUse(run_dir, os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown") from None


def holder(run_dir: Path) -> str | None:
    """The PID of the run that holds ``run_dir``'s lock (``unknown`` if it wrote none); None when it is free."""
    try:
        check_free(run_dir)
    except InUse as e:
        return e.pid
    return None


def check_free(run_dir: Path) -> None:
    """Raise ``InUse`` if another run holds ``run_dir``'s lock (checked before anything else is said about the folder)."""
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


def write_data_files(run_dir: Path, data: Any) -> None:
    """What decodes the run's outputs, kept past the data: ``tokenizer.json`` (text and captions) and
    ``classes.json`` (a classifier's class names, in the order of its outputs); a sweep's members get them too."""
    if (tokenizer := getattr(data, "tokenizer", None)) is not None:
        try:
            tokenizer.save(run_dir / TOKENIZER_FILE)
        except OSError as e:
            raise RunError(cannot_write(repr(str(run_dir / TOKENIZER_FILE)), e)) from None
    if classes := getattr(data, "classes", None):
        write_atomic(run_dir / CLASSES_FILE, json.dumps(list(classes), ensure_ascii=False, indent=1) + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a kill leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunError(cannot_write(repr(str(path)), e)) from None
