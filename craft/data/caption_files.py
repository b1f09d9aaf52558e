"""Captions files: finding, reading and checking a folder's ``captions.jsonl`` or
``captions.tsv``, and splitting its examples by image.

``captions.jsonl`` holds one JSON object a line::

    {"image": "cat/001.png", "caption": "a cat on a mat"}

``captions.tsv`` holds ``file<TAB>caption`` a line (a first line naming no file,
captioned ``caption`` or ``text``, is a header and skipped). File names are
relative to the folder holding the captions file; an image may have several
captions. A JSONL line may name its image ``file_name``, as Hugging Face's
imagefolder ``metadata.jsonl`` does.
"""

from __future__ import annotations

import json
import os
import unicodedata
import warnings
from pathlib import Path
from typing import NamedTuple

import torch

from craft.data.batching import derive_seed
from craft.data.files import IMAGE_SUFFIXES
from craft.data.images import images_under
from craft.data.listing import VAL_FOLDERS, split_folder

CAPTION_FILES = ("captions.jsonl", "captions.tsv")
"""The names a folder's captions file is looked for under, in this order."""

JSONL_LINE = '{"image": "x.png", "caption": "..."}'
"""What one line of a captions.jsonl file looks like, for messages."""


class Captions(NamedTuple):
    """The examples of one captions file: ``files[i]`` (a path) is captioned ``captions[i]``."""

    source: Path  # the captions file
    files: list[str]
    captions: list[str]


def find_captions(folder: str | Path, name: str | None = None) -> Path | None:
    """``folder``'s captions file: ``name`` if given, else the first of ``CAPTION_FILES`` there (or None)."""
    folder = Path(folder)
    if name is not None:
        return folder / name
    return next((folder / n for n in CAPTION_FILES if (folder / n).is_file()), None)


def captioned_val(root: Path, name: str | None = None) -> tuple[Path, Path] | None:
    """``root``'s val folder (``val/``, ``validation/``, ``valid/``) and its captions file, when it has one of
    its own: then it is the val split, as an image folder's ``val/`` is, and not a sub-folder of train."""
    folder = split_folder(root, VAL_FOLDERS)
    source = None if folder is None else find_captions(folder, name)
    return (folder, source) if source is not None and source.is_file() else None


def no_captions(folder: Path) -> ValueError:
    """The error for ``folder`` without a captions file, naming another captions-like file there and how to use it."""
    found = sorted(
        p.name for p in folder.iterdir() if p.is_file() and p.stem.lower().startswith(("caption", "metadata"))
        and p.suffix.lower() in (".jsonl", ".tsv", ".csv", ".json", ".txt")
    )
    readable = [n for n in found if n.lower().endswith((".jsonl", ".tsv"))]
    where = f"no {' or '.join(CAPTION_FILES)} in {folder}"
    if readable:
        return ValueError(f"{where}, but {readable[0]}: name it with data.captions = \"{readable[0]}\"")
    if found:
        return ValueError(
            f"{where}, but {found[0]}: a captions file is JSONL or TSV, not {Path(found[0]).suffix}; convert it to "
            f"captions.tsv (file<TAB>caption a line) or captions.jsonl (a line is {JSONL_LINE})"
        )
    return ValueError(
        f"{where}; add one (a line is {JSONL_LINE}), name it with data.captions, or see an example: "
        f"`craft prepare captions DIR`"
    )


def _header(line: str, folder: Path) -> bool:
    """Whether the first line of a captions.tsv is a header (``file<TAB>caption``): it names no file."""
    name, _, caption = line.partition("\t")
    return caption.strip().lower() in ("caption", "captions", "text") and not (folder / name.strip()).is_file()


def _parse_line(line: str, where: str, suffix: str) -> tuple[str, str]:
    """``(file name, caption)`` of one non-blank line of a captions file."""
    if suffix == ".tsv":
        name, tab, caption = line.partition("\t")
        if not tab:
            raise ValueError(f"{where}: no tab; a captions.tsv line is file<TAB>caption")
    else:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e.msg}); a line is {JSONL_LINE}") from None
        image = "file_name" if isinstance(record, dict) and "image" not in record and "file_name" in record else "image"
        missing = [k for k in (image, "caption") if not isinstance(record, dict) or k not in record]
        if missing:  # file_name: Hugging Face's metadata.jsonl names the image so
            found = f"its keys are {', '.join(map(repr, record))}" if isinstance(record, dict) else (
                f"it is a JSON {type(record).__name__}")
            raise ValueError(f"{where}: no {' or '.join(map(repr, missing))} key ({found}); a line is {JSONL_LINE}")
        name, caption = record[image], record["caption"]
        if not isinstance(name, str) or not isinstance(caption, str):
            raise ValueError(f"{where}: \"image\" and \"caption\" must be strings, got {name!r} and {caption!r}")
    if any(c in caption for c in "\n\r\t"):
        raise ValueError(f"{where}: the caption holds a newline or a tab; a caption is one line: use spaces")
    # NFC, as class names are read: a caption typed on a Mac (e + a combining accent) spells its words alike.
    caption, name = unicodedata.normalize("NFC", caption.strip()), name.strip()
    if not name:
        raise ValueError(f"{where}: the image file name is empty; name the captioned file")
    if not caption:
        raise ValueError(f"{where}: the caption of {name} is empty; write one or remove the line")
    return name, caption


