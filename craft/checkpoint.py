"""Checkpoints: atomic writes, safe loads, the last K kept.

A checkpoint is a plain dict of tensors and Python primitives, written to a
temporary file and renamed into place (so a crash never leaves a half-written
``step_*.pt``), and read back with ``torch.load(weights_only=True)`` (so
loading never runs code from the file). Optimizer states are pytrees of
NamedTuples, which ``weights_only`` refuses: they are stored as their leaves
keyed by their place in the tree (``"[0].mu['fc.weight']"``) and rebuilt on the
structure of a freshly initialised state, every leaf put back at its own place
(a state whose dicts list the params in another order, as after
``craft.freezing.unfreeze``, keeps each parameter's moments).
"""

from __future__ import annotations

import os
import random
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree as pytree

from craft.step import TrainState

FORMAT = 1
_STEP_FILE = re.compile(r"step_(\d+)\.pt$")


class CheckpointError(Exception):
    """A checkpoint that cannot be used: corrupt, or from a different experiment."""


def state_to_dict(state: TrainState) -> dict[str, Any]:
    return {
        "params": state.params,
        "buffers": state.buffers,
        "opt_state": {pytree.keystr(path): leaf for path, leaf in pytree.tree_flatten_with_path(state.opt_state)[0]},
        "step": state.step,
        "rng": state.rng,
    }


def state_from_dict(saved: dict[str, Any], template: TrainState) -> TrainState:
    """Rebuild a TrainState on the structure, order (and device) of ``template``, every tensor matched by name."""
    if not isinstance(saved, dict) or not set(TrainState._fields) <= saved.keys():
        raise CheckpointError("checkpoint has no complete train state: it was not written by craft's run")
    for part in ("params", "buffers"):
        want, got = template._asdict()[part], saved[part]
        if want.keys() != got.keys() or any(want[k].shape != got[k].shape for k in want):
            diff = sorted(want.keys() ^ got.keys()) or [k for k in want if want[k].shape != got[k].shape]
            raise CheckpointError(
                f"checkpoint {part} do not match this model ({', '.join(diff[:5])}): "
                "it was written by a different model config"
            )
    flat, spec = pytree.tree_flatten_with_path(template.opt_state)
    leaves = [leaf for _, leaf in flat]
    got = _opt_leaves(saved, [pytree.keystr(path) for path, _ in flat])
    if got is None or any(a.shape != b.shape for a, b in zip(leaves, got)):
        raise CheckpointError("checkpoint optimizer state does not match this optimizer config")

    def like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return t.to(device=ref.device, dtype=ref.dtype)

    return TrainState(
        params={k: like(saved["params"][k], v) for k, v in template.params.items()},
        buffers={k: like(saved["buffers"][k], v) for k, v in template.buffers.items()},
        opt_state=pytree.tree_unflatten([like(a, b) for a, b in zip(got, leaves)], spec),
        step=like(saved["step"], template.step),
        rng=saved["rng"].cpu(),
    )


def _opt_leaves(saved: dict[str, Any], keys: list[str]) -> list[Any] | None:
    """The saved optimizer-state leaves for the places ``keys`` (the template's), in that order; None when
    they do not fit. Matched by place, not position: after unfreeze a state's dicts list the params in
    another order than a fresh state's, and by position same-shaped moments would swap. A checkpoint
    written before places were saved holds a list, matched by position as it was written."""
    leaves = saved["opt_state"]
    if isinstance(leaves, dict):
        return [leaves[k] for k in keys] if leaves.keys() == set(keys) else None
    return list(leaves) if len(leaves) == len(keys) else None


