"""Command line: a thin Fire adapter. Parse, call, print errors as one line each.

    python -m craft EXP.toml [--section.key=value ...]     (same as `craft train`)
    craft train EXP.toml|RUN_DIR [--resume | --overwrite | --print_config] [--section.key=value ...]
    craft evaluate RUN_DIR [--checkpoint=latest|best|FILE] [--data.key=value ...]
    craft export RUN_DIR OUT [--checkpoint=latest|best|FILE]
    craft generate RUN_DIR [--prompt=TEXT --max_new_tokens=N --num_samples=N --temperature=T --top_k=K --top_p=P ...]
    craft generate RUN_DIR --image=PATH [--temperature=T ...]     (a captioning run)
    craft plot RUN_DIR
    craft prepare shapes|captions|photos DIR [--num_train=N --num_val=N --image_size=32 --seed=0]
    craft prepare tokens SRC... OUT [--tokenizer=bpe|tiktoken --vocab_size=N --encoding=NAME --val_fraction=F]
    craft info [NAME]

`craft COMMAND --help` explains a command. craft reads the arguments itself
(``parse_command_line``) and hands Fire the call: Fire would read
``--name=2024`` as a number and ``--resume=false`` as the truthy text "false".
Options are ``--key=value``; a true/false option may be given bare
(``--resume``) and takes only ``true`` or ``false``; a text option takes the
text as typed; numbers are TOML literals. Usage mistakes exit with status 2.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
import platform
import re
import shlex
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fire
import torch

import craft

EXIT_CONFIG, EXIT_ERROR, EXIT_INTERRUPTED = 2, 1, 130


class UsageError(Exception):
    """A command line that cannot be run as written."""


class ShowHelp(Exception):
    """``--help``: print the text (the exception's message) and exit 0."""


def train(config: str, *, resume: bool = False, overwrite: bool = False, print_config: bool = False, **overrides: str) -> None:
    """Train the experiment in the TOML file CONFIG.

    Any --section.key=value overrides a key of the file (values are TOML
    literals: --train.compile=false, --optim.lr=3e-4, --model.widths=[8,16];
    a text key takes the text as typed: --name=2024). --resume continues the
    run folder from its last checkpoint, as the run's own config.toml says,
    with only the overrides given now on top (CONFIG may be the run folder:
    craft train runs/NAME --resume); --overwrite replaces it. Without either,
    a name already taken gets a folder of its own (NAME-2, NAME-3, ...).
    --print_config prints the resolved experiment (every default filled in)
    and exits; a run writes it to its folder's config.toml.
    """
    from craft import run
    from craft.config import load
    from craft.logging import check_tensorboard
    from craft.rundir import resume_target

    if Path(config).suffix.lower() != ".toml" and not Path(config).is_dir():
        raise UsageError(
            f"craft reads TOML experiments: {config!r} is not a .toml file; "
            "write the experiment as TOML (see experiments/*.toml)"
        )
    # --resume continues the run as it was, with only this command line's overrides on top.
    exp = resume_target(config, overrides) if resume else load(config, texts=overrides)
    if print_config:
        from craft.config import dumps

        print(dumps(exp), end="")
        return
    if exp.train.tensorboard:
        check_tensorboard()  # before the run folder is touched
    run_dir = run.train(exp, resume=resume, overwrite=overwrite)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the whole job
        print(f"run folder: {run_dir}")


def evaluate(run_dir: str, *, checkpoint: str = "latest", **data: str) -> None:
    """Re-evaluate RUN_DIR's checkpoint (latest, best, or a file name) on its validation split.

    [data] options evaluate on other data (a test set), read as the run read
    its own: craft evaluate runs/NAME --data.val_path=data/test (image and
    caption folders), or --data.path=FILE for text in the run's vocabulary.
    """
    from craft import trained

    metrics = trained.evaluate(Path(run_dir), checkpoint, data or None)
    print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))