def read_captions(path: str | Path, apart: Path | None = None) -> Captions:
    """The (image, caption) pairs of a ``.jsonl`` or ``.tsv`` captions file, in file order.

    Every referenced image must exist; images in the file's folder that no
    line names are left out with a warning that counts them. ``apart``: a
    sub-folder with a captions file of its own (the val split), whose images
    this file must not name and which are not its uncaptioned ones.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".tsv"):
        raise ValueError(f"{path}: a captions file is .jsonl or .tsv; rename it or convert it")
    try:
        text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such captions file; fix data.path or data.captions") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (at byte {e.start}); convert it to UTF-8") from None
    folder = path.parent
    files, captions, lines = [], [], []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip() or number == 1 and suffix == ".tsv" and _header(line, folder):
            continue
        name, caption = _parse_line(line, f"{path}, line {number}", suffix)
        files.append(os.path.normpath(folder / name))
        captions.append(caption)
        lines.append(number)
    if not files:
        raise ValueError(f"{path} has no captions; add lines like {JSONL_LINE}")
    files = _on_disk(files, folder)
    _check_named(path, files, lines)
    if apart is not None:
        _check_apart(path, files, lines, apart)
    _warn_uncaptioned(path, set(files), apart)
    return Captions(path, files, captions)


def _check_named(path: Path, files: list[str], lines: list[int]) -> None:
    """Every captioned file is there and is an image (a line naming notes.txt is to be removed, not the file)."""
    absent = [(n, f) for n, f in zip(lines, files) if not os.path.isfile(f)]
    if absent:
        number, file = absent[0]
        raise ValueError(
            f"{path}: {len(absent)} captioned image{'s' if len(absent) > 1 else ''} not found, "
            f"e.g. line {number}: {file}; file names are relative to {path.parent}: fix them or remove those lines"
        )
    other = [(n, f) for n, f in zip(lines, files) if os.path.splitext(f)[1].lower() not in IMAGE_SUFFIXES]
    if other:
        number, file = other[0]
        raise ValueError(
            f"{path}: {len(other)} captioned file{'s are' if len(other) > 1 else ' is'} not an image "
            f"({', '.join(IMAGE_SUFFIXES)}), e.g. line {number}: {file}; remove those lines from {path.name}"
        )


def _on_disk(files: list[str], folder: Path) -> list[str]:
    """``files``, each one not found as spelled replaced by the image under ``folder`` whose name is the same in
    Unicode's composed form (NFC): macOS writes ``café.png`` decomposed, a captions file typed elsewhere composed."""
    if all(os.path.isfile(f) for f in files):
        return files
    by_nfc = {unicodedata.normalize("NFC", os.path.normpath(f)): f for f in images_under(folder)}
    return [f if os.path.isfile(f) else by_nfc.get(unicodedata.normalize("NFC", f), f) for f in files]


def _check_apart(path: Path, files: list[str], lines: list[int], apart: Path) -> None:
    """A train captions file naming images of the val folder would train on val images."""
    below = [(n, f) for n, f in zip(lines, files) if Path(f).is_relative_to(apart)]
    if below:
        number, file = below[0]
        raise ValueError(
            f"{path}: {len(below)} line{'s' if len(below) > 1 else ''} caption images of {apart}, e.g. line {number}: "
            f"{file}; {apart} has a captions file of its own and is the val split: remove those lines, or remove "
            f"{apart}'s captions file to hold out data.val_fraction of every image instead"
        )


def _warn_uncaptioned(path: Path, named: set[str], apart: Path | None) -> None:
    folder = path.parent
    uncaptioned = [
        f for f in images_under(folder)
        if os.path.normpath(f) not in named and (apart is None or not Path(f).is_relative_to(apart))
    ]
    if uncaptioned:
        warnings.warn(
            f"{len(uncaptioned)} image{'s' if len(uncaptioned) > 1 else ''} in {folder} "
            f"{'have' if len(uncaptioned) > 1 else 'has'} no caption in {path.name} and "
            f"{'are' if len(uncaptioned) > 1 else 'is'} left out, e.g. {uncaptioned[0]}",
            stacklevel=3,
        )


def split_by_image(files: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train, val)`` example positions: a seeded ``round(fraction * images)`` of the distinct images go to val.

    All captions of an image land in the same split; one image always stays in train.
    """
    images = sorted(set(files))
    generator = torch.Generator().manual_seed(derive_seed("caption-split", seed))
    order = torch.randperm(len(images), generator=generator).tolist()
    take = min(round(fraction * len(images)), len(images) - 1)
    held = {images[k] for k in order[:take]}
    return [i for i, f in enumerate(files) if f not in held], [i for i, f in enumerate(files) if f in held]

