"""Starting a run from existing weights (``[train] init_from``): fine-tuning, not resuming.

::

    path = source(exp.train, run_dir, resume)        # before the run folder is made: a typo leaves no run
    lines = load_into(model, path, exp.train.init_skip, exp.model.kind)   # into the nn.Module, before init_state

The source is a craft run folder (its latest checkpoint's weights, their
moving average with ``train.ema_decay``, as ``craft export`` takes them), one
of its ``checkpoints/*.pt``, a ``craft export`` folder (``model.safetensors``),
a ``.safetensors`` file, or a torch state-dict file (``torch.save(model.state_dict())``,
read with ``weights_only=True``; a dict holding it under ``state_dict`` or
``model`` too). Only parameters and buffers are taken: optimizer state, step
and generators start fresh. A resumed run that has a checkpoint never reads
the source again: the checkpoint wins.

Names and shapes must match the model's; ``train.init_skip`` (fnmatch globs)
leaves the tensors it matches at their fresh init (a new head). A prefix every
name shares, ``module.`` (DDP) or ``_orig_mod.`` (``torch.compile``), is taken off.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from craft import checkpoint
from craft.parts import eval_weights
from craft.rundir import CHECKPOINTS, CONFIG_FILE, RunError
from craft.trained import load_run
from craft.words import few, plural

EXPORT_FILE = "model.safetensors"
PREFIXES = ("module.", "_orig_mod.")
KINDS = "a run folder, an export folder (model.safetensors), a .safetensors file or a torch state-dict file"


class Weights(NamedTuple):
    """Tensors by name, and where they came from, in words (``runs/a (step 400)``)."""

    tensors: dict[str, torch.Tensor]
    said: str


def source(train: Any, run_dir: Path, resume: bool) -> Path | None:
    """The path ``train.init_from`` names, checked readable; None without one, or when ``resume`` continues a
    run that has a checkpoint (the checkpoint wins; the source may be gone by now)."""
    if train.init_from is None or (resume and checkpoint.step_files(Path(run_dir) / CHECKPOINTS)):
        return None
    path = Path(train.init_from).expanduser()
    if not path.exists():
        raise RunError(f"train.init_from: no such file or folder {str(path)!r} (relative paths start at the current "
                       f"folder); give {KINDS}")
    if not os.access(path, os.R_OK):
        raise RunError(f"train.init_from: {str(path)!r} is not readable; check its permissions")
    return path


def load_into(model: nn.Module, path: Path | None, skip: list[str] = (), kind: str = "model") -> list[str]:
    """Copy the weights at ``path`` into ``model``, those ``skip`` matches left at init; the line saying what was
    loaded, or none without a ``path``. Torch's generators are left as they were. ``kind`` names the model in
    messages (``model.kind``)."""
    if path is None:
        return []
    with torch.random.fork_rng(devices=[]):  # building a source run's model seeds torch: not this run's business
        weights = read(Path(path))
    tensors = unprefixed(weights.tensors, expected_names(model))
    loaded, left = fit(model, tensors, list(skip), f"train.init_from: {weights.said}", kind)
    with torch.no_grad():
        model.load_state_dict({name: tensors[name] for name in loaded}, strict=False)
    kept = f"; left at init: {few(left)}" if left else ""
    return [f"init_from: {plural(len(loaded), 'tensor')} from {weights.said}{kept}; weights only: the optimizer, "
            "step and generators start fresh"]


def read(path: Path) -> Weights:
    """The tensors of the source at ``path`` (see the module docstring)."""
    if path.is_dir():
        if (path / CONFIG_FILE).is_file():
            return run_weights(path)
        if (path / EXPORT_FILE).is_file():
            return Weights(safetensors_file(path / EXPORT_FILE), str(path))
        raise RunError(f"train.init_from: {str(path)!r} is a folder, but not a run folder ({CONFIG_FILE}) nor an "
                       f"export ({EXPORT_FILE}); give {KINDS}")
    if path.suffix == ".safetensors":
        return Weights(safetensors_file(path), str(path))
    saved = torch_file(path)
    if isinstance(saved.get("state"), dict) and "format" in saved:  # a craft checkpoint
        run_dir = path.parent.parent
        if path.parent.name == CHECKPOINTS and (run_dir / CONFIG_FILE).is_file():
            return run_weights(run_dir, path)  # as its run folder gives it (the moving average, if kept)
        return Weights({**saved["state"]["params"], **saved["state"]["buffers"]}, str(path))
    return Weights(state_dict_in(saved, path), str(path))


def run_weights(run_dir: Path, file: Path | None = None) -> Weights:
    """A run folder's weights at its latest checkpoint or ``file``: their moving average with ``train.ema_decay``,
    as ``craft export`` and ``craft evaluate`` take them."""
    try:
        _, _, state = load_run(run_dir, "latest" if file is None else str(file))
    except (RunError, checkpoint.CheckpointError) as e:  # a sweep's folder, a run without a readable checkpoint
        raise RunError(f"train.init_from: {e}") from None
    averaged = eval_weights(state)
    what = f"step {int(state.step)}" + (", the weights' moving average" if averaged is not state else "")
    return Weights({**averaged.params, **state.buffers}, f"{file or run_dir} ({what})")


def safetensors_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise RunError(f"train.init_from: {str(path)!r} is not a readable safetensors file ({first_line(e)})") from None


def torch_file(path: Path) -> dict[str, Any]:
    """A ``torch.save`` file read with ``weights_only=True`` (no code from the file runs), which must hold a dict."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for foreign, pickled or truncated files
        raise RunError(
            f"train.init_from: {str(path)!r} cannot be read as a state dict with weights_only=True ({first_line(e)}); "
            "save model.state_dict() (torch.save) or a .safetensors file, not the model object"
        ) from None
    if not isinstance(saved, dict):
        raise RunError(f"train.init_from: {str(path)!r} holds a {type(saved).__name__}, not a state dict; "
                       "save model.state_dict()")
    return saved


