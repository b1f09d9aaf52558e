"""Captioned images as datasets: ``caption_folder`` (image files with a captions
file) and ``shape_captions`` (synthetic scenes), and writing scenes as a folder.

An example is an (image, caption) pair; batches are
``{"image": float32 (B, C, S, S), "input": int64 (B, T), "target": int64 (B, T)}``
(``craft.data.caption_batches``); a folder's captions file is read by
``craft.data.caption_files``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Literal

import attrs
import torch
from PIL import Image
from torch import Tensor

from craft.data import DATASETS, checks
from craft.data.batching import EvalBatches, TrainBatches, options_fingerprint
from craft.data.caption_batches import (
    Tokenizer, caption_batches, encode_captions, image_index, load_image, make_tokenizer, sequence_length,
)
from craft.data.caption_files import (
    CAPTION_FILES, Captions, captioned_val, find_captions, no_captions, read_captions, split_by_image,
)
from craft.data.files import MAX_PIXELS, files_fingerprint, shown
from craft.data.images import DecodedImages
from craft.data.scenes import DEFAULT_IMAGE_SIZE, WORDS, describe_scene, render_scene
from craft.data.drawing import RenderedImages
from craft.data.shapes import COLOURS, SHAPES, check_folder_options, names_from, validate_shapes, write_folder
from craft.data.threads import data_threads
from craft.words import plural

__all__ = [
    "CAPTION_FILES", "PREPARED_CAPTIONS", "CaptionFolderConfig", "Captions", "ShapeCaptionsConfig", "Tokenizer",
    "caption_batches", "encode_captions", "find_captions", "load_image", "make_tokenizer", "read_captions",
    "scene_captions", "scene_tokenizer", "sequence_length", "split_by_image", "write_caption_folder",
]


# -- caption folders -------------------------------------------------------


@DATASETS.register("caption_folder")
@attrs.frozen
class CaptionFolderConfig:
    """``[data] kind = "caption_folder"``: image files under ``path`` and their captions.

    The captions file is ``captions`` (a name in ``path``) or else
    ``captions.jsonl`` / ``captions.tsv`` in ``path``; see the module
    docstring for its format. Splits: ``val_path`` (another such folder) if
    set (training from ``path/train`` when ``path`` has no captions file but
    has one); else ``path/train`` and ``path/val`` when ``path`` has no captions
    file of its own; else ``path/val`` (or ``validation``, ``valid``) when it has
    a captions file of its own (``path``'s file then must not name its images);
    else a ``val_fraction`` of the images (fixed by
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
            if source is None and (root / "train").is_dir():  # a prepared folder's train/ stays its train split
                root, source = root / "train", find_captions(root / "train", self.captions)
            train = self._read(root, source)
            same = val_root.resolve() == root.resolve()  # evaluate reading only a test set: read (and warn) once
            return train, train if same else self._read(val_root, find_captions(val_root, self.captions))
        if source is None and (root / "train").is_dir() and (root / "val").is_dir():
            return tuple(self._read(root / s, find_captions(root / s, self.captions)) for s in ("train", "val"))
        if source is not None and (val := captioned_val(root, self.captions)) is not None:
            return read_captions(source, apart=val[0]), read_captions(val[1])  # val/ with its own captions
        every = self._read(root, source)
        train, val = split_by_image(every.files, self.val_fraction, self.data_seed)

        def subset(positions: list[int]) -> Captions:
            return Captions(every.source, [every.files[i] for i in positions], [every.captions[i] for i in positions])

        return subset(train), subset(val)

    def _read(self, folder: Path, source: Path | None) -> Captions:
        if source is None:
            raise no_captions(folder)
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
        files, image_of = image_index(chosen.files)
        images = DecodedImages(
            files, image_size=self.image_size, channels=self.channels, cache=self.cache, max_pixels=self.max_pixels
        )
        threads = self.num_threads
        executor = data_threads(threads, f"craft-captions-{split}")
        batches = caption_batches(
            split, images, image_of, chosen.captions, tokenizer, length, config=self, seed=seed, rank=rank,
            world_size=world_size, executor=executor, prefetch=self.prefetch,
            examples=list(zip(chosen.files, chosen.captions)),
            fingerprint=lambda: options_fingerprint(
                self, split, chosen.captions, files_fingerprint(chosen.files, chosen.source.parent)
            ),
        )
        held = "" if train.source != val.source or self.val_path is not None else (  # split by image
            " less the images held out for val" if split == "train" else
            f", {self.val_fraction:g} of its images held out by data_seed = {self.data_seed}")
        counted = f"{plural(len(chosen.captions), 'caption')} of {plural(len(files), 'image')}"
        batches.summary = f"{counted} in {shown(chosen.source)}{held}"
        return batches

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
        executor = data_threads(1, f"craft-scenes-{split}")
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
