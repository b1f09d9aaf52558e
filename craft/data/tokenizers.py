"""Tokenizers: characters or words to token ids and back, saved as JSON.

Both follow ``craft.generate.Tokenizer`` (``encode(text) -> list[int]``,
``decode(ids) -> str``) and write ``{"kind": ..., ...}`` files that
``load_tokenizer`` reads back whatever their kind. ``BOUNDARY`` (``"\\n"``)
is a token of both: it marks where a line or a caption begins and ends.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from craft.words import listed, plural

BOUNDARY = "\n"
"""The token around every caption (and text line): ``[BOUNDARY] + tokens + [BOUNDARY]``."""


def _ids_list(ids: Iterable[int] | Tensor, vocab_size: int) -> list[int]:
    """``ids`` as a list of ints, each checked to be in ``[0, vocab_size)``."""
    if isinstance(ids, Tensor) and ids.ndim != 1:
        raise ValueError(f"decode takes one sequence of token ids (1-D), got shape {tuple(ids.shape)}")
    ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return ids


WRITTEN_BY = "give a tokenizer.json that a craft run, craft prepare tokens, a tokenizer's save() or Hugging Face tokenizers wrote"


def _read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no tokenizer file; was the run trained on text data?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a tokenizer file ({e}); {WRITTEN_BY}") from None



def _from_file_data(cls, path: str | Path, data: Any, kind: str, key: str, noun: str):
    """``cls(data[key])`` from a tokenizer file's JSON ``{"kind": kind, key: [...]}``; errors name ``path``."""
    if not isinstance(data, dict) or data.get("kind") != kind or not isinstance(data.get(key), list):
        raise ValueError(f'{path}: not a {noun} tokenizer (expected {{"kind": "{kind}", "{key}": [...]}})')
    try:
        return cls(data[key])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad tokenizer {key}: {e}") from None

# -- characters ------------------------------------------------------------


class UnknownCharactersError(ValueError):
    """Text with characters outside a tokenizer's vocabulary; ``chars`` holds them, sorted."""

    def __init__(self, chars: list[str], vocab_size: int) -> None:
        super().__init__(
            f"{plural(len(chars), 'character')} not in the vocabulary: {listed(chars)}; "
            f"the vocabulary ({vocab_size} characters) is the run's training text, so use only its characters"
        )
        self.chars = chars


def _sorted_distinct(instance, attribute, value: tuple[str, ...]) -> None:
    if not all(isinstance(c, str) and len(c) == 1 for c in value):
        raise ValueError(f"must be single characters, got {value[:10]!r}")
    if list(value) != sorted(set(value)):
        raise ValueError("must be distinct and sorted")


def _code_points(text: str) -> Tensor:
    """int32 ``(len(text),)``: the code point of each character (no Python loop)."""
    data = bytearray(text.encode("utf-32-le", "surrogatepass"))
    return torch.frombuffer(data, dtype=torch.int32) if data else torch.empty(0, dtype=torch.int32)