def shaped_like(model: torch.nn.Module, saved: dict[str, Any]) -> torch.nn.Module:
    """``model`` with its lazy (not yet shaped) parameters and buffers given the shapes of the saved state's
    tensors of the same names: a model of ``nn.LazyLinear`` layers is shaped by its first input in a run, and a
    model built again to load the run has seen none."""
    tensors = {**saved.get("params", {}), **saved.get("buffers", {})} if isinstance(saved, dict) else {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if torch.nn.parameter.is_lazy(t) and isinstance(tensors.get(name), torch.Tensor):
            t.materialize(tensors[name].shape)
    return model


def save(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600: readable like the rest of the run folder
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)
    return path


def _umask() -> int:
    """The process's umask (reading it means setting it: put it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (a power cut could otherwise undo it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely; a corrupt or foreign file is a ``CheckpointError``."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as e:  # torch raises many types for truncated/corrupt files
        first = next(iter(str(e).strip().splitlines()), "") or "empty or truncated file"
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a craft checkpoint (format {FORMAT})")
    return payload


def step_path(folder: Path, step: int) -> Path:
    return folder / f"step_{step:08d}.pt"


def step_number(path: Path) -> int:
    """The step a ``step_*.pt`` file's name says."""
    return int(_STEP_FILE.search(path.name).group(1))


def step_files(folder: Path) -> list[Path]:
    """The ``step_*.pt`` files of ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _STEP_FILE.search(p.name)), key=step_number)


def load_latest(
    folder: Path,
    on_skip: Callable[[CheckpointError], None] | None = None,
    check: Callable[[Path, dict[str, Any]], None] | None = None,
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; corrupt ones are reported (``on_skip``, else a warning) and skipped.

    ``check(path, payload)`` raises ``CheckpointError`` for a file that loads
    but holds the wrong things; it is skipped like a corrupt one.
    """
    for path in reversed(step_files(folder)):
        try:
            payload = load(path)
            if check is not None:
                check(path, payload)
            return path, payload
        except CheckpointError as e:
            if on_skip is None:
                warnings.warn(f"skipping {e}", stacklevel=2)
            else:
                on_skip(e)
    return None


def set_aside_after(folder: Path, step: int, suffix: str = ".corrupt") -> list[Path]:
    """Rename the step checkpoints newer than ``step`` to ``NAME{suffix}`` (``free_name``: never over another).

    A run resumed from ``step`` writes those steps again; left in place, they
    would count as the newest when pruning and push out the good ones.
    """
    return [p.replace(free_name(p.with_name(p.name + suffix))) for p in step_files(folder) if step_number(p) > step]


def free_name(path: Path) -> Path:
    """``path``, or ``path.2``, ``path.3``... the first that does not exist: what is set aside twice keeps both."""
    n, free = 2, path
    while free.exists():
        free, n = path.with_name(f"{path.name}.{n}"), n + 1
    return free


def saved_step(payload: dict[str, Any]) -> int:
    """The step a checkpoint's payload holds (a sweep's: its members', all alike)."""
    return int(payload["state"]["step"].reshape(-1)[0])


def prune(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints, and temporary files a killed write left.

    Call it only between writes: any temporary file then belongs to a write that died.
    """
    for path in step_files(folder)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)
    for path in folder.glob(".*.tmp") if folder.is_dir() else []:
        path.unlink(missing_ok=True)


def rng_states() -> dict[str, Any]:
    """The host's random generators (torch's CPU one, Python's, NumPy's legacy one) as checkpoint data."""
    states = {"torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is optional
        return states
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    states["numpy_rng"] = {
        "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
        "has_gauss": int(has_gauss), "cached_gaussian": float(cached),
    }
    return states


def restore_rng(payload: dict[str, Any]) -> None:
    """Set the generators ``rng_states`` saved (a checkpoint without NumPy's leaves it alone)."""
    torch.set_rng_state(payload["torch_rng"])
    random.setstate(payload["python_rng"])
    saved = payload.get("numpy_rng")
    if saved is not None:
        import numpy as np

        keys = saved["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"]))


def check_run_payload(path: Path, payload: dict[str, Any]) -> None:
    """Raise ``CheckpointError`` unless ``payload`` holds what a run's checkpoint holds, of the right kinds.

    A file that loads but holds the wrong things (a list for ``params``, a
    generator state of the wrong size) is as unusable as a corrupt one.
    """
    state = payload.get("state")
    problems = [] if isinstance(state, dict) else ["state is not a table"]
    if not problems:
        problems += [f"state.{k} is not a table of tensors" for k in ("params", "buffers")
                     if not isinstance(state.get(k), dict) or not all(isinstance(v, torch.Tensor) for v in state[k].values())]
        problems += [f"state.{k} is not a tensor" for k in ("step", "rng") if not isinstance(state.get(k), torch.Tensor)]
        if not isinstance(state.get("opt_state"), (list, dict)):  # a list: written before leaves had places
            problems.append("state.opt_state is not a table or a list")
    rng = payload.get("torch_rng")
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
        problems.append("torch_rng is not a generator state")
    if not isinstance(payload.get("python_rng"), tuple):
        problems.append("python_rng is not a generator state")
    problems += [f"{k} is not a table" for k in ("data", "progress", "config") if not isinstance(payload.get(k), dict)]
    if problems:
        raise CheckpointError(f"{path}: unreadable checkpoint ({problems[0]})")
