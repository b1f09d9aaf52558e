"""Starting a run from existing weights (``[train] init_from``): fine-tuning, not resuming.

::

    path = source(exp.train, run_dir, resume)        # before the run folder is made: a typo leaves no run
    lines = load_into(model, path, exp.train.init_skip, exp.model.kind, train_data)   # before init_state

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
A source folder (a run, an export) whose ``tokenizer.json`` or ``classes.json`` is
not the new data's is refused (``changed``): its embedding and head rows belong
to other tokens or classes, even where the sizes agree, unless ``init_skip``
leaves every tensor they index at init.
"""

from __future__ import annotations

import fnmatch
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from craft import checkpoint
from craft.init_vocabulary import changed, check_indexed, matches, quoted, skip_globs
from craft.parts import eval_weights
from craft.rundir import CHECKPOINTS, CONFIG_FILE, RunError
from craft.trained import load_run
from craft.words import few, plural

EXPORT_FILE = "model.safetensors"
PREFIXES = ("module.", "_orig_mod.")
KINDS = "a run folder, an export folder (model.safetensors), a .safetensors file or a torch state-dict file"
MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip file, and its legacy format (a pickle)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Weights(NamedTuple):
    """Tensors by name, where they came from, in words (``runs/a (step 400)``), the folder holding their
    ``tokenizer.json`` / ``classes.json`` (a run's, an export's) and their model's ``vocab_size`` /
    ``num_classes`` where its config says."""

    tensors: dict[str, torch.Tensor]
    said: str
    folder: Path | None = None
    sizes: dict[str, int] = {}


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


def load_into(model: nn.Module, path: Path | Weights | None, skip: list[str] = (), kind: str = "model", data: Any = None) -> list[str]:
    """Copy the weights at ``path`` into ``model``, those ``skip`` matches left at init; the line saying what was
    loaded, or none without a ``path``. Torch's generators are left as they were. ``kind`` names the model in
    messages (``model.kind``); ``data`` (the train data), when given, must have the source's tokenizer and
    classes, or ``skip`` leave what they index at init (``changed``)."""
    if path is None:
        return []
    weights = path if isinstance(path, Weights) else weights_at(path)
    tensors, skip, where = unprefixed(weights.tensors, expected_names(model)), list(skip), f"train.init_from: {weights.said}"
    change = changed(weights.folder, weights.sizes, data)
    if change:  # before fit: another vocabulary's size is said as that, not as a shape
        check_indexed(change, tensors, left_at_init(model, skip), skip, where)
    loaded, left, dropped = fit(model, tensors, skip, where, kind)
    with torch.no_grad():
        model.load_state_dict({name: tensors[name] for name in loaded}, strict=False)
    said = f"; left at init: {few(left)}" if left else ""
    said += f"; left out of the source: {few(dropped)}" if dropped else ""
    said += f"; {change.short} (its {change.unit}-indexed tensors are left at init)" if change else ""
    return [f"init_from: {plural(len(loaded), 'tensor')} from {weights.said}{said}; weights only: the optimizer, "
            "step and generators start fresh"]


def weights_at(path: Path | None) -> Weights | None:
    """``read(path)``, torch's generators left as they were (building a source run's model seeds torch): what
    ``load_into`` takes instead of the path, to read a source once for many models (a sweep's members)."""
    if path is None:
        return None
    with torch.random.fork_rng(devices=[]):
        return read(Path(path))


def read(path: Path) -> Weights:
    """The tensors of the source at ``path`` (see the module docstring)."""
    if path.is_dir():
        if (path / CONFIG_FILE).is_file():
            return run_weights(path)
        if (path / EXPORT_FILE).is_file():
            return Weights(safetensors_file(path / EXPORT_FILE), str(path), path, export_sizes(path / "config.json"))
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
        exp, _, state = load_run(run_dir, "latest" if file is None else str(file))
    except (RunError, checkpoint.CheckpointError) as e:  # a sweep's folder, a run without a readable checkpoint
        raise RunError(f"train.init_from: {e}") from None
    averaged = eval_weights(state)
    what = f"step {int(state.step)}" + (", the weights' moving average" if averaged is not state else "")
    config = exp.model.config
    sizes = {k: v for k in ("vocab_size", "num_classes") if isinstance(v := getattr(config, k, None), int)}
    return Weights({**averaged.params, **state.buffers}, f"{file or run_dir} ({what})", run_dir, sizes)


