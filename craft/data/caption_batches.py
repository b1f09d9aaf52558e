"""Captions as batches: tokenized, shifted and padded beside their images.

A caption is encoded as ``[BOUNDARY] + tokens + [BOUNDARY]`` and a batch is::

    {"image": float32 (B, C, S, S), "input": int64 (B, T), "target": int64 (B, T)}

``input`` is the sequence without its last token, ``target`` without its
first; padding holds 0 in ``input`` and ``IGNORE_INDEX`` (-100) in
``target``. ``T`` is ``max_length``, by default the longest caption (train
and val) plus one. Images are decoded, converted, resized and normalized as
``craft.data.images`` does; ``load_image`` does the same to one file at
generation time.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

import torch
from torch import Tensor

from craft.data.batching import Batch, EvalBatches, TrainBatches, normalize
from craft.data.files import MAX_PIXELS, ImageError
from craft.data.images import load_images
from craft.data.text import IGNORE_INDEX
from craft.data.tokenizers import BOUNDARY, CharTokenizer, WordTokenizer

Tokenizer = CharTokenizer | WordTokenizer


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
        try:
            pixels = images(image_of[indices])
        except ImageError as e:  # a deleted image's captions would then name a missing file
            raise ImageError(f"{e}; if you delete it, remove its lines from the captions file too") from None
        return {"image": normalize(pixels, mean, std), "input": inputs[indices], "target": targets[indices]}

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


def image_index(files: list[str]) -> tuple[list[str], Tensor]:
    """``(distinct files in first-seen order, (N,) int64 position of each example's file among them)``."""
    position: dict[str, int] = {}
    index = [position.setdefault(f, len(position)) for f in files]
    return list(position), torch.tensor(index, dtype=torch.int64)

