"""Captioned images: folders of image files with a captions file, and synthetic scenes.

An example is an (image, caption) pair; an image may have several captions.
A caption is encoded as ``[BOUNDARY] + tokens + [BOUNDARY]`` and a batch is::

    {"image": float32 (B, C, S, S), "input": int64 (B, T), "target": int64 (B, T)}

``input`` is the sequence without its last token, ``target`` without its
first; padding holds 0 in ``input`` and ``IGNORE_INDEX`` (-100) in
``target``. ``T`` is ``max_length``, by default the longest caption (train
and val) plus one. Images are decoded, converted, resized and normalized as
``craft.data.images`` does; ``load_image`` does the same to one file at
generation time.

The captions file of a folder is ``captions.jsonl``, one JSON object a line::

    {"image": "cat/001.png", "caption": "a cat on a mat"}

or ``captions.tsv``, ``file<TAB>caption`` a line, no header. File names are
relative to the folder holding the captions file.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Literal, NamedTuple

import attrs
import torch
from PIL import Image
from torch import Tensor

from craft.data import DATASETS, checks
from craft.data.batching import Batch, EvalBatches, TrainBatches, derive_seed, normalize, options_fingerprint
from craft.data.files import MAX_PIXELS, files_fingerprint
from craft.data.images import DecodedImages, images_under, load_images
from craft.data.scenes import DEFAULT_IMAGE_SIZE, WORDS, describe_scene, render_scene
from craft.data.shapes import (
    COLOURS, SHAPES, RenderedImages, validate_shapes, check_folder_options, names_from, write_folder,
)
from craft.data.text import IGNORE_INDEX
from craft.data.tokenizers import BOUNDARY, CharTokenizer, WordTokenizer

CAPTION_FILES = ("captions.jsonl", "captions.tsv")
"""The names a folder's captions file is looked for under, in this order."""

JSONL_LINE = '{"image": "x.png", "caption": "..."}'
"""What one line of a captions.jsonl file looks like, for messages."""

Tokenizer = CharTokenizer | WordTokenizer


# -- captions files --------------------------------------------------------


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
        missing = [k for k in ("image", "caption") if not isinstance(record, dict) or k not in record]
        if missing:
            raise ValueError(f"{where}: no {' or '.join(map(repr, missing))} key; a line is {JSONL_LINE}")
        name, caption = record["image"], record["caption"]
        if not isinstance(name, str) or not isinstance(caption, str):
            raise ValueError(f"{where}: \"image\" and \"caption\" must be strings, got {name!r} and {caption!r}")
    if any(c in caption for c in "\n\r\t"):
        raise ValueError(f"{where}: the caption holds a newline or a tab; a caption is one line: use spaces")
    caption, name = caption.strip(), name.strip()
    if not name:
        raise ValueError(f"{where}: the image file name is empty; name the captioned file")
    if not caption:
        raise ValueError(f"{where}: the caption of {name} is empty; write one or remove the line")
    return name, caption


