"""The seed's character-level LSTM language model.

``CharLSTM(idx)`` maps token ids ``(B, T)`` to next-token logits ``(B, T, V)``.
Its context is unbounded (``block_size = None``): the recurrent state carries
it. For generation, ``init_cache`` gives that state as a dict ``{"h", "c"}``;
a forward with the cache starts from it and writes the new state back into
it in place, so the cache stays caller-owned data for ``functional_call``.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from craft.models import MODELS, need_vocab_size
from craft.validators import at_least, between

Cache = dict[str, Tensor]


class CharLSTM(nn.Module):
    """Embedding, ``num_layers`` stacked LSTM layers (dropout between them), linear head."""

    block_size = None  # no limit on the context

    def __init__(
        self, vocab_size: int, embedding_dim: int = 64, hidden_dim: int = 256, num_layers: int = 2, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        # nn.LSTM applies dropout after every layer but the last; with one
        # layer it would only warn.
        self.lstm = nn.LSTM(
            embedding_dim, hidden_dim, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
        )
        self.head = nn.Linear(hidden_dim, vocab_size)

    def forward(self, idx: Tensor, cache: Cache | None = None, pos: int = 0) -> Tensor:
        """Logits ``(B, T, V)``; ``pos`` is unused (the state carries the position)."""
        x = self.embedding(idx)  # (B, T, E)
        if cache is None:
            out, _ = self.lstm(x)  # (B, T, H), from a zero state
        else:
            out, (h, c) = self.lstm(x, (cache["h"], cache["c"]))  # (B, T, H); h, c: (L, B, H)
            cache["h"].copy_(h)
            cache["c"].copy_(c)
        return self.head(out)  # (B, T, V)

    def init_cache(self, batch_size: int, *, device=None, dtype=None) -> Cache:
        """The zero state ``{"h": (L, B, H), "c": (L, B, H)}``; device and dtype default to the model's."""
        ref = self.head.weight
        shape = (self.lstm.num_layers, batch_size, self.lstm.hidden_size)
        options = dict(device=ref.device if device is None else device, dtype=ref.dtype if dtype is None else dtype)
        return {"h": torch.zeros(shape, **options), "c": torch.zeros(shape, **options)}


@MODELS.register("char_lstm")
@attrs.frozen
class CharLSTMConfig:
    """``[model] kind = "char_lstm"``: an LSTM language model; ``vocab_size`` comes from the data's tokenizer."""

    vocab_size: int | None = attrs.field(default=None, validator=at_least(1))
    embedding_dim: int = attrs.field(default=64, validator=at_least(1))
    hidden_dim: int = attrs.field(default=256, validator=at_least(1))
    num_layers: int = attrs.field(default=2, validator=at_least(1))
    dropout: float = attrs.field(default=0.0, validator=between(0, 1, high_open=True))

    def build(self) -> CharLSTM:
        need_vocab_size(self)
        return CharLSTM(**attrs.asdict(self))
