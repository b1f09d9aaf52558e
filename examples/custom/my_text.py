"""A custom character-level dataset: a plain iterator, its config, one registry line.

Batches are ``{"input": int64 (B, T), "target": int64 (B, T)}`` with ``target``
the input shifted one character on: what ``[task] kind = "language_model"``
reads. The train split draws random windows forever; its position is the
number of batches drawn, so a resumed run continues exactly. The val split is
a list of batches of consecutive windows (a list can be iterated again and again).
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from craft.data import DATASETS
from craft.data.batching import derive_seed
from craft.data.text import CharTokenizer, default_corpus, read_text

Batch = dict[str, Tensor]


class RandomWindows:
    """Infinite batches of random windows of ``data (N,)``; ``decode`` turns ids back into text."""

    def __init__(self, data: Tensor, tokenizer: CharTokenizer, *, block_size: int, batch_size: int, seed: int) -> None:
        self.data, self.tokenizer = data, tokenizer
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.vocab_size = tokenizer.vocab_size  # a run sets the model's vocab_size from it
        self.index = 0

    def __iter__(self) -> RandomWindows:
        return self

    def __next__(self) -> Batch:
        # The batch is a function of (seed, index) alone: nothing else to save.
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.index))
        starts = torch.randint(len(self.data) - self.block_size, (self.batch_size,), generator=generator)
        window = starts[:, None] + torch.arange(self.block_size)  # (B, T)
        self.index += 1
        return {"input": self.data[window], "target": self.data[window + 1]}

    def state_dict(self) -> dict[str, int]:
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.index = state["index"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def consecutive_windows(data: Tensor, *, block_size: int, batch_size: int) -> list[Batch]:
    """Every whole window of ``data`` once, in order, in batches (the last one may be smaller)."""
    count = (len(data) - 1) // block_size
    inputs = data[: count * block_size].view(count, block_size)  # (W, T)
    targets = data[1 : count * block_size + 1].view(count, block_size)  # (W, T)
    return [
        {"input": inputs[i : i + batch_size], "target": targets[i : i + batch_size]}
        for i in range(0, count, batch_size)
    ]


@DATASETS.register("char_windows")
@attrs.frozen
class CharWindowsConfig:
    """``[data] kind = "char_windows"``: a text file (or, unset, the Python docs bundled with Python)."""

    path: str | None = None
    lowercase: bool = False
    block_size: int = 64
    batch_size: int = 32
    val_fraction: float = 0.1

    def build(self, split: str, *, seed: int, rank: int = 0, world_size: int = 1) -> RandomWindows | list[Batch]:
        text = default_corpus() if self.path is None else read_text(self.path)
        if self.lowercase:
            text = text.lower()
        tokenizer = CharTokenizer.from_text(text)  # train and val share the vocabulary
        data = tokenizer.encode_tensor(text)
        cut = int(len(data) * (1 - self.val_fraction))
        if split == "train":
            return RandomWindows(
                data[:cut], tokenizer, block_size=self.block_size, batch_size=self.batch_size,
                seed=derive_seed(seed, rank),  # each rank draws its own windows
            )
        return consecutive_windows(data[cut:], block_size=self.block_size, batch_size=self.batch_size)