def read_captions(path: str | Path) -> Captions:
    """The (image, caption) pairs of a ``.jsonl`` or ``.tsv`` captions file, in file order.

    Every referenced image must exist; images in the file's folder that no
    line names are left out with a warning that counts them.
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
        if not line.strip():
            continue
        name, caption = _parse_line(line, f"{path}, line {number}", suffix)
        files.append(os.path.normpath(folder / name))
        captions.append(caption)
        lines.append(number)
    if not files:
        raise ValueError(f"{path} has no captions; add lines like {JSONL_LINE}")
    absent = [(n, f) for n, f in zip(lines, files) if not os.path.isfile(f)]
    if absent:
        number, file = absent[0]
        raise ValueError(
            f"{path}: {len(absent)} captioned image{'s' if len(absent) > 1 else ''} not found, "
            f"e.g. line {number}: {file}; file names are relative to {folder}: fix them or remove those lines"
        )
    named = set(files)
    uncaptioned = [f for f in images_under(folder) if os.path.normpath(f) not in named]
    if uncaptioned:
        warnings.warn(
            f"{len(uncaptioned)} image{'s' if len(uncaptioned) > 1 else ''} in {folder} "
            f"{'have' if len(uncaptioned) > 1 else 'has'} no caption in {path.name} and "
            f"{'are' if len(uncaptioned) > 1 else 'is'} left out, e.g. {uncaptioned[0]}",
            stacklevel=2,
        )
    return Captions(path, files, captions)


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


# -- encoding --------------------------------------------------------------


def make_tokenizer(kind: str, captions: list[str]) -> Tokenizer:
    """The ``kind`` ("word" or "char") tokenizer whose vocabulary is that of ``captions`` and ``BOUNDARY``."""
    text = BOUNDARY + BOUNDARY.join(captions) + BOUNDARY
    return WordTokenizer.from_text(text) if kind == "word" else CharTokenizer.from_text(text)


def sequence_length(tokenizer: Tokenizer, captions: list[str], max_length: int | None) -> int:
    """``T``: ``max_length``, or the longest ``[B] + caption + [B]`` less one; checks that every caption fits."""
    longest = max(len(tokenizer.encode(c)) for c in captions) + 1  # + 2 boundaries - 1 shift
    if max_length is not None and max_length < longest:
        raise ValueError(
            f"the longest caption has {longest - 1} tokens, so data.max_length must be >= {longest} "
            f"(it + 1), got {max_length}; raise max_length or unset it to fit the captions"
        )
    return longest if max_length is None else max_length


def encode_captions(tokenizer: Tokenizer, captions: list[str], length: int) -> tuple[Tensor, Tensor]:
    """int64 ``(input, target)``, each ``(N, length)``: ``[B] + caption + [B]`` shifted, padded."""
    # One tensor from padded lists: about twice as fast as a tensor write per row.
    sequences = [tokenizer.encode(BOUNDARY + caption + BOUNDARY) for caption in captions]
    inputs = [ids[:-1] + [0] * (length + 1 - len(ids)) for ids in sequences]
    targets = [ids[1:] + [IGNORE_INDEX] * (length + 1 - len(ids)) for ids in sequences]
    shape = (len(captions), length)
    return torch.tensor(inputs, dtype=torch.int64).view(shape), torch.tensor(targets, dtype=torch.int64).view(shape)


def load_image(
    path: str | Path, *, image_size: int, channels: int, mean: list[float], std: list[float],
    max_pixels: int = MAX_PIXELS,
) -> Tensor:
    """float32 ``(channels, image_size, image_size)``: the file as a batch holds it (converted, resized, normalized)."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such image file; check the path")
    images = load_images([str(path)], image_size=image_size, channels=channels, max_pixels=max_pixels)
    return normalize(images, mean, std)[0]


def caption_batches(
    split: str,
    images: Callable[[Tensor], Tensor],
    image_of: Tensor,
    captions: list[str],
    tokenizer: Tokenizer,
    length: int,
    *,
    config,
    seed: int,
    rank: int,
    world_size: int,
    executor: Executor | None,
    prefetch: int,
    examples: list | None = None,
    fingerprint: str | Callable[[], str] | None = None,
) -> TrainBatches | EvalBatches:
    """The batches of ``split``'s examples: example ``i`` is image ``image_of[i]`` captioned ``captions[i]``.

    ``images(indices) -> uint8 (b, C, S, S)`` gives images by index; ``config``
    has ``mean``, ``std``, ``batch_size`` and ``eval_batch_size``. The
    iterator carries ``tokenizer``, ``vocab_size`` and ``block_size`` (``T``).
    """
    inputs, targets = encode_captions(tokenizer, captions, length)
    mean, std = config.mean, config.std

    def load(indices: Tensor) -> Batch:
        image = normalize(images(image_of[indices]), mean, std)
        return {"image": image, "input": inputs[indices], "target": targets[indices]}

    common = {
        "classes": [], "rank": rank, "world_size": world_size, "executor": executor, "prefetch": prefetch,
        "examples": examples, "fingerprint": fingerprint,
    }
    if split == "train":
        batches = TrainBatches(len(captions), load, batch_size=config.batch_size, seed=seed, **common)
    else:
        batches = EvalBatches(len(captions), load, batch_size=config.eval_batch_size or config.batch_size, **common)
    batches.tokenizer, batches.vocab_size, batches.block_size = tokenizer, tokenizer.vocab_size, length
    return batches


