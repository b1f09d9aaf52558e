"""A custom LSTM language model: a user's module that craft imports by name.

``TiedLSTM(idx)`` maps token ids ``(B, T)`` to next-token logits ``(B, T, V)``.
The output layer reuses the embedding matrix (weight tying). For
``craft generate`` it keeps its recurrent state in a cache: ``init_cache``
gives the zero state, and ``forward(idx, cache)`` starts from it and writes
the new state back in place.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from craft.models import MODELS


class TiedLSTM(nn.Module):
    """Embedding (V -> E), one LSTM layer (E -> H), projection (H -> E), tied head (E -> V)."""

    block_size = None  # the recurrent state carries the context: no window to slide

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, batch_first=True)
        self.project = nn.Linear(hidden_dim, embedding_dim)

    def forward(self, idx: Tensor, cache: dict[str, Tensor] | None = None, pos: int = 0) -> Tensor:
        x = self.embedding(idx)  # (B, T, E)
        if cache is None:
            out, _ = self.lstm(x)  # (B, T, H), from a zero state
        else:
            out, (h, c) = self.lstm(x, (cache["h"], cache["c"]))  # h, c: (1, B, H)
            cache["h"].copy_(h)
            cache["c"].copy_(c)
        return self.project(out) @ self.embedding.weight.T  # (B, T, V)

    def init_cache(self, batch_size: int, *, device=None, dtype=None) -> dict[str, Tensor]:
        """The zero state ``{"h", "c"}``, each ``(1, B, H)``."""
        shape = (1, batch_size, self.lstm.hidden_size)
        h = torch.zeros(shape, device=device, dtype=dtype)
        return {"h": h, "c": torch.zeros_like(h)}


@MODELS.register("tied_lstm")
@attrs.frozen
class TiedLSTMConfig:
    """``[model] kind = "tied_lstm"``; ``vocab_size`` left unset is taken from the data."""

    vocab_size: int | None = None
    embedding_dim: int = 64
    hidden_dim: int = 128

    def build(self) -> TiedLSTM:
        if self.vocab_size is None:
            raise ValueError("vocab_size is not set; a run takes it from the data's tokenizer")
        return TiedLSTM(self.vocab_size, self.embedding_dim, self.hidden_dim)
