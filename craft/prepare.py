"""``craft prepare WHAT ...``: write a dataset to disk, one preparer per WHAT.

A preparer is a plain function whose parameters are its words and options
(as every command's: ``craft.commandline``), registered in ``PREPARERS``
with its usage line; ``craft prepare WHAT --help`` prints that line and the
function's docstring. A preparer may take several words (``*sources: str``)::

    PREPARERS["tokens"] = Command(tokens, "craft prepare tokens SRC... OUT [--tokenizer=NAME]")
"""

from __future__ import annotations

from pathlib import Path

from craft.commandline import Command, UsageError


def shapes(directory: str, *, image_size: int = 32, seed: int = 0, **counts: int) -> None:
    """Render the synthetic shapes as DIR/{train,val}/<class>/*.png.

    The same folder `prepare = "shapes"` writes for an image_folder
    experiment; --num_train and --num_val are images per class.
    """
    from craft.data.images import PREPARED_SHAPES
    from craft.data.shapes import write_shapes_folder

    write_folder("shapes", write_shapes_folder, PREPARED_SHAPES, directory, image_size, seed, counts)


def captions(directory: str, *, image_size: int = 32, seed: int = 0, **counts: int) -> None:
    """Render captioned scenes as DIR/{train,val}/*.png plus captions.jsonl, for a caption_folder experiment."""
    from craft.data.captions import PREPARED_CAPTIONS, write_caption_folder

    write_folder("captions", write_caption_folder, PREPARED_CAPTIONS, directory, image_size, seed, counts)


def write_folder(what: str, write, defaults: dict, directory: str, image_size: int, seed: int, counts: dict) -> None:
    """Check the sizes (every problem, one line each), then ``write`` the folder and print where."""
    from craft.data.shapes import folder_problems

    unknown = sorted(set(counts) - set(defaults))
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r} for `craft prepare {what}`; known: {sorted(defaults)}")
    problems = folder_problems(image_size=image_size, **{**defaults, **counts})
    if not -(2**63) <= seed < 2**64:
        problems.append(f"seed: must fit in 64 bits (-2**63 <= seed < 2**64), got {seed}")
    if problems:
        raise UsageError("\n".join(f"--{line}" for line in problems))
    print(write(Path(directory), image_size=image_size, seed=seed, **{**defaults, **counts}))


SIZES = "[--num_train=N --num_val=N --image_size=32 --seed=0]"
PREPARERS: dict[str, Command] = {
    "shapes": Command(shapes, f"craft prepare shapes DIR {SIZES}"),
    "captions": Command(captions, f"craft prepare captions DIR {SIZES}"),
}
"""What ``craft prepare`` writes: WHAT -> its preparer and usage line."""


def prepare(what: str, *args: str, **options) -> None:
    """Write a dataset to disk: `craft prepare WHAT --help` explains each."""
    if what not in PREPARERS:
        raise UsageError(f"unknown dataset {what!r} to prepare; available: {', '.join(sorted(PREPARERS))}")
    PREPARERS[what].run(*args, **options)


PREPARE = Command(prepare, "craft prepare WHAT ...", table=PREPARERS)
"""The ``prepare`` command: its first word picks the preparer."""
