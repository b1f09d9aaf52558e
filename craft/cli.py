"""Command line: a thin Fire adapter. Parse, call, print errors as one line each.

    python -m craft EXP.toml [--section.key=value ...]     (same as `craft train`)
    craft train EXP.toml [--resume | --overwrite] [--section.key=value ...]
    craft evaluate RUN_DIR [--checkpoint=latest|best|FILE]
    craft generate RUN_DIR [--prompt=TEXT --max_new_tokens=N --temperature=T --top_k=K --top_p=P ...]
    craft generate RUN_DIR --image=PATH [--temperature=T ...]     (a captioning run)
    craft plot RUN_DIR
    craft prepare shapes|captions DIR [--num_train=N --num_val=N --image_size=32 --seed=0]
    craft info
"""

from __future__ import annotations

import functools
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import fire
import torch

import craft

EXIT_CONFIG, EXIT_ERROR, EXIT_INTERRUPTED = 2, 1, 130


class UsageError(Exception):
    """A command line that cannot be run as written."""


def train(config: str, resume: bool = False, overwrite: bool = False, **overrides: Any) -> None:
    """Train the experiment in the TOML file CONFIG.

    Any --section.key=value overrides a key of the file (values are TOML
    literals: --train.compile=false, --optim.lr=3e-4, --model.widths=[8,16]).
    --resume continues the run folder from its last checkpoint; --overwrite
    replaces it. Without either, an existing run folder is an error.
    """
    if overrides.pop("help", False):
        print(f"usage: craft train CONFIG.toml [--resume | --overwrite] [--section.key=value ...]\n\n{train.__doc__}")
        return
    from craft import run
    from craft.config import load, parse_override

    parsed = {key: parse_override(v) if isinstance(v, str) else v for key, v in overrides.items()}
    exp = load(config, parsed)
    run_dir = run.train(exp, resume=resume, overwrite=overwrite)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the whole job
        print(f"run folder: {run_dir}")


def evaluate(run_dir: str, checkpoint: str = "latest") -> None:
    """Re-evaluate RUN_DIR's checkpoint (latest, best, or a file name) on its validation split."""
    from craft import trained

    metrics = trained.evaluate(Path(run_dir), checkpoint)
    print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))


def generate(
    run_dir: str,
    prompt: str | None = None,
    max_new_tokens: int = 300,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    stop: str | None = None,
    checkpoint: str = "latest",
    cache: bool = True,
    image: str | None = None,
) -> None:
    """Print text sampled from RUN_DIR's model after PROMPT, or with --image=PATH, the image's caption.

    --temperature=0 is greedy (the default for captions; 0.8 for text); --top_k
    keeps the K likeliest tokens, --top_p the smallest set whose probability
    reaches P. The same --seed gives the same text. --stop=TEXT ends the
    sample before TEXT. --cache=false recomputes the whole context for every
    token (slower, same tokens). A caption ends at its end marker; --prompt
    then gives its first words.
    """
    from craft import trained
    from craft.config import ConfigError, Sample, structure
    from craft.data.tokenizers import BOUNDARY

    if image is not None:  # the prompt of a caption is the begin marker, then its first words if given
        prompt, temperature = BOUNDARY + (prompt or ""), 0.0 if temperature is None else temperature
        if stop is not None:
            raise UsageError("--stop: a caption stops at its end marker; drop --stop")
    given = dict(prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    try:
        options = structure({k: v for k, v in given.items() if v is not None}, Sample)
    except ConfigError as e:
        raise UsageError("\n".join(f"--{line}" for line in e.problems)) from None
    if stop is not None and not isinstance(stop, str):
        raise UsageError(f"--stop: expected text, got {stop!r}")
    print(trained.sample_run(Path(run_dir), options, checkpoint_name=checkpoint, stop=stop, use_cache=cache, image=image))


def plot(run_dir: str) -> None:
    """Redraw RUN_DIR/loss.png from its metrics.jsonl."""
    from craft import trained

    print(trained.plot(Path(run_dir)))


def prepare(what: str, directory: str, image_size: int = 32, seed: int = 0, **counts: int) -> None:
    """Write a built-in dataset to disk.

    `craft prepare shapes DIR [--num_train=N --num_val=N --image_size=32 --seed=0]`
    renders the synthetic shapes as DIR/{train,val}/<class>/*.png, the same
    folder `prepare = "shapes"` writes for an image_folder experiment.
    `craft prepare captions DIR [same options]` writes the captioned scenes as
    DIR/{train,val}/*.png + captions.jsonl, for a caption_folder experiment.
    """
    if what not in ("shapes", "captions"):
        raise UsageError(f"unknown dataset {what!r} to prepare; available: captions, shapes")
    if what == "captions":
        from craft.data.captions import PREPARED_CAPTIONS as defaults
        from craft.data.captions import write_caption_folder as write
    else:
        from craft.data.images import PREPARED_SHAPES as defaults
        from craft.data.shapes import write_shapes_folder as write

    unknown = sorted(set(counts) - set(defaults))
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r} for `craft prepare {what}`; known: {sorted(defaults)}")
    from craft.data.shapes import folder_problems

    problems = folder_problems(image_size=image_size, **{**defaults, **counts})
    if problems:
        raise UsageError("\n".join(f"--{line}" for line in problems))
    print(write(Path(directory), image_size=image_size, seed=seed, **{**defaults, **counts}))