def _image_index(files: list[str]) -> tuple[list[str], Tensor]:
    """``(distinct files in first-seen order, (N,) int64 position of each example's file among them)``."""
    position: dict[str, int] = {}
    index = [position.setdefault(f, len(position)) for f in files]
    return list(position), torch.tensor(index, dtype=torch.int64)


# -- caption folders -------------------------------------------------------


@DATASETS.register("caption_folder")
@attrs.frozen
class CaptionFolderConfig:
    """``[data] kind = "caption_folder"``: image files under ``path`` and their captions.

    The captions file is ``captions`` (a name in ``path``) or else
    ``captions.jsonl`` / ``captions.tsv`` in ``path``; see the module
    docstring for its format. Splits: ``val_path`` (another such folder) if
    set; else ``path/train`` and ``path/val`` when ``path`` has no captions
    file of its own; else a ``val_fraction`` of the images (fixed by
    ``data_seed``; every caption of an image goes to the same split).
    ``tokenizer`` is "word" (whitespace-separated words) or "char"; its
    vocabulary is every train and val caption's. ``num_threads`` threads
    decode up to ``prefetch`` batches ahead; ``cache`` keeps decoded images in memory.
    Images are read as ``image_folder`` reads them (its formats; a header
    claiming more than ``max_pixels`` pixels is refused before decoding).
    """

    path: str
    captions: str | None = None
    val_path: str | None = None
    val_fraction: float = attrs.field(default=0.1, validator=checks.fraction)
    tokenizer: Literal["word", "char"] = attrs.field(default="word", validator=checks.one_of("word", "char"))
    max_length: int | None = attrs.field(default=None, validator=checks.at_least(2))
    image_size: int = attrs.field(default=32, validator=checks.at_least(1))
    channels: int = attrs.field(default=3, validator=checks.channels)
    mean: list[float] = attrs.field(factory=lambda: [0.5], validator=checks.per_channel)
    std: list[float] = attrs.field(factory=lambda: [0.5], validator=checks.per_channel)
    batch_size: int = attrs.field(default=64, validator=checks.at_least(1))
    eval_batch_size: int | None = attrs.field(default=None, validator=checks.at_least(1))
    num_threads: int = attrs.field(default=2, validator=checks.at_least(0))
    prefetch: int = attrs.field(default=4, validator=checks.at_least(1))
    cache: bool = False
    data_seed: int = 0
    max_pixels: int = attrs.field(default=MAX_PIXELS, validator=checks.at_least(1))

    def splits(self) -> tuple[Captions, Captions]:
        """``(train, val)`` examples."""
        root = Path(self.path)
        if not root.is_dir():
            raise ValueError(f"data.path {root} is not a folder; point it at a folder of images with a captions file")
        source = find_captions(root, self.captions)
        if self.val_path is not None:
            val_root = Path(self.val_path)
            if not val_root.is_dir():
                raise ValueError(f"data.val_path {val_root} is not a folder; fix the path or unset it")
            return self._read(root, source), self._read(val_root, find_captions(val_root, self.captions))
        if source is None and (root / "train").is_dir() and (root / "val").is_dir():
            return tuple(self._read(root / s, find_captions(root / s, self.captions)) for s in ("train", "val"))
        every = self._read(root, source)
        train, val = split_by_image(every.files, self.val_fraction, self.data_seed)

        def subset(positions: list[int]) -> Captions:
            return Captions(every.source, [every.files[i] for i in positions], [every.captions[i] for i in positions])

        return subset(train), subset(val)

    def _read(self, folder: Path, source: Path | None) -> Captions:
        if source is None:
            raise ValueError(
                f"no {' or '.join(CAPTION_FILES)} in {folder}; add one (a line is {JSONL_LINE}), "
                f"name it with data.captions, or see an example: `craft prepare captions DIR`"
            )
        return read_captions(source)

    def build(self, split: str, *, seed: int, rank: int = 0, world_size: int = 1) -> TrainBatches | EvalBatches:
        """Batches ``{"image": float32 (B, C, S, S), "input", "target": int64 (B, T)}`` of ``split``."""
        checks.check_split(split)
        train, val = self.splits()
        chosen = train if split == "train" else val
        if not chosen.files:
            raise ValueError(
                f"the val split of {self.path} is empty: raise data.val_fraction (it holds whole images), "
                f"or set data.val_path"
            )
        everything = train.captions + val.captions
        tokenizer = make_tokenizer(self.tokenizer, everything)
        length = sequence_length(tokenizer, everything, self.max_length)
        files, image_of = _image_index(chosen.files)
        images = DecodedImages(
            files, image_size=self.image_size, channels=self.channels, cache=self.cache, max_pixels=self.max_pixels
        )
        threads = self.num_threads
        executor = ThreadPoolExecutor(threads, thread_name_prefix=f"craft-captions-{split}") if threads else None
        return caption_batches(
            split, images, image_of, chosen.captions, tokenizer, length, config=self, seed=seed, rank=rank,
            world_size=world_size, executor=executor, prefetch=self.prefetch,
            examples=list(zip(chosen.files, chosen.captions)),
            fingerprint=lambda: options_fingerprint(
                self, split, chosen.captions, files_fingerprint(chosen.files, chosen.source.parent)
            ),
        )

    def load_image(self, path: str | Path) -> Tensor:
        """float32 ``(C, S, S)``: the image file at ``path`` as a training batch would hold it."""
        return load_image(
            path, image_size=self.image_size, channels=self.channels, mean=self.mean, std=self.std,
            max_pixels=self.max_pixels,
        )


