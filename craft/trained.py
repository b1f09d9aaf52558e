"""Serving finished runs: load a run folder's model and state, evaluate it, sample from it, plot it.

    exp, parts, state = load_run("runs/gpt_char")
    text = sample_run("runs/gpt_char", Sample(prompt="ROMEO:"))
    model = load_model("runs/gpt_char")                 # the nn.Module with the trained weights
    export("runs/gpt_char", "exported/gpt_char")        # model.safetensors + config.json (+ tokenizer.json)
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import attrs
import torch
from torch import nn

from craft import checkpoint
from craft.checks import check_components
from craft.config import Experiment, Sample
from craft.config import load as load_config
from craft.logging import plot_metrics
from craft.data.augment import crop_size
from craft.other_data import check_classes, in_run_ids, other_experiment, other_val_data
from craft.parts import Parts, build_data, build_parts, eval_weights, evaluate_batches, measured
from craft.rundir import CHECKPOINTS, CLASSES_FILE, CONFIG_FILE, TOKENIZER_FILE, RunError, saved_config
from craft.runfolder import MEMBERS_DIR, checkpoint_file
from craft.step import TrainState, init_state, make_eval_step
from craft.unreadable import split_line
from craft.words import plural


class LoadedRun(NamedTuple):
    exp: Experiment
    parts: Parts
    state: TrainState


def load_run(run_dir: Path, checkpoint_name: str = "latest") -> LoadedRun:
    """A run folder's experiment, built parts and the state of one of its checkpoints.

    ``checkpoint_name``: ``latest`` (the newest readable one), ``best``, or a file: a name in the run's
    ``checkpoints/``, or a path (``craft.runfolder.checkpoint_file``).
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        export = " but an export (model.safetensors, config.json): give the run folder it came from" if (
            run_dir / "model.safetensors").is_file() else ""
        raise RunError(f"{run_dir} is not a run folder (no {CONFIG_FILE}){export}")
    exp = load_config(run_dir / CONFIG_FILE)
    if exp.sweep and (run_dir / MEMBERS_DIR).is_dir():  # one checkpoint holds every member, stacked
        first = min((p.name for p in (run_dir / MEMBERS_DIR).iterdir() if p.is_dir()), default="000")
        raise RunError(f"{run_dir} is a sweep: give one member's run folder, e.g. {run_dir / MEMBERS_DIR / first}")
    ckpt_dir = run_dir / CHECKPOINTS
    if checkpoint_name == "latest":
        found = checkpoint.load_latest(ckpt_dir, check=checkpoint.check_run_payload)
        if found is None:
            raise RunError(f"no readable checkpoint in {ckpt_dir}{_unfinished_member(run_dir)}")
        payload = found[1]
    else:
        path = checkpoint_file(run_dir, checkpoint_name)
        payload = checkpoint.load(path)
    parts = build_parts(exp)
    model = checkpoint.shaped_like(parts.model, payload["state"])  # a lazy model takes the checkpoint's shapes
    state = checkpoint.state_from_dict(payload["state"], init_state(model, parts.optimizer, seed=exp.seed))
    return LoadedRun(exp, parts, state)


def evaluate(
    run_dir: Path, checkpoint_name: str = "latest", data: dict[str, str] | None = None, *, whole_split: bool = False,
    say=None,
) -> dict[str, float]:
    """Re-evaluate a run's checkpoint (``latest``, ``best`` or a file name) on its val split, or, with
    ``data`` (``{"data.val_path": "..."}``: ``[data]`` keys as typed on the command line), on other data
    (a test set) read the way the run read its own, with the run's model, task and tokenizer.

    The split is read as the run read its own, so the figures on the run's own split equal its last logged
    ones: ``train.eval_batches`` batches spread over it (other data: all of them), a token folder's
    ``data.val_windows`` evenly spaced windows. ``whole_split`` reads all of the split. ``say`` (a callable)
    is told in a line which part was read, when it is a part, and a token folder's whole split as its run said it.
    """
    exp, parts, state = load_run(run_dir, checkpoint_name)
    used = whole(other_experiment(Path(run_dir), exp, data) if data else exp, whole_split)
    batches = other_val_data(Path(run_dir), used, build_data) if data else build_data(used, "val")
    if data:  # other data's token ids and labels, renumbered to the run's
        batches = in_run_ids(Path(run_dir), batches, used, data)
    check_components(used, parts, batches)  # other data the model cannot take (--data.image_size) is one line
    check_classes(Path(run_dir), getattr(batches, "classes", None))
    task = measured(parts, batches).task  # bpc or bpb, as the run counted them
    eval_step = make_eval_step(parts.model, task.loss, inputs=task.inputs, precision=exp.train.precision, compile=False)
    limit = eval_limit(exp, data, whole_split)
    metrics = evaluate_batches(eval_step, state, batches, parts.device, task, limit)
    for line in filter(None, (split_line("val", batches), what_was_read(batches, limit))) if say else ():
        say(line)  # what was read (data.path, the split: a held-out fraction, ...), as training says it
    return {"step": int(state.step), **metrics}