def info() -> str:
    """Versions, devices and the registered components."""
    from craft.config import registries

    cuda = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA"
    lines = [
        f"craft {craft.__version__}, torch {torch.__version__}, Python {platform.python_version()}",
        f"devices: cpu ({torch.get_num_threads()} threads), {cuda}",
    ]
    lines += [f"{section}: {', '.join(sorted(table))}" for section, table in registries().items()]
    return "\n".join(lines)


COMMANDS = {
    "train": train, "evaluate": evaluate, "generate": generate, "plot": plot, "prepare": prepare, "info": info,
}
TEXT_OPTIONS = {"generate": ("prompt", "stop", "image")}
"""Options taken verbatim: Fire would read ``--prompt=123`` as a number, ``--prompt=[x]`` as a list."""


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0].endswith(".toml"):
        argv.insert(0, "train")  # python -m craft EXP.toml ...
    commands = dict(COMMANDS)
    if argv and argv[0] in TEXT_OPTIONS:
        text, argv = _take_options(argv, TEXT_OPTIONS[argv[0]])
        commands[argv[0]] = functools.partial(COMMANDS[argv[0]], **text)
    try:
        fire.Fire(commands, command=argv, name="craft")
    except KeyboardInterrupt:  # Ctrl-C before training started, or a second one: nothing to save
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:  # noqa: BLE001 - the one place errors become exit codes
        sys.exit(_report(e))


def _take_options(argv: list[str], names: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """Pull ``--name=value`` / ``--name value`` for ``names`` out of ``argv``, values as given."""
    taken, rest, i = {}, [], 0
    while i < len(argv):
        arg, step = argv[i], 1
        for name in names:
            flag = f"--{name}"
            if arg.startswith(flag + "="):
                taken[name] = arg[len(flag) + 1 :]
                break
            if arg == flag and i + 1 < len(argv):
                taken[name], step = argv[i + 1], 2
                break
        else:
            rest.append(arg)
        i += step
    return taken, rest


def _report(error: Exception) -> int:
    """Print a user error as one line per problem; return the exit status."""
    from craft import run
    from craft.checkpoint import CheckpointError
    from craft.config import ConfigError

    if os.environ.get("CRAFT_DEBUG"):
        raise error
    if isinstance(error, run.Interrupted):
        print(f"{error}\nresume with: {shlex.join(_resume_command())}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(error, (ConfigError, UsageError)):
        print("\n".join(f"error: {line}" for line in str(error).splitlines()), file=sys.stderr)
        return EXIT_CONFIG
    if isinstance(error, (run.RunError, CheckpointError, OSError, ValueError, KeyError)):
        message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        print(f"error: {message}\n(set CRAFT_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_ERROR
    raise error


def _resume_command() -> list[str]:
    args = [a for a in sys.argv[1:] if a not in ("--overwrite", "--resume")]
    if args and args[0] != "train":
        args.insert(0, "train")
    return ["python", "-m", "craft", *args, "--resume"]
