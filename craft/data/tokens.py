"""``[data] kind = "tokens"``: token files on disk (nanoGPT's layout), read through ``numpy.memmap``.

A folder with ``train.bin`` and ``val.bin``: token ids back to back, flat
``uint16`` (or ``uint32``), no header, as ``craft prepare tokens`` and
nanoGPT's ``prepare.py`` write them. What the ids mean comes from, in order:
``meta.json`` and ``tokenizer.json`` (``craft prepare tokens``); nanoGPT's
``meta.pkl`` (``vocab_size``, and ``itos`` for characters); else the TOML
(``data.vocab_size``, ``data.dtype``, and ``data.tokenizer`` naming a local
tiktoken encoding such as ``"gpt2"``). The files are never loaded: each batch
reads its windows from the memory map (``craft.data.token_files`` reads and checks them).

- train: windows of ``block_size + 1`` tokens at every start position, each
  visited once per epoch in a seeded order computed on the fly (a Feistel
  permutation, so no ``randperm`` of billions of positions is built), in
  ``TrainBatches``: resumable bitwise from ``{"epoch", "index"}`` and sharded
  by rank like every other dataset.
- val: all of ``val.bin`` in consecutive windows (every token after the first
  is a target once; the last window padded with ``IGNORE_INDEX``), or with
  ``val_windows = N``, ``N`` windows evenly spaced over it (for large files).
  The iterator's ``evaluation`` says which, in words.

A batch is ``{"input": int64 (B, T), "target": int64 (B, T)}``, ``target``
being ``input`` one token on. Both iterators carry ``tokenizer`` (or None),
``vocab_size`` and ``block_size``, so the model takes them from the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np
import torch
from torch import Tensor

from craft.data import DATASETS, checks
from craft.data.batching import Batch, EvalBatches, TrainBatches, derive_seed, fingerprint_of, options_fingerprint
from craft.data.text import IGNORE_INDEX
from craft.data.token_files import DTYPES, check_count, check_folder, check_width, folder_meta, open_tokens

ROUNDS, M32 = 6, 0xFFFFFFFF


# -- a permutation without a table -------------------------------------------


def mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash of int64 ``x`` (each in ``[0, 2**32)``), elementwise; products stay below 2**63."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & M32
    return (x >> 16) ^ x


def permuted(positions: Tensor, n: int, key: int) -> Tensor:
    """int64 images of ``positions`` (each in ``[0, n)``) under a bijection of ``[0, n)`` chosen by ``key``.

    A balanced Feistel network over the smallest even number of bits that
    covers ``n`` (fewer than ``4 n`` values), cycle-walked back into ``[0, n)``:
    distinct positions give distinct images, with O(len(positions)) memory.
    """
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = (1 << half) - 1
    keys = [derive_seed("feistel", key, r) & M32 for r in range(ROUNDS)]

    def once(x: Tensor) -> Tensor:
        left, right = x >> half, x & mask
        for k in keys:
            left, right = right, left ^ (mix32(right ^ k) & mask)
        return (left << half) | right

    x = once(positions.to(torch.int64))
    while (outside := x >= n).any():
        x = torch.where(outside, once(x), x)
    return x


def read_windows(tokens: np.memmap, starts: Tensor, length: int) -> Tensor:
    """int64 ``(b, length)``: ``tokens[s : s + length]`` for each start (clamped to the file's end)."""
    positions = (starts[:, None] + torch.arange(length)).clamp_(max=len(tokens) - 1)
    return torch.from_numpy(tokens[positions.numpy()].astype(np.int64))


# -- config --------------------------------------------------------------------


@DATASETS.register("tokens")
@attrs.frozen
class TokensConfig:
    """``[data] kind = "tokens"``: a folder of ``train.bin``/``val.bin`` token ids (see the module docstring).

    ``vocab_size``, ``dtype`` and ``tokenizer`` (a tiktoken encoding name) are
    needed only for a folder that does not state them (nanoGPT's, without
    meta.pkl); given for one that does, they must agree with it.
    ``val_windows``: unset, val is all of ``val.bin``; else that many evenly
    spaced windows. ``batch_size`` is the global batch; ``eval_batch_size``
    (default ``batch_size``) is val's.
    """

    path: str = attrs.field(validator=attrs.validators.instance_of(str))
    block_size: int = attrs.field(default=1024, validator=checks.at_least(1))
    batch_size: int = attrs.field(default=12, validator=checks.at_least(1))
    eval_batch_size: int | None = attrs.field(default=None, validator=checks.at_least(1))
    val_windows: int | None = attrs.field(default=None, validator=checks.at_least(1))
    vocab_size: int | None = attrs.field(default=None, validator=checks.at_least(1))
    dtype: Literal["uint16", "uint32"] | None = attrs.field(default=None, validator=checks.one_of(*DTYPES, None))
    tokenizer: str | None = None

    def resolve(self) -> tuple[int, str, Any]:
        """``(vocab_size, dtype, tokenizer or None)`` of the folder, its own statements checked against the TOML."""
        meta, tokenizer = folder_meta(Path(self.path))
        if tokenizer is None and self.tokenizer is not None:
            from craft.data.bpe import TiktokenTokenizer

            tokenizer = TiktokenTokenizer(self.tokenizer)
        vocab = self.pick("vocab_size", meta.get("vocab_size"), tokenizer.vocab_size if tokenizer else None)
        if vocab is None:
            raise ValueError(
                f"data.vocab_size: {self.path!r} has no meta.json or meta.pkl saying how many tokens there are; "
                "set data.vocab_size (50257 for GPT-2's tokens)"
            )
        if tokenizer is not None and vocab < tokenizer.vocab_size:
            raise ValueError(f"data.vocab_size = {vocab} is smaller than the tokenizer's {tokenizer.vocab_size}; raise it")
        default = "uint16" if vocab <= 1 << 16 else "uint32"
        return vocab, self.pick("dtype", meta.get("dtype"), default), tokenizer

    def pick(self, key: str, stated: Any, default: Any) -> Any:
        """The TOML's ``key`` or the folder's, which must agree when both are given; else ``default``."""
        given = getattr(self, key)
        if given is not None and stated is not None and given != stated:
            raise ValueError(f"data.{key} = {given!r} but {self.path!r} says {stated!r}; remove data.{key}")
        return next((v for v in (given, stated, default) if v is not None), None)

    def build(self, split: str, *, seed: int, rank: int = 0, world_size: int = 1) -> TrainBatches | EvalBatches:
        """Batches ``{"input", "target": int64 (B, block_size)}`` of ``split``, read from the memory map."""
        checks.check_split(split)
        check_folder(self.path, split)  # before its meta: a folder of other files lacks those first
        vocab, dtype, tokenizer = self.resolve()
        file = Path(self.path) / f"{split}.bin"
        tokens = open_tokens(file, dtype)
        check_count(file, tokens, split)
        check_width(file, tokens)
        digest = fingerprint_of(len(tokens), bytes(tokens[:4096]), bytes(tokens[-4096:]))
        common = {"classes": [], "rank": rank, "world_size": world_size,
                  "fingerprint": options_fingerprint(self, split, digest)}
        if split == "train":
            batches = self.train_batches(tokens, file, vocab, seed, common)
        else:
            batches = self.val_batches(tokens, file, vocab, common)
        batches.tokenizer, batches.vocab_size, batches.block_size = tokenizer, vocab, self.block_size
        return batches

    def train_batches(self, tokens: np.memmap, file: Path, vocab: int, seed: int, common: dict) -> TrainBatches:
        count, T = len(tokens) - self.block_size, self.block_size
        if count < self.batch_size:
            raise ValueError(
                f"{file}: {len(tokens):,} tokens give {max(count, 0):,} windows of block_size + 1 = {T + 1}, "
                f"fewer than one batch (data.batch_size={self.batch_size}); lower block_size or batch_size"
            )

        def load(starts: Tensor) -> Batch:
            window = checked(read_windows(tokens, starts, T + 1), vocab, file)
            return {"input": window[:, :-1], "target": window[:, 1:]}

        def order(epoch: int, positions: Tensor) -> Tensor:
            return permuted(positions, count, derive_seed("tokens", seed, epoch))

        batches = TrainBatches(count, load, batch_size=self.batch_size, seed=seed, order=order, **common)
        batches.evaluation, batches.partial = None, False
        return batches

    def val_batches(self, tokens: np.memmap, file: Path, vocab: int, common: dict) -> EvalBatches:
        T, length = self.block_size, len(tokens)
        if length < 2:
            raise ValueError(f"{file}: {length} token; val needs at least 2 (an input and its target)")
        consecutive = -(-(length - 1) // T)
        if self.val_windows is None or self.val_windows >= consecutive:
            count, what = consecutive, f"all {length - 1:,} targets of {file.name}, in {consecutive:,} windows of {T}"
            if self.val_windows is not None:  # else the run's val_windows would seem lost on a small split
                what += f" (data.val_windows = {self.val_windows} covers them all)"

            def starts(indices: Tensor) -> Tensor:
                return indices * T
        else:
            if length < T + 1:
                raise ValueError(f"{file}: {length} tokens, fewer than block_size + 1; remove data.val_windows")
            count = self.val_windows
            what = f"{count:,} evenly spaced windows of {T} tokens (of {length:,} in {file.name})"

            def starts(indices: Tensor) -> Tensor:
                return indices * (length - T - 1) // max(count - 1, 1)

        def load(indices: Tensor) -> Batch:
            first = starts(indices)
            window = checked(read_windows(tokens, first, T + 1), vocab, file)
            past = first[:, None] + torch.arange(1, T + 1) >= length  # targets beyond the file: padding
            return {
                "input": window[:, :-1].masked_fill(past, 0),
                "target": window[:, 1:].masked_fill(past, IGNORE_INDEX),
            }

        batches = EvalBatches(count, load, batch_size=self.eval_batch_size or self.batch_size, **common)
        batches.evaluation, batches.partial = f"val: {what}", count < consecutive
        return batches


def checked(window: Tensor, vocab: int, file: Path) -> Tensor:
    """``window``, after checking its ids are below ``vocab`` (a wrong dtype or vocab_size shows here)."""
    top = int(window.max())
    if top >= vocab:
        raise ValueError(f"{file}: token id {top} >= vocab_size {vocab}; check data.vocab_size and data.dtype")
    return window