# -- synthetic scenes ------------------------------------------------------


@functools.lru_cache(maxsize=8)
def scene_captions(
    num: int, *, seed: int, split: str, shapes: tuple[str, ...], colours: tuple[str, ...], max_things: int
) -> tuple[str, ...]:
    """The captions of scenes ``0..num-1`` of ``split`` (kept: train and val builds both need them)."""
    return tuple(
        describe_scene(i, seed=seed, split=split, shapes=shapes, colours=colours, max_things=max_things).caption
        for i in range(num)
    )


def scene_tokenizer(kind: str) -> Tokenizer:
    """The tokenizer of every scene caption: the grammar's words, so runs on other scenes agree on it."""
    return make_tokenizer(kind, [" ".join(WORDS)])


@DATASETS.register("shape_captions")
@attrs.frozen
class ShapeCaptionsConfig:
    """``[data] kind = "shape_captions"``: synthetic captioned scenes (``craft.data.scenes``) rendered in memory.

    Scene ``i`` of a split is a pure function of ``(data_seed, split, i)``;
    the run's seed only orders them. ``shapes`` and ``colours`` restrict what
    scenes show, ``max_things`` (1 or 2) how many shapes each has. The
    vocabulary is the grammar's whole word list (or its characters), whatever
    was drawn. One background thread renders each image on first use and keeps it.
    """

    num_train: int = attrs.field(default=20000, validator=checks.at_least(0))
    num_val: int = attrs.field(default=1000, validator=checks.at_least(0))
    image_size: int = attrs.field(default=DEFAULT_IMAGE_SIZE, validator=checks.at_least(1))
    channels: int = attrs.field(default=3, validator=checks.channels)
    batch_size: int = attrs.field(default=64, validator=checks.at_least(1))
    eval_batch_size: int | None = attrs.field(default=None, validator=checks.at_least(1))
    tokenizer: Literal["word", "char"] = attrs.field(default="word", validator=checks.one_of("word", "char"))
    max_length: int | None = attrs.field(default=None, validator=checks.at_least(2))
    shapes: list[str] = attrs.field(factory=lambda: list(SHAPES), validator=validate_shapes)
    colours: list[str] = attrs.field(factory=lambda: list(COLOURS), validator=names_from(COLOURS, "colour"))
    max_things: int = attrs.field(default=2, validator=checks.one_of(1, 2))
    data_seed: int = 0
    mean: list[float] = attrs.field(factory=lambda: [0.5], validator=checks.per_channel)
    std: list[float] = attrs.field(factory=lambda: [0.5], validator=checks.per_channel)

    def captions(self, split: str) -> tuple[str, ...]:
        """Every caption of ``split``, scene by scene."""
        checks.check_split(split)
        num = self.num_train if split == "train" else self.num_val
        return scene_captions(num, **self._scene_options(split))

    def picture(self, split: str) -> Callable[[int], Image.Image]:
        """``picture(i)``: scene ``i`` of ``split`` drawn at ``image_size``, ``channels``."""
        options = self._scene_options(split)
        return lambda i: render_scene(describe_scene(i, **options), self.image_size, self.channels)

    def build(self, split: str, *, seed: int, rank: int = 0, world_size: int = 1) -> TrainBatches | EvalBatches:
        """Batches ``{"image": float32 (B, C, S, S), "input", "target": int64 (B, T)}`` of ``split``."""
        checks.check_split(split)
        num = self.num_train if split == "train" else self.num_val
        if num < 1:
            raise ValueError(f"the {split} split is empty: set data.num_{split} > 0")
        tokenizer = scene_tokenizer(self.tokenizer)
        length = sequence_length(tokenizer, [*self.captions("train"), *self.captions("val")], self.max_length)
        images = RenderedImages(num, self.picture(split), image_size=self.image_size, channels=self.channels)
        # One thread renders ahead while the caller trains; one, so renders never race.
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"craft-scenes-{split}")
        return caption_batches(
            split, images, torch.arange(num), list(self.captions(split)), tokenizer, length, config=self, seed=seed,
            rank=rank, world_size=world_size, executor=executor, prefetch=2,
            fingerprint=options_fingerprint(self, split),
        )

    def load_image(self, path: str | Path) -> Tensor:
        """float32 ``(C, S, S)``: the image file at ``path`` as a training batch would hold it."""
        return load_image(path, image_size=self.image_size, channels=self.channels, mean=self.mean, std=self.std)

    def _scene_options(self, split: str) -> dict:
        return {
            "seed": self.data_seed, "split": split, "shapes": tuple(sorted(self.shapes)),
            "colours": tuple(sorted(self.colours)), "max_things": self.max_things,
        }