def whole(exp: Experiment, whole_split: bool) -> Experiment:
    """``exp``, or with ``whole_split`` its data without ``val_windows`` (a token folder's evenly spaced
    windows of val.bin), so that all of the split is read."""
    config = exp.data.config
    if not whole_split or getattr(config, "val_windows", None) is None:
        return exp
    return attrs.evolve(exp, data=attrs.evolve(exp.data, config=attrs.evolve(config, val_windows=None)))


def eval_limit(exp: Experiment, data: dict[str, str] | None, whole_split: bool) -> int | None:
    """The batches ``evaluate`` reads: the run's ``train.eval_batches`` on its own split; None (all) for other
    data or ``whole_split``."""
    return None if data or whole_split else exp.train.eval_batches


def what_was_read(batches, limit: int | None) -> str | None:
    """What ``evaluate`` read of ``batches``, in a line: a part of the split, or a token folder's whole val split
    (the line its run printed, ``evaluation``); None for any other whole split."""
    if limit is not None:
        return (f"val: {plural(limit, 'batch', 'batches')} spread over the split (train.eval_batches = {limit}), "
                "as the run logged them; --whole_split evaluates all of it")
    if getattr(batches, "partial", False):  # a token folder's data.val_windows
        return f"{batches.evaluation}, data.val_windows as the run read its own; --whole_split evaluates all of it"
    return getattr(batches, "evaluation", None)


def sample_text(
    model: nn.Module,
    state: TrainState,
    tokenizer,
    options: Sample,
    *,
    stop: str | None = None,
    use_cache: bool = True,
    context: dict[str, torch.Tensor] | None = None,
    on_text=None,
) -> str:
    """New text from ``model`` with ``state``'s parameters (their moving average with
    ``train.ema_decay``), continuing ``options.prompt``.

    ``context``: the model's other inputs (a captioner's image); ``on_text``:
    called with each new piece of text as it comes; see ``craft.generate``.
    """
    from craft.generate import generate_text

    state = eval_weights(state)
    return generate_text(
        model, {**state.params, **state.buffers}, tokenizer, options.prompt,
        max_new_tokens=options.max_new_tokens, temperature=options.temperature,
        top_k=options.top_k, top_p=options.top_p, seed=options.seed, use_cache=use_cache, stop=stop,
        context=context, on_text=on_text,
    )


def sample_run(
    run_dir: Path,
    options: Sample,
    *,
    checkpoint_name: str = "latest",
    stop: str | None = None,
    use_cache: bool = True,
    image: str | Path | None = None,
    on_text=None,
) -> str:
    """Text sampled from a run trained on text data, decoded with the run's tokenizer.

    With ``image`` (a run trained on captions): that image's caption.
    ``options.prompt`` then holds the begin marker (``BOUNDARY``) and the
    caption's first words, if any; the caption runs to the end marker, or
    until it fills the model's ``block_size``, and comes back without markers.
    """
    from craft.data.tokenizers import BOUNDARY, load_tokenizer

    run_dir = Path(run_dir)
    path = run_dir / TOKENIZER_FILE
    if (run_dir / CONFIG_FILE).exists() and not path.exists():
        data = (saved_config(run_dir) or {}).get("data")
        tokens = isinstance(data, dict) and data.get("kind") == "tokens"
        why = ("its token files came without a tokenizer (set data.tokenizer, or prepare them with craft prepare tokens)"
               if tokens else "generation needs a run trained on text or captions")
        raise RunError(f"{run_dir} has no {TOKENIZER_FILE} to decode samples with: {why}")
    exp = load_config(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).exists() else None
    read_image = getattr(exp.data.config, "load_image", None) if exp is not None else None
    if image is None and read_image is not None:
        raise RunError(f"{run_dir} is a captioning run: give the image to caption, --image=PATH")
    if image is not None and exp is not None and read_image is None:
        raise RunError(f"--image: {run_dir} was trained on {exp.data.kind!r} data, not captions; drop --image")
    if image is not None and not Path(image).is_file():
        raise RunError(f"--image {image}: " + ("a folder; give one image file in it to caption" if Path(image).is_dir() else "no such file"))
    exp, parts, state = load_run(run_dir, checkpoint_name)
    tokenizer = load_tokenizer(path)
    if image is None:
        return sample_text(parts.model, state, tokenizer, options, stop=stop, use_cache=use_cache, on_text=on_text)
    if not options.prompt.startswith(BOUNDARY):
        raise ValueError(f"a caption's prompt starts with the begin marker {BOUNDARY!r}, got {options.prompt!r}")
    try:
        pixels = read_image(image).to(parts.device)[None]  # (1, C, S, S)
    except ValueError as e:  # the folder readers' advice ("replace or delete it") is not for a file to caption
        raise RunError(f"--image: {str(e).partition('; replace or delete')[0]}; give an image file to caption") from None
    room = parts.model.block_size - len(tokenizer.encode(options.prompt))
    if room < 1:
        raise RunError(f"the prompt fills the model's block_size ({parts.model.block_size} tokens); shorten it")
    options = attrs.evolve(options, max_new_tokens=min(options.max_new_tokens, room))
    new = sample_text(parts.model, state, tokenizer, options, stop=BOUNDARY, use_cache=use_cache, context={"image": pixels})
    start = options.prompt.removeprefix(BOUNDARY)
    return tokenizer.decode(tokenizer.encode(start) + tokenizer.encode(new))  # words are joined by the tokenizer