@attrs.frozen
class CharTokenizer:
    """Token ``i`` is ``chars[i]``; ``chars`` are distinct and sorted (by code point)."""

    chars: tuple[str, ...] = attrs.field(converter=tuple, validator=_sorted_distinct)
    _codes: Tensor = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        # Sorted code points: encoding is one searchsorted over the text.
        object.__setattr__(self, "_codes", _code_points("".join(self.chars)))

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode_tensor(self, text: str) -> Tensor:
        """int64 ``(len(text),)`` token ids; raises ``UnknownCharactersError``."""
        points = _code_points(text)
        if not len(points):
            return torch.empty(0, dtype=torch.int64)
        ids = torch.searchsorted(self._codes, points).clamp_(max=max(self.vocab_size - 1, 0))
        if self.vocab_size == 0 or not torch.equal(self._codes[ids], points):
            raise UnknownCharactersError(sorted(set(text) - set(self.chars)), self.vocab_size)
        return ids

    def encode(self, text: str) -> list[int]:
        return self.encode_tensor(text).tolist()

    def decode(self, ids: Iterable[int] | Tensor) -> str:
        """The text of token ids (a 1-D tensor or any iterable of ints)."""
        return "".join(self.chars[i] for i in _ids_list(ids, self.vocab_size))

    def save(self, path: str | Path) -> None:
        """Write ``{"kind": "char", "chars": [...]}`` as JSON; ``load`` reads it back."""
        Path(path).write_text(json.dumps({"kind": "char", "chars": list(self.chars)}) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        return cls._from_json(path, _read_json(path))

    @classmethod
    def _from_json(cls, path: str | Path, data: Any) -> CharTokenizer:
        return _from_file_data(cls, path, data, "char", "chars", "character")


# -- words -----------------------------------------------------------------


class UnknownWordsError(ValueError):
    """Text with words outside a tokenizer's vocabulary; ``words`` holds them, sorted."""

    def __init__(self, words: list[str], vocab_size: int) -> None:
        super().__init__(
            f"{plural(len(words), 'word')} not in the vocabulary: {listed(words)}; "
            f"the vocabulary ({vocab_size} words) is the run's training captions, so use only their words"
        )
        self.words = words


def split_words(text: str) -> list[str]:
    """The words of ``text`` (whitespace-separated pieces), with each ``"\\n"`` a word of its own."""
    words: list[str] = []
    for k, line in enumerate(text.split(BOUNDARY)):
        if k:
            words.append(BOUNDARY)
        words += line.split()
    return words


def _words(instance, attribute, value: tuple[str, ...]) -> None:
    bad = [w for w in value if not isinstance(w, str) or not w or (w != BOUNDARY and split_words(w) != [w])]
    if bad:
        raise ValueError(f"must be non-empty strings without whitespace (or '\\n'), got {bad[:5]!r}")
    if list(value) != sorted(set(value)):
        raise ValueError("must be distinct and sorted")


@attrs.frozen
class WordTokenizer:
    """Token ``i`` is ``words[i]``; ``words`` are distinct and sorted, ``"\\n"`` among them.

    ``encode`` splits text at whitespace, ``"\\n"`` being a word of its own;
    ``decode`` joins words with single spaces and puts no space around
    ``"\\n"``, so ``decode(encode(text))`` is ``text`` with its spacing
    normalized. Words are case-sensitive.
    """

    words: tuple[str, ...] = attrs.field(converter=tuple, validator=_words)
    _ids: dict[str, int] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_ids", {w: i for i, w in enumerate(self.words)})

    @classmethod
    def from_text(cls, text: str) -> WordTokenizer:
        """The distinct words of ``text``, and ``BOUNDARY`` always."""
        return cls(sorted(set(split_words(text)) | {BOUNDARY}))

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        """Token ids of the words of ``text``; raises ``UnknownWordsError``."""
        words = split_words(text)
        try:
            return [self._ids[w] for w in words]
        except KeyError:
            raise UnknownWordsError(sorted(set(words) - set(self._ids)), self.vocab_size) from None

    def encode_tensor(self, text: str) -> Tensor:
        """int64 ``(number of words,)`` token ids."""
        return torch.tensor(self.encode(text), dtype=torch.int64)

    def decode(self, ids: Iterable[int] | Tensor) -> str:
        """The text of token ids (a 1-D tensor or any iterable of ints)."""
        text, previous = [], BOUNDARY
        for i in _ids_list(ids, self.vocab_size):
            word = self.words[i]
            if word != BOUNDARY and previous != BOUNDARY:
                text.append(" ")
            text.append(word)
            previous = word
        return "".join(text)

    def save(self, path: str | Path) -> None:
        """Write ``{"kind": "word", "words": [...]}`` as JSON; ``load`` reads it back."""
        Path(path).write_text(json.dumps({"kind": "word", "words": list(self.words)}) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        return cls._from_json(path, _read_json(path))

    @classmethod
    def _from_json(cls, path: str | Path, data: Any) -> WordTokenizer:
        return _from_file_data(cls, path, data, "word", "words", "word")


# -- files -----------------------------------------------------------------

TOKENIZERS = {"char": CharTokenizer, "word": WordTokenizer}
"""``"kind"`` of a tokenizer file -> its class."""


def load_tokenizer(path: str | Path):
    """The tokenizer saved at ``path``, of whichever kind its ``"kind"`` names.

    A Hugging Face ``tokenizer.json`` (no ``"kind"``) is a ``BPETokenizer``;
    ``{"kind": "tiktoken", ...}`` a ``TiktokenTokenizer`` (see ``craft.data.bpe``).
    """
    from craft.data import bpe

    data = _read_json(path)
    if bpe.is_hugging_face(data):
        return bpe.BPETokenizer.load(path)
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "tiktoken":
        return bpe.TiktokenTokenizer.from_json(path, data)
    if kind not in TOKENIZERS:
        raise ValueError(
            f"{path}: not a tokenizer file (its \"kind\" is {kind!r}, expected one of "
            f"{sorted(TOKENIZERS)}, 'tiktoken', or a Hugging Face tokenizer.json); {WRITTEN_BY}"
        )
    return TOKENIZERS[kind]._from_json(path, data)


def saved_as(tokenizer: Any, path: str | Path) -> bool:
    """Whether ``tokenizer`` saves exactly the file at ``path``: the same vocabulary, so the same ids
    mean the same text. Compared as each kind writes itself, so a user-registered kind works too."""
    with tempfile.TemporaryDirectory() as tmp:
        mine = Path(tmp) / Path(path).name
        tokenizer.save(mine)
        return mine.read_bytes() == Path(path).read_bytes()