PREPARED_CAPTIONS = {
    "num_train": attrs.fields(ShapeCaptionsConfig).num_train.default,
    "num_val": attrs.fields(ShapeCaptionsConfig).num_val.default,
}
"""How many scenes ``craft prepare captions`` writes: as many as ``kind = "shape_captions"`` renders."""


def write_caption_folder(
    root: str | Path,
    *,
    num_train: int,
    num_val: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    channels: int = 3,
    shapes: list[str] | tuple[str, ...] = SHAPES,
    colours: list[str] | tuple[str, ...] = tuple(COLOURS),
    max_things: int = 2,
) -> Path:
    """Write the scenes of ``shape_captions`` as ``root/{train,val}/<i>.png`` and ``root/{train,val}/captions.jsonl``.

    Line ``i`` of a split's captions file is scene ``i``'s, so ``caption_folder``
    on ``root`` reads the same examples as ``shape_captions`` with the same
    options. The folder appears complete or not at all (written under a
    hidden name, then renamed); an existing non-empty ``root`` is a FileExistsError.
    """
    check_folder_options(image_size=image_size, num_train=num_train, num_val=num_val)
    config = ShapeCaptionsConfig(
        num_train=num_train, num_val=num_val, image_size=image_size, channels=channels,
        shapes=list(shapes), colours=list(colours), max_things=max_things, data_seed=seed,
    )
    pictures = {split: config.picture(split) for split in ("train", "val")}

    def fill(tmp: Path, pool: Executor) -> None:
        def write(split: str, i: int, name: str) -> None:
            pictures[split](i).save(tmp / split / name)

        for split, num in (("train", num_train), ("val", num_val)):
            (tmp / split).mkdir()
            names = [f"{i:0{len(str(max(num - 1, 0)))}d}.png" for i in range(num)]
            for _ in pool.map(write, [split] * num, range(num), names):
                pass
            lines = [json.dumps({"image": n, "caption": c}) for n, c in zip(names, config.captions(split))]
            (tmp / split / "captions.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    return write_folder(root, fill, thread_name="craft-write-captions")