def state_dict_in(saved: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The state dict ``saved`` is, or holds under ``state_dict`` (Lightning) or ``model`` (nanoGPT)."""
    for candidate in (saved, saved.get("state_dict"), saved.get("model")):
        if isinstance(candidate, dict) and candidate and all(isinstance(v, torch.Tensor) for v in candidate.values()):
            return dict(candidate)
    raise RunError(f"train.init_from: {str(path)!r} is not a state dict (a dict of tensors by name, keys "
                   f"{few(map(str, saved))}); save model.state_dict()")


def first_line(error: Exception) -> str:
    return next(iter(str(error).strip().splitlines()), "") or type(error).__name__


def expected_names(model: nn.Module) -> set[str]:
    """The names ``model``'s weights go by: its state dict's, and its non-persistent buffers'."""
    return set(model.state_dict()) | {name for name, _ in model.named_buffers()}


def unprefixed(tensors: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """``tensors`` without a ``module.``/``_orig_mod.`` prefix all their names share (DDP, ``torch.compile``),
    as often as one is there, unless the model's own names have it."""
    while tensors:
        prefix = next((p for p in PREFIXES if all(k.startswith(p) for k in tensors)
                       and not any(e.startswith(p) for e in expected)), None)
        if prefix is None:
            return tensors
        tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
    return tensors


def tied_names(model: nn.Module) -> dict[str, set[str]]:
    """Each state-dict name of ``model`` -> the names of the same tensor (tied weights share one)."""
    by_tensor: dict[int, set[str]] = {}
    entries = model.state_dict(keep_vars=True)
    for name, t in entries.items():
        by_tensor.setdefault(id(t), set()).add(name)
    return {name: by_tensor[id(t)] for name, t in entries.items()}


def matches(name: str, globs: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def fit(model: nn.Module, tensors: dict[str, torch.Tensor], skip: list[str], where: str, kind: str) -> tuple[list[str], list[str]]:
    """The names of ``tensors`` to load into ``model`` and the model's names left at init (``skip``; a tied
    weight goes with all its names), or a ``RunError`` naming the names that do not match."""
    shapes, tied = {n: t.shape for n, t in model.state_dict().items()}, tied_names(model)
    derived = expected_names(model) - shapes.keys()  # non-persistent buffers: the model computes them
    unused = [g for g in skip if not any(fnmatch.fnmatchcase(n, g) for n in [*shapes, *tensors])]
    if unused:
        raise RunError(f"train.init_skip: {unused[0]!r} matches no tensor of model {kind!r} nor of the source; "
                       f"the model's: {few(shapes)}")
    left = sorted({alias for n in shapes if matches(n, skip) for alias in tied[n]})
    wanted = [n for n in shapes if n not in left]
    missing = [n for n in wanted if not tied[n] & tensors.keys()]
    extra = [n for n in tensors if n not in shapes and n not in derived and not matches(n, skip)]
    loaded = [n for n in wanted if n in tensors]
    wrong = [n for n in loaded if tensors[n].shape != shapes[n]]
    if missing or extra or wrong:
        raise RunError(mismatch(where, kind, (missing, extra, wrong), shapes, tensors))
    return loaded, left


def mismatch(where: str, kind: str, names: tuple[list[str], ...], shapes: dict, tensors: dict) -> str:
    """One line: which names are missing from the source, which it has that the model lacks, which differ in
    shape, and the fix (``train.init_skip`` globs for them, where they are few)."""
    missing, extra, wrong = names
    said = [f"not in the source {few(missing, 3)}"] if missing else []
    said += [f"not in the model {few(extra, 3)}"] if extra else []
    if wrong:
        shown = ", ".join(f"{n!r} {tuple(tensors[n].shape)} (the model's {tuple(shapes[n])})" for n in wrong[:3])
        said.append(f"other shapes {shown}" + (f", ... {len(wrong)} in all" if len(wrong) > 3 else ""))
    globs = sorted({n.rsplit(".", 1)[0] + ".*" if "." in n else n for n in [*missing, *extra, *wrong]})
    skip = ", ".join(f'"{g}"' for g in globs)
    fix = f", or leave them at their fresh init with train.init_skip = [{skip}]" if len(globs) <= 3 else ""
    return f"{where} does not fit model {kind!r}: {'; '.join(said)}; give weights of a model built as this one{fix}"
