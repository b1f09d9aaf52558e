"""Serving finished runs: load a run folder's model and state, evaluate it, sample from it, plot it.

    exp, parts, state = load_run("runs/gpt_char")
    text = sample_run("runs/gpt_char", Sample(prompt="ROMEO:"))
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import attrs
import torch
from torch import nn

from craft import checkpoint
from craft.config import Experiment, Sample
from craft.config import load as load_config
from craft.logging import plot_metrics
from craft.parts import Parts, build_data, build_parts, eval_weights, evaluate_batches
from craft.rundir import CHECKPOINTS, CONFIG_FILE, TOKENIZER_FILE, RunError
from craft.step import TrainState, init_state, make_eval_step


class LoadedRun(NamedTuple):
    exp: Experiment
    parts: Parts
    state: TrainState


def load_run(run_dir: Path, checkpoint_name: str = "latest") -> LoadedRun:
    """A run folder's experiment, built parts and the state of one of its checkpoints.

    ``checkpoint_name``: ``latest`` (the newest readable one), ``best``, or a file name.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        raise RunError(f"{run_dir} is not a run folder (no {CONFIG_FILE})")
    exp = load_config(run_dir / CONFIG_FILE)
    ckpt_dir = run_dir / CHECKPOINTS
    if checkpoint_name == "latest":
        found = checkpoint.load_latest(ckpt_dir, check=checkpoint.check_run_payload)
        if found is None:
            raise RunError(f"no readable checkpoint in {ckpt_dir}")
        payload = found[1]
    else:
        payload = checkpoint.load(ckpt_dir / ("best.pt" if checkpoint_name == "best" else checkpoint_name))
    parts = build_parts(exp)
    state = checkpoint.state_from_dict(payload["state"], init_state(parts.model, parts.optimizer, seed=exp.seed))
    return LoadedRun(exp, parts, state)


def evaluate(run_dir: Path, checkpoint_name: str = "latest") -> dict[str, float]:
    """Re-evaluate a run's checkpoint (``latest``, ``best`` or a file name) on its val split."""
    exp, parts, state = load_run(run_dir, checkpoint_name)
    eval_step = make_eval_step(
        parts.model, parts.task.loss, inputs=parts.task.inputs, precision=exp.train.precision, compile=False
    )
    metrics = evaluate_batches(eval_step, state, build_data(exp, "val"), parts.device, parts.task)
    return {"step": int(state.step), **metrics}


def sample_text(
    model: nn.Module,
    state: TrainState,
    tokenizer,
    options: Sample,
    *,
    stop: str | None = None,
    use_cache: bool = True,
    context: dict[str, torch.Tensor] | None = None,
) -> str:
    """New text from ``model`` with ``state``'s parameters (their moving average with
    ``train.ema_decay``), continuing ``options.prompt``.

    ``context``: the model's other inputs (a captioner's image), see ``craft.generate``.
    """
    from craft.generate import generate_text

    state = eval_weights(state)
    return generate_text(
        model, {**state.params, **state.buffers}, tokenizer, options.prompt,
        max_new_tokens=options.max_new_tokens, temperature=options.temperature,
        top_k=options.top_k, top_p=options.top_p, seed=options.seed, use_cache=use_cache, stop=stop,
        context=context,
    )


def sample_run(
    run_dir: Path,
    options: Sample,
    *,
    checkpoint_name: str = "latest",
    stop: str | None = None,
    use_cache: bool = True,
    image: str | Path | None = None,
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
        raise RunError(f"{run_dir} has no {TOKENIZER_FILE}: generation needs a run trained on text or captions")
    exp = load_config(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).exists() else None
    read_image = getattr(exp.data.config, "load_image", None) if exp is not None else None
    if image is None and read_image is not None:
        raise RunError(f"{run_dir} is a captioning run: give the image to caption, --image=PATH")
    if image is not None and exp is not None and read_image is None:
        raise RunError(f"--image: {run_dir} was trained on {exp.data.kind!r} data, not captions; drop --image")
    if image is not None and not Path(image).is_file():
        raise RunError(f"--image {image}: no such file")
    exp, parts, state = load_run(run_dir, checkpoint_name)
    tokenizer = load_tokenizer(path)
    if image is None:
        return sample_text(parts.model, state, tokenizer, options, stop=stop, use_cache=use_cache)
    if not options.prompt.startswith(BOUNDARY):
        raise ValueError(f"a caption's prompt starts with the begin marker {BOUNDARY!r}, got {options.prompt!r}")
    pixels = read_image(image).to(parts.device)[None]  # (1, C, S, S)
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
