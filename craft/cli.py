"""Command line: a thin Fire adapter. Parse, call, print errors as one line each.

    python -m craft EXP.toml [--section.key=value ...]     (same as `craft train`)
    craft train EXP.toml|RUN_DIR [--resume | --overwrite | --print_config] [--section.key=value ...]
    craft evaluate RUN_DIR [--checkpoint=latest|best|FILE] [--whole_split] [--data.key=value ...]
    craft export RUN_DIR OUT [--checkpoint=latest|best|FILE]
    craft generate RUN_DIR [--prompt=TEXT|--prompt_file=PATH --max_new_tokens=N --num_samples=N --temperature=T --top_k=K --top_p=P ...]
    craft generate RUN_DIR --image=PATH [--temperature=T ...]     (a captioning run)
    craft plot RUN_DIR
    craft prepare shapes|captions|photos DIR [--num_train=N --num_val=N --image_size=32 --seed=0]   (craft.prepare)
    craft prepare tokens SRC... OUT [--tokenizer=bpe|tiktoken|PATH --vocab_size=N --encoding=NAME --val_fraction=F ...]
    craft info [NAME]

`craft COMMAND --help` explains a command. The commands are in
``craft.commands``; craft reads the arguments itself (``craft.commandline``)
and hands Fire the call: Fire would read
``--name=2024`` as a number and ``--resume=false`` as the truthy text "false".
Options are ``--key=value``; a true/false option may be given bare
(``--resume``) and takes only ``true`` or ``false``; a text option takes the
text as typed; numbers are TOML literals. Usage mistakes exit with status 2.
"""

from __future__ import annotations

import functools
import os
import shlex
import sys
import warnings
from typing import Any

import fire

from craft.commandline import Command, ShowHelp, UsageError, parse
from craft.distributed import is_main_process
from craft.commands import evaluate, export, generate, info, plot, train
from craft.prepare import PREPARE, prepare

__all__ = ["COMMANDS", "ShowHelp", "UsageError", "main", "parse_command_line", "prepare"]

EXIT_CONFIG, EXIT_ERROR, EXIT_INTERRUPTED = 2, 1, 130

COMMANDS: dict[str, Command] = {
    "train": Command(train, "craft train CONFIG.toml|RUN_DIR [--resume [--checkpoint=NAME] | --overwrite | --print_config] [--section.key=value ...]"),
    "evaluate": Command(evaluate, "craft evaluate RUN_DIR [--checkpoint=latest|best|FILE] [--whole_split] [--data.key=value ...]"),
    "generate": Command(generate, "craft generate RUN_DIR [--prompt=TEXT|--prompt_file=PATH --max_new_tokens=N --num_samples=N --temperature=T "
                        "--top_k=K --top_p=P --seed=S --stop=TEXT --cache=true|false --checkpoint=NAME | --image=PATH]"),
    "export": Command(export, "craft export RUN_DIR OUT [--checkpoint=latest|best|FILE]"),
    "plot": Command(plot, "craft plot RUN_DIR"),
    "prepare": PREPARE,
    "info": Command(info, "craft info [NAME]"),
}
"""Each command word: its function (``craft.commands``, ``craft.prepare``) and usage line."""


HELP = """\
python -m craft EXP.toml [...] is craft train EXP.toml [...]; craft COMMAND --help explains a command.
Options are --key=value. A true/false option takes only true or false (bare --resume is true);
a text option takes the text as typed; numbers and lists are TOML literals (--optim.lr=3e-4)."""


def main(argv: list[str] | None = None) -> None:
    """The ``craft`` command; craft's warnings print as one line while it runs."""
    shown = warnings.showwarning
    warnings.showwarning = one_line_warnings(shown)
    try:
        _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # stdout's reader left (craft info | head): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        sys.exit(EXIT_ERROR)
    finally:
        warnings.showwarning = shown


def _main(argv: list[str]) -> None:
    try:
        name, args, options = parse_command_line(argv)
        fire.Fire(functools.partial(COMMANDS[name].run, *args, **options), command=[], name=f"craft {name}")
    except ShowHelp as text:
        print(text)
    except BrokenPipeError:
        raise
    except KeyboardInterrupt:  # Ctrl-C before training started, a second one, or during generation
        sys.stdout.flush()  # what was printed stays
        if is_main_process():  # under torchrun, every rank gets the Ctrl-C: one line for the job
            print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:  # noqa: BLE001 - the one place errors become exit codes
        sys.exit(_report(e))


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def one_line_warnings(others):
    """A ``warnings.showwarning`` that prints craft's own warnings (``skipped 3 unreadable of 98 images
    ...``) as one ``warning:`` line, without the line of craft that raised them, and hands the rest to ``others``."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if os.path.abspath(filename).startswith(_PACKAGE + os.sep):
            print(f"warning: {message}", file=sys.stderr if file is None else file)
        else:
            others(message, category, filename, lineno, file, line)

    return show


def parse_command_line(argv: list[str]) -> tuple[str, list[str], dict[str, Any]]:
    """``(command, positional arguments, options)`` of a craft command line, values converted
    (``craft.commandline.parse`` over ``COMMANDS``; a first word that is a file trains it).

    Raises ``UsageError`` for anything that cannot be run as written and
    ``ShowHelp`` for ``--help``.
    """
    if argv and argv[0] in ("-h", "--help", "help"):
        lines = [line for command in COMMANDS.values() for line in command.usage_lines()]
        raise ShowHelp("usage:\n" + "\n".join(f"  {line}" for line in lines) + "\n\n" + HELP)
    return parse(argv, COMMANDS, default="train")


def _report(error: Exception) -> int:
    """Print a user error as one line per problem; return the exit status."""
    from craft import run
    from craft.checkpoint import CheckpointError
    from craft.config import ConfigError

    if os.environ.get("CRAFT_DEBUG"):
        raise error
    if isinstance(error, run.Interrupted):
        if is_main_process():
            print(f"{error}\nresume with: {_resume_command()}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(error, (ConfigError, UsageError)):
        print("\n".join(f"error: {line}" for line in str(error).splitlines()), file=sys.stderr)
        return EXIT_CONFIG
    if isinstance(error, (run.RunError, CheckpointError, OSError, ValueError, KeyError)):
        message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        print(f"error: {message}\n(set CRAFT_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_ERROR
    raise error


def _resume_command() -> str:
    """The command that resumes this one, shell-quoted; under torchrun, launched as docs/distributed.md shows it."""
    flags = ("--overwrite", "--resume", "--checkpoint")  # a rollback's --checkpoint would roll back again
    given = sys.argv[1:]
    args = [a for i, a in enumerate(given) if a.partition("=")[0] not in flags and (i == 0 or given[i - 1] != "--checkpoint")]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        per_node = os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])
        launch = shlex.join(["torchrun", f"--nproc_per_node={per_node}", "-m", "craft", *args, "--resume"])
        return f"{launch} (any number of processes may resume it, one included)"
    if args and args[0] != "train":
        args.insert(0, "train")
    return shlex.join(["python", "-m", "craft", *args, "--resume"])