def export_sizes(config: Path) -> dict[str, int]:
    """The exported model's ``vocab_size`` / ``num_classes`` (its ``config.json``), where it says them."""
    try:
        model = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k in ("vocab_size", "num_classes") if isinstance(model, dict) and isinstance(v := model.get(k), int)}


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
        raise RunError(f"train.init_from: {str(path)!r} {unreadable(path, e)}") from None
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


def unreadable(path: Path, error: Exception) -> str:
    """Why ``torch.load`` refused ``path``, in words; never torch's advice to load with weights_only=False,
    which runs the code a file holds."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(MAGIC):  # empty, text, another format
        return f"is not a file torch.save wrote (nor a .safetensors file); give {KINDS}"
    if isinstance(error, pickle.UnpicklingError):  # weights_only met a class: a pickled module, an optimizer...
        return "holds Python objects besides tensors (a whole model object?): save model.state_dict() instead"
    return f"cannot be read by torch.load ({first_line(error)}); was the file cut short? save it again"


def first_line(error: Exception) -> str:
    return ANSI.sub("", next(iter(str(error).strip().splitlines()), "")) or type(error).__name__


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


def left_at_init(model: nn.Module, skip: list[str]) -> list[str]:
    """The model's names ``skip`` leaves at init; a tied weight goes with all its names."""
    tied = tied_names(model)
    return sorted({alias for n in tied if matches(n, skip) for alias in tied[n]})


def fit(model: nn.Module, tensors: dict[str, torch.Tensor], skip: list[str], where: str, kind: str) -> tuple[list[str], ...]:
    """The names of ``tensors`` to load into ``model``, the model's names left at init (``left_at_init``) and
    the source's names ``skip`` leaves out, or a ``RunError`` naming the names that do not match."""
    shapes, tied = {n: t.shape for n, t in model.state_dict().items()}, tied_names(model)
    derived = expected_names(model) - shapes.keys()  # non-persistent buffers: the model computes them
    unused = [g for g in skip if not any(fnmatch.fnmatchcase(n, g) for n in [*shapes, *tensors])]
    if unused:
        raise RunError(f"train.init_skip: {unused[0]!r} matches no tensor of model {kind!r} nor of the source; "
                       f"the model's: {few(shapes)}")
    left = left_at_init(model, skip)
    wanted = [n for n in shapes if n not in left]
    if not wanted:
        raise RunError(f"train.init_skip: [{quoted(skip)}] leaves every tensor of model {kind!r} at init, so nothing "
                       "would be loaded; remove train.init_from and train.init_skip to start from a fresh init")
    missing = [n for n in wanted if not tied[n] & tensors.keys()]
    unknown = [n for n in tensors if n not in shapes and n not in derived]
    extra, dropped = [n for n in unknown if not matches(n, skip)], [n for n in unknown if matches(n, skip)]
    loaded = [n for n in wanted if n in tensors]
    wrong = [n for n in loaded if tensors[n].shape != shapes[n]]
    if missing or extra or wrong:
        raise RunError(mismatch(where, kind, (missing, extra, wrong), shapes, tensors))
    return loaded, left, dropped


def mismatch(where: str, kind: str, names: tuple[list[str], ...], shapes: dict, tensors: dict) -> str:
    """One line: which names are missing from the source, which it has that the model lacks, which differ in
    shape, and the fix (``train.init_skip`` globs for them, where they are few)."""
    missing, extra, wrong = names
    said = [f"not in the source {few(missing, 3)}"] if missing else []
    said += [f"not in the model {few(extra, 3)}"] if extra else []
    if wrong:
        shown = ", ".join(f"{n!r} {tuple(tensors[n].shape)} (the model's {tuple(shapes[n])})" for n in wrong[:3])
        said.append(f"other shapes {shown}" + (f", ... {len(wrong)} in all" if len(wrong) > 3 else ""))
    globs = skip_globs([*missing, *extra, *wrong], [*shapes, *tensors])
    fix = f", or leave them at their fresh init with train.init_skip = [{quoted(globs)}]" if globs is not None else ""
    return f"{where} does not fit model {kind!r}: {'; '.join(said)}; give weights of a model built as this one{fix}"