def generate(
    run_dir: str,
    *,
    prompt: str | None = None,
    max_new_tokens: int = 300,
    num_samples: int = 1,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    stop: str | None = None,
    checkpoint: str = "latest",
    cache: bool = True,
    image: str | None = None,
) -> None:
    """Print PROMPT and its continuation sampled from RUN_DIR's model; with --image=PATH, the image's caption.

    The text is printed as it is generated; Ctrl-C stops it and keeps what
    was printed. --temperature=0 is greedy (the default for captions; 0.8 for
    text; a tiny one such as 1e-45 samples among the tied likeliest tokens,
    i.e. is greedy too); --top_k keeps the K likeliest tokens, --top_p the smallest set
    whose probability reaches P. The same --seed gives the same text;
    --num_samples=N prints N samples (seeds SEED, SEED+1, ...) separated by a
    blank line. --stop=TEXT ends a sample before TEXT. --cache=false
    recomputes the whole context for every token (slower, same tokens). A
    caption ends at its end marker; --prompt then gives its first words.
    """
    import attrs

    from craft import trained
    from craft.config import ConfigError, Sample, structure
    from craft.data.tokenizers import BOUNDARY

    if image is not None:  # the prompt of a caption is the begin marker, then its first words if given
        prompt, temperature = BOUNDARY + (prompt or ""), 0.0 if temperature is None else temperature
        if stop is not None:
            raise UsageError("--stop: a caption stops at its end marker; drop --stop")
    if num_samples < 1:
        raise UsageError(f"--num_samples: must be >= 1, got {num_samples}")
    given = dict(prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    try:
        options = structure({k: v for k, v in given.items() if v is not None}, Sample)
        samples = [attrs.evolve(options, seed=options.seed + i) for i in range(num_samples)]
    except (ConfigError, ValueError) as e:
        problems = e.problems if isinstance(e, ConfigError) else [f"seed: {e}"]
        raise UsageError("\n".join(f"--{line}" for line in problems)) from None
    for i, sample in enumerate(samples):
        if i:
            print(flush=True)  # a blank line between samples
        if image is not None:
            print(trained.sample_run(Path(run_dir), sample, checkpoint_name=checkpoint, use_cache=cache, image=image))
            continue
        echo = _Echo(sample.prompt)
        trained.sample_run(Path(run_dir), sample, checkpoint_name=checkpoint, stop=stop, use_cache=cache, on_text=echo)
        echo("")  # the prompt, if no token came
        print(flush=True)


class _Echo:
    """Prints ``prefix`` with the first piece of text, then each piece as it comes (flushed)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, piece: str) -> None:
        print(self.prefix + piece, end="", flush=True)
        self.prefix = ""


def export(run_dir: str, out: str, *, checkpoint: str = "latest") -> None:
    """Write RUN_DIR's weights as OUT/model.safetensors and its model config as OUT/config.json.

    The weights load into the plain nn.Module with load_state_dict(strict=True)
    (tied weights under both names); text runs also get OUT/tokenizer.json.
    In Python, craft.load_model(RUN_DIR) returns the trained module directly.
    """
    from craft import trained

    print(trained.export(Path(run_dir), Path(out), checkpoint))


def plot(run_dir: str) -> None:
    """Redraw RUN_DIR/loss.png from its metrics.jsonl."""
    from craft import trained

    print(trained.plot(Path(run_dir)))


def prepare(what: str, *paths: str, image_size: int | None = None, seed: int = 0, **counts: int | str) -> None:
    """Write a built-in dataset, or text files as token files, to disk.

    `craft prepare shapes DIR [--num_train=N --num_val=N --image_size=32 --seed=0]`
    renders the synthetic shapes as DIR/{train,val}/<class>/*.png, the same
    folder `prepare = "shapes"` writes for an image_folder experiment.
    `craft prepare captions DIR [same options]` writes the captioned scenes as
    DIR/{train,val}/*.png + captions.jsonl, for a caption_folder experiment.
    `craft prepare photos DIR [same options; --image_size=96]` writes
    photo-like JPEGs (textured objects on cluttered backgrounds) as
    DIR/{train,val}/<class>/*.jpg, for experiments/resnet_folder.toml.
    `craft prepare tokens SRC... OUT [--tokenizer=bpe|tiktoken --vocab_size=8192
    --encoding=gpt2 --val_fraction=0.1 --overwrite]` streams text files and
    folders (or @stdlib, Python's own sources) into OUT/train.bin, val.bin,
    tokenizer.json and meta.json, for a tokens experiment.
    """
    if what == "tokens":
        return _prepare_tokens(paths, counts)
    if what not in ("shapes", "captions", "photos"):
        raise UsageError(f"unknown dataset {what!r} to prepare; available: captions, photos, shapes, tokens")
    if len(paths) != 1:
        raise UsageError(f"craft prepare {what} takes one folder, DIR; usage: {USAGE['prepare']}")
    directory, counts = paths[0], {k: _convert(k, str(v), int) for k, v in counts.items()}
    if what == "photos":
        from craft.data.photos import PHOTO_SIZE, PREPARED_PHOTOS as defaults
        from craft.data.photos import write_photos_folder as write

        image_size = PHOTO_SIZE if image_size is None else image_size
    elif what == "captions":
        from craft.data.captions import PREPARED_CAPTIONS as defaults
        from craft.data.captions import write_caption_folder as write
    else:
        from craft.data.images import PREPARED_SHAPES as defaults
        from craft.data.shapes import write_shapes_folder as write

    image_size = 32 if image_size is None else image_size
    unknown = sorted(set(counts) - set(defaults))
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r} for `craft prepare {what}`; known: {sorted(defaults)}")
    from craft.data.shapes import folder_problems

    problems = folder_problems(image_size=image_size, **{**defaults, **counts})
    if not -(2**63) <= seed < 2**64:
        problems.append(f"seed: must fit in 64 bits (-2**63 <= seed < 2**64), got {seed}")
    if problems:
        raise UsageError("\n".join(f"--{line}" for line in problems))
    print(write(Path(directory), image_size=image_size, seed=seed, **{**defaults, **counts}))


def _prepare_tokens(paths: tuple[str, ...], options: dict[str, Any]) -> None:
    """``craft prepare tokens SRC... OUT``: options typed by ``prepare_tokens``'s signature."""
    from craft.data.prepare_tokens import prepare_tokens

    if len(paths) < 2:
        raise UsageError(f"craft prepare tokens needs SRC... and OUT; usage: {USAGE['prepare']}")
    types = typing.get_type_hints(prepare_tokens)
    known = [name for name in inspect.signature(prepare_tokens).parameters if name not in ("sources", "out")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UsageError(f"unknown option --{unknown[0]} for `craft prepare tokens`; known: {', '.join(known)}")
    for key, value in options.items():  # numbers and true/false arrive parsed (TOML literals)
        want = types[key]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            options[key] = value = float(value)
        if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
            raise UsageError(f"--{key}: expected {'true or false' if want is bool else want.__name__}, got {value!r}")
    print(prepare_tokens(list(paths[:-1]), paths[-1], **options))


def info(name: str | None = None) -> str:
    """Versions, devices and the registered components; with NAME, that entry's table and options."""
    from craft.config import registries

    if name is not None:
        return _describe(name)
    cuda = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA"
    lines = [
        f"craft {craft.__version__}, torch {torch.__version__}, Python {platform.python_version()}",
        f"devices: cpu ({torch.get_num_threads()} threads), {cuda}",
    ]
    lines += [f"{section}: {', '.join(sorted(table))}" for section, table in registries().items()]
    return "\n".join(lines)


SECTIONS = {"models": "model", "datasets": "data", "tasks": "task", "optimizers": "optim", "schedules": "schedule"}
"""Each registry table's TOML section."""


def _describe(name: str) -> str:
    """Every registry entry called ``name``: its table, section and TOML options with defaults."""
    import attrs

    from craft.config import config_class, registries

    tables = registries()
    lines = []
    for table_name, table in tables.items():
        if name in table:
            section = SECTIONS.get(table_name, table_name)
            lines.append(f'{name}: in {table_name}; use it as [{section}] kind = "{name}"')
            for field in attrs.fields(config_class(table[name])):
                default = field.default.factory() if isinstance(field.default, attrs.Factory) else field.default
                shown = "(required)" if default is attrs.NOTHING else f"= {default!r}"
                kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
                lines.append(f"  {field.name}: {kind} {shown}")
    if not lines:
        known = sorted({entry for table in tables.values() for entry in table})
        raise UsageError(f"craft info: nothing registered as {name!r}{_did_you_mean(name, known)}; known: {', '.join(known)}")
    return "\n".join(lines)


COMMANDS: dict[str, Callable[..., Any]] = {
    "train": train, "evaluate": evaluate, "generate": generate, "export": export, "plot": plot, "prepare": prepare,
    "info": info,
}
USAGE = {
    "train": "craft train CONFIG.toml|RUN_DIR [--resume | --overwrite | --print_config] [--section.key=value ...]",
    "evaluate": "craft evaluate RUN_DIR [--checkpoint=latest|best|FILE] [--data.key=value ...]",
    "export": "craft export RUN_DIR OUT [--checkpoint=latest|best|FILE]",
    "generate": "craft generate RUN_DIR [--prompt=TEXT --max_new_tokens=N --num_samples=N --temperature=T "
    "--top_k=K --top_p=P --seed=S --stop=TEXT --cache=true|false --checkpoint=NAME | --image=PATH]",
    "plot": "craft plot RUN_DIR",
    "prepare": "craft prepare shapes|captions|photos DIR [--num_train=N --num_val=N --image_size=32 --seed=0] | "
    "craft prepare tokens SRC... OUT [--tokenizer=bpe|tiktoken --vocab_size=N --encoding=NAME --val_fraction=F]",
    "info": "craft info [NAME]",
}


HELP = """\
python -m craft EXP.toml [...] is craft train EXP.toml [...]; craft COMMAND --help explains a command.
Options are --key=value. A true/false option takes only true or false (bare --resume is true);
a text option takes the text as typed; numbers and lists are TOML literals (--optim.lr=3e-4)."""


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        name, args, options = parse_command_line(argv)
        fire.Fire(functools.partial(COMMANDS[name], *args, **options), command=[], name=f"craft {name}")
    except ShowHelp as text:
        print(text)
    except KeyboardInterrupt:  # Ctrl-C before training started, a second one, or during generation
        sys.stdout.flush()  # what was printed stays
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:  # noqa: BLE001 - the one place errors become exit codes
        sys.exit(_report(e))


def parse_command_line(argv: list[str]) -> tuple[str, list[str], dict[str, Any]]:
    """``(command, positional arguments, options)`` of a command line, values converted.

    Raises ``UsageError`` for anything that cannot be run as written and
    ``ShowHelp`` for ``--help``.
    """
    if not argv:
        raise UsageError(f"give a command: {', '.join(COMMANDS)} (craft --help shows how)")
    first = argv[0]
    if first in ("-h", "--help", "help"):
        raise ShowHelp("usage:\n" + "\n".join(f"  {line}" for line in USAGE.values()) + "\n\n" + HELP)
    if first in COMMANDS:
        name, rest = first, argv[1:]
    elif not first.startswith("-") and (Path(first).suffix or Path(first).exists()):
        name, rest = "train", argv  # python -m craft EXP.toml ...
    else:
        raise UsageError(f"unknown command {first!r}{_did_you_mean(first, list(COMMANDS))}; commands: {', '.join(COMMANDS)}")
    command = COMMANDS[name]
    types = typing.get_type_hints(command)
    words, flags = _split(rest, types)
    if "help" in flags or "h" in flags:
        raise ShowHelp(f"usage: {USAGE[name]}\n\n{inspect.getdoc(command)}")
    return name, _positionals(name, words), _options(name, flags, types)


_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _split(rest: list[str], types: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The words and the ``--key=value`` options (values as typed) of ``rest``.

    A bare true/false option means true; any other bare option takes the next
    word as its value (``--prompt TEXT``).
    """
    words, flags, i = [], {}, 0
    while i < len(rest):
        arg, i = rest[i], i + 1
        if arg in ("-h", "--help"):
            flags["help"] = "true"
            continue
        if not arg.startswith("-") or arg == "-":
            words.append(arg)
            continue
        key, equals, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not _KEY.fullmatch(key):
            raise UsageError(f"{arg!r} is not an option; options are written --key=value (e.g. --train.steps=10)")
        if not equals:
            if _unwrap(types.get(key)) is bool:
                value = "true"
            elif i < len(rest) and not rest[i].startswith("--"):
                value, i = rest[i], i + 1
            else:
                raise UsageError(f"--{key} needs a value: --{key}=VALUE")
        if key in flags:
            raise UsageError(f"--{key} is given twice; give it once")
        flags[key] = value
    return words, flags


def _positionals(name: str, words: list[str]) -> list[str]:
    """The command's positional arguments, in order; options are its keyword-only parameters."""
    allowed = [p for p in inspect.signature(COMMANDS[name]).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    needed = [p.name for p in allowed if p.default is p.empty]
    if len(words) < len(needed):
        missing = " ".join(n.upper() for n in needed[len(words):])
        raise UsageError(f"craft {name}: missing {missing}; usage: {USAGE[name]}")
    varargs = any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(COMMANDS[name]).parameters.values())
    if len(words) > len(allowed) and not varargs:
        extra = words[len(allowed)]
        hint = f" (a true/false option is written --key={extra})" if extra in ("true", "false") else ""
        raise UsageError(f"craft {name}: unexpected argument {extra!r}{hint}; usage: {USAGE[name]}")
    return words


def _options(name: str, flags: dict[str, str], types: dict[str, Any]) -> dict[str, Any]:
    """Each option converted to its parameter's type; other keys go to a ``**`` parameter if the command has one."""
    parameters = inspect.signature(COMMANDS[name]).parameters
    rest = next((p for p in parameters.values() if p.kind is p.VAR_KEYWORD), None)
    known = [p.name for p in parameters.values() if p.kind is p.KEYWORD_ONLY]
    options = {}
    for key, text in flags.items():
        if key in known:
            options[key] = _convert(key, text, types[key])
        elif rest is not None:
            options[key] = text if types.get(rest.name) is str else _convert(key, text, types.get(rest.name, Any))
        else:
            shown = ", ".join(f"--{k}" for k in known) or "none"
            raise UsageError(f"craft {name}: unknown option --{key}{_did_you_mean(key, known)}; options: {shown}")
    return options


def _unwrap(t: Any) -> Any:
    """``X`` for ``X | None``."""
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if len(args) == 1 else t


def _convert(key: str, text: str, t: Any) -> Any:
    """``text`` as a value of type ``t``: true/false only for a bool, a TOML number for an int or float."""
    from craft.config import parse_override

    t = _unwrap(t)
    if t is str or t is Any:
        return text
    value = parse_override(text)
    if t is bool and not isinstance(value, bool):
        raise UsageError(f"--{key}: expected true or false, got {text!r}")
    if t is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise UsageError(f"--{key}: expected an integer, got {text!r}")
    if t is float and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise UsageError(f"--{key}: expected a number, got {text!r}")
    return value


def _did_you_mean(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
    flags = ("--overwrite", "--resume")
    args = [a for a in sys.argv[1:] if a.partition("=")[0] not in flags]
    if args and args[0] != "train":
        args.insert(0, "train")
    return ["python", "-m", "craft", *args, "--resume"]