def plot(run_dir: Path) -> Path:
    """Redraw ``run_dir``'s ``loss.png`` from its ``metrics.jsonl``."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").exists():
        raise RunError(f"{run_dir} has no metrics.jsonl to plot")
    return plot_metrics(run_dir)


def load_model(run_dir: Path, checkpoint_name: str = "latest") -> nn.Module:
    """The run's ``nn.Module``, built from its config and holding the checkpoint's weights (their moving
    average with ``train.ema_decay``), in eval mode: one call from a run folder to a model."""
    exp, parts, state = load_run(run_dir, checkpoint_name)
    state, model = eval_weights(state), parts.model
    missing, unexpected = model.load_state_dict({**state.params, **state.buffers}, strict=False)
    stored = dict(model.named_parameters()).keys() | dict(model.named_buffers()).keys()
    if unexpected or set(missing) & stored:  # what may be missing: only the second names of tied weights
        raise RunError(f"{run_dir}: the checkpoint does not fit model {exp.model.kind!r} ({(unexpected or missing)[:3]})")
    return model.eval()


PREPROCESSING_FILE = "preprocessing.json"


def preprocessing(data) -> dict | None:
    """How the run's model reads an image, as a recipe any tool can follow (``preprocessing.json``), or
    None for data without images. The steps of craft's evaluation, in order: decode, turn upright by
    the file's EXIF orientation (``exif_transpose``, as ``PIL.ImageOps.exif_transpose``), convert to
    ``mode``, resize to ``resize`` (height, width; antialiased bilinear, the aspect ratio not kept),
    centre-crop to ``center_crop``, scale to [0, 1] (``rescale_factor``), normalise with ``mean``/``std``."""
    if not all(hasattr(data, k) for k in ("image_size", "channels", "mean", "std")) or getattr(data, "text_column", None):
        return None
    crop = crop_size(getattr(data, "augment", None), data.image_size)
    per_channel = lambda v: list(v) * data.channels if len(v) == 1 else list(v)  # noqa: E731
    return {
        "exif_transpose": True, "mode": "RGB" if data.channels == 3 else "L",
        "resize": [data.image_size, data.image_size], "interpolation": "bilinear", "antialias": True,
        "center_crop": [crop, crop], "rescale_factor": 1 / 255,
        "mean": per_channel(data.mean), "std": per_channel(data.std), "layout": "NCHW", "dtype": "float32",
    }


def check_export_folder(out: Path) -> None:
    """Refuse an ``out`` that is a file or a folder holding anything: an export writes only into a new or
    empty folder, so it never overwrites a file there (another run's classes.json, a dataset's files)."""
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} is a file; OUT must be a folder (new or empty) to export into")
    if out.is_dir() and any(out.iterdir()):
        held = "already holds an export (model.safetensors)" if (out / "model.safetensors").exists() else "is not empty"
        raise RunError(f"{out} {held}; export to a new or empty folder, so nothing there is overwritten")


def export(run_dir: Path, out: Path, checkpoint_name: str = "latest") -> Path:
    """Write the run's weights as ``OUT/model.safetensors`` and the model's config as ``OUT/config.json``
    (plus ``tokenizer.json`` for text runs, ``classes.json`` for classifiers, ``preprocessing.json`` for
    models that read images: without it, another tool would feed them pixels they never saw); returns ``out``.
    ``out`` must be a new or empty folder (``check_export_folder``): nothing there is overwritten.

    The weights are the module's whole ``state_dict()``, tied weights under
    each of their names, so ``model.load_state_dict(load_file(...), strict=True)``
    loads them into the plain module built from ``config.json``
    (``MODELS[kind](**options).build()``).
    """
    import json
    import shutil

    from safetensors.torch import save_file

    from craft.config import to_dict

    run_dir, out = Path(run_dir), Path(out)
    check_export_folder(out)
    exp = load_config(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).exists() else None
    model = load_model(run_dir, checkpoint_name)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt", "kind": exp.model.kind})
    (out / "config.json").write_text(json.dumps(to_dict(exp)["model"], indent=2) + "\n", encoding="utf-8")
    for name in (TOKENIZER_FILE, CLASSES_FILE):
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, out / name)
    recipe = preprocessing(exp.data.config)
    if recipe is not None:
        (out / PREPROCESSING_FILE).write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
    return out


def _unfinished_member(run_dir: Path) -> str:
    """What to do when ``run_dir`` is a member of a sweep that has not finished (its members' checkpoints are
    written at the end; until then one checkpoint in the sweep's folder holds them all, stacked)."""
    sweep = run_dir.parent.parent
    if run_dir.parent.name != MEMBERS_DIR or not (sweep / CONFIG_FILE).exists():
        return ""
    return (f": a member of the sweep {sweep}, which has not finished (its members get their checkpoints at its end); "
            f"finish it with craft train {sweep} --resume")
