"""``craft prepare WHAT ...``: write a dataset to disk, one preparer per WHAT.

A preparer is a plain function whose parameters are its words and options
(as every command's: ``craft.commandline``), registered in ``PREPARERS``
with its usage line; ``craft prepare WHAT --help`` prints that line and the
function's docstring. A preparer may take several words (``*sources: str``)::

    PREPARERS["tokens"] = Command(tokens, "craft prepare tokens SRC... OUT [--tokenizer=NAME|PATH]")
"""

from __future__ import annotations

from pathlib import Path

from craft.commandline import Command, UsageError


def shapes(
    directory: str, *, num_train: int | None = None, num_val: int | None = None, image_size: int = 32, seed: int = 0
) -> None:
    """Render the synthetic shapes as DIR/{train,val}/<class>/*.png.

    The same folder `prepare = "shapes"` writes for an image_folder
    experiment. --num_train and --num_val are each split's total number of
    images, dealt in turn to the 7 classes (--num_train=210: 30 a class);
    each is at least 7, so that every class has images.
    """
    from craft.data.images import PREPARED_SHAPES
    from craft.data.shapes import SHAPES, write_shapes_folder

    write_folder(write_shapes_folder, PREPARED_SHAPES, directory, image_size, seed, (num_train, num_val), len(SHAPES))


def captions(
    directory: str, *, num_train: int | None = None, num_val: int | None = None, image_size: int = 32, seed: int = 0
) -> None:
    """Render captioned scenes as DIR/{train,val}/*.png plus captions.jsonl, for a caption_folder experiment."""
    from craft.data.captions import PREPARED_CAPTIONS, write_caption_folder

    write_folder(write_caption_folder, PREPARED_CAPTIONS, directory, image_size, seed, (num_train, num_val))


def write_folder(
    write, defaults: dict, directory: str, image_size: int, seed: int, sizes: tuple[int | None, ...], classes: int = 0
) -> None:
    """Check the sizes (every problem, one line each), then ``write`` the folder and print where.

    ``sizes``: ``(num_train, num_val)``, None for ``defaults``' (read now: the numbers ``prepare = ...`` writes).
    ``classes``: how many class folders the images are dealt to (0: none), each of which must get one."""
    from craft.data.shapes import folder_problems

    counts = {k: defaults[k] if v is None else v for k, v in zip(("num_train", "num_val"), sizes)}
    problems = folder_problems(image_size=image_size, **counts, classes=classes)
    if not -(2**63) <= seed < 2**64:
        problems.append(f"seed: must fit in 64 bits (-2**63 <= seed < 2**64), got {seed}")
    if problems:
        raise UsageError("\n".join(f"--{line}" for line in problems))
    print(write(Path(directory), image_size=image_size, seed=seed, **counts))


def photos(
    directory: str, *, num_train: int | None = None, num_val: int | None = None, image_size: int = 96, seed: int = 0
) -> None:
    """Write photo-like JPEGs (textured objects on cluttered backgrounds) as DIR/{train,val}/<class>/*.jpg.

    For experiments/resnet_folder.toml (``data.prepare = "photos"`` writes the
    same folder). --num_train and --num_val are each split's total number of
    images, dealt in turn to the 7 classes (--num_train=210: 30 a class);
    each is at least 7, so that every class has images.
    """
    from craft.data.photos import PHOTO_CLASSES, PREPARED_PHOTOS, write_photos_folder

    sizes = (num_train, num_val)
    write_folder(write_photos_folder, PREPARED_PHOTOS, directory, image_size, seed, sizes, len(PHOTO_CLASSES))


def tokens(
    *paths: str, tokenizer: str = "bpe", vocab_size: int | None = None, encoding: str | None = None,
    val_fraction: float = 0.1, chunk_size: int = 1 << 20, overwrite: bool = False,
) -> None:
    """Stream text files and folders (or @stdlib, Python's own sources) into OUT's token files.

    OUT gets train.bin and val.bin (nanoGPT's layout: flat uint16, or uint32
    for a vocabulary over 65,536), tokenizer.json and meta.json, for a
    ``[data] kind = "tokens"`` experiment. --tokenizer=bpe trains a byte-level
    BPE of --vocab_size tokens (default 8192) on the train text;
    --tokenizer=tiktoken uses --encoding (default gpt2) from tiktoken's local
    cache; --tokenizer=PATH encodes with a saved tokenizer.json (a run
    folder's or a token folder's; PATH may be that folder) and trains nothing:
    a test set for a run is `craft prepare tokens SRC... OUT --tokenizer=RUN`,
    then `craft evaluate RUN --data.path=OUT`. The val split is the last
    --val_fraction of each file (from a line start). Files are read
    --chunk_size bytes at a time (default 1 MiB). --overwrite replaces the
    token files of an earlier prepare.
    """
    from craft.data.prepare_tokens import check_options, prepare_tokens
    from craft.runfolder import is_run_folder

    if len(paths) < 2:
        raise UsageError(f"craft prepare tokens needs SRC... and OUT; usage: {TOKENS_USAGE}")
    try:  # the options alone, before any file is read: a mistake on the command line (exit status 2)
        check_options(tokenizer, vocab_size, encoding, val_fraction, chunk_size)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if is_run_folder(Path(paths[-1])):  # its tokenizer.json decodes its checkpoints: never replaced
        raise ValueError(f"{paths[-1]!r} is a training run's folder; write the tokens to a folder of their own")
    options = dict(tokenizer=tokenizer, vocab_size=vocab_size, encoding=encoding, val_fraction=val_fraction)
    print(prepare_tokens(list(paths[:-1]), paths[-1], **options, chunk_size=chunk_size, overwrite=overwrite))


SIZES = "[--num_train=N --num_val=N --image_size=32 --seed=0]"
TOKENS_USAGE = (
    "craft prepare tokens SRC... OUT [--tokenizer=bpe|tiktoken|PATH --vocab_size=N --encoding=NAME --val_fraction=F "
    "--chunk_size=BYTES --overwrite]"
)
PREPARERS: dict[str, Command] = {
    "shapes": Command(shapes, f"craft prepare shapes DIR {SIZES}"),
    "captions": Command(captions, f"craft prepare captions DIR {SIZES}"),
    "photos": Command(photos, f"craft prepare photos DIR {SIZES.replace('32', '96')}"),
    "tokens": Command(tokens, TOKENS_USAGE),
}
"""What ``craft prepare`` writes: WHAT -> its preparer and usage line."""


def prepare(what: str, *args: str, **options) -> None:
    """Write a dataset to disk: `craft prepare WHAT --help` explains each."""
    if what not in PREPARERS:
        raise UsageError(f"unknown dataset {what!r} to prepare; available: {', '.join(sorted(PREPARERS))}")
    PREPARERS[what].run(*args, **options)


PREPARE = Command(prepare, "craft prepare WHAT ...", table=PREPARERS)
"""The ``prepare`` command: its first word picks the preparer."""
