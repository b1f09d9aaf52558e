"""Subword tokenizers: a byte-level BPE trained here, or a tiktoken encoding found locally.

Both follow ``craft.generate.Tokenizer`` (``encode(text) -> list[int]``,
``decode(ids) -> str``, ``vocab_size``, ``save(path)``) like the character
and word tokenizers, and ``craft.data.load_tokenizer`` reads either file back:

- ``BPETokenizer``: Hugging Face ``tokenizers``' byte-level BPE (the GPT-2
  scheme: every byte is a token, so any text encodes). ``save`` writes that
  library's own ``tokenizer.json``, which ``tokenizers.Tokenizer.from_file``
  and ``transformers.PreTrainedTokenizerFast(tokenizer_file=...)`` load as is.
- ``TiktokenTokenizer``: a named tiktoken encoding (``"gpt2"``,
  ``"cl100k_base"``, ...), saved as ``{"kind": "tiktoken", "encoding": NAME}``.
  Its files must already be in tiktoken's cache: craft never downloads at
  run time (``tiktoken_files_hint`` says how to put them there).

Each has one end-of-text token, ``eot`` (``END_OF_TEXT`` for BPE, the
encoding's own for tiktoken), which ``craft prepare tokens`` puts after every
file. A missing package is one line naming the extra that installs it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import attrs
import torch
from torch import Tensor

END_OF_TEXT = "<|endoftext|>"
"""The BPE's one special token (id 0): it ends every file of a prepared corpus."""


class MissingPackage(ImportError, ValueError):
    """An optional package is not installed (a ValueError too, so the CLI prints its one line)."""


def require(module: str, extra: str) -> Any:
    """``import module``, or a one-line ImportError naming craft's extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackage(
            f"this tokenizer needs the {module!r} package: pip install 'craft[{extra}]' (or pip install {module})"
        ) from None


def checked_ids(ids: Iterable[int] | Tensor, vocab_size: int) -> list[int]:
    """``ids`` (1-D) as a list of ints, each checked to be in ``[0, vocab_size)``."""
    if isinstance(ids, Tensor) and ids.ndim != 1:
        raise ValueError(f"decode takes one sequence of token ids (1-D), got shape {tuple(ids.shape)}")
    ids = ids.tolist() if isinstance(ids, Tensor) else [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return ids


# -- byte-level BPE (Hugging Face tokenizers) -------------------------------


def train_bpe(texts: Iterator[str], vocab_size: int, *, length: int | None = None) -> BPETokenizer:
    """A byte-level BPE of at most ``vocab_size`` tokens (``END_OF_TEXT`` is id 0) learned from ``texts``.

    Fewer when the text has fewer distinct pairs to merge.
    ``texts`` is consumed once, piece by piece (``train_from_iterator``), so a
    corpus larger than memory trains; ``length`` (the number of pieces) only
    sizes the library's progress bar.
    """
    tk = require("tokenizers", "bpe")
    if vocab_size < 257:
        raise ValueError(f"vocab_size must be at least 257 (256 bytes and {END_OF_TEXT}), got {vocab_size}")
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=length)
    return BPETokenizer(tokenizer.to_str())


@attrs.frozen
class BPETokenizer:
    """A Hugging Face ``tokenizers`` tokenizer, held as its JSON text (equal JSON, equal tokenizers).

    ``encode`` reads special tokens written in the text as ordinary text, as tiktoken's ``encode_ordinary``.
    """

    json: str = attrs.field(repr=False)
    _tokenizer: Any = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        tk = require("tokenizers", "bpe")
        try:
            tokenizer = tk.Tokenizer.from_str(self.json)
        except Exception as e:  # noqa: BLE001 - the library raises its own exception types
            raise ValueError(f"not a Hugging Face tokenizer ({e})") from None
        # Text is ordinary text: "<|endoftext|>" written in a file is 13 characters, not a document's
        # end (tiktoken's encode_ordinary). Not saved in the JSON: other tools keep their own default.
        tokenizer.encode_special_tokens = True
        object.__setattr__(self, "_tokenizer", tokenizer)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def eot(self) -> int:
        eot = self._tokenizer.token_to_id(END_OF_TEXT)
        if eot is None:
            raise ValueError(f"this tokenizer has no {END_OF_TEXT!r} token; train it with craft prepare tokens")
        return eot

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``, on the library's threads; without the character offsets that
        ``encode_batch`` also works out (``encode_batch_fast``, tokenizers 0.20 on): about twice as fast."""
        encode = getattr(self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def encode_tensor(self, text: str) -> Tensor:
        return torch.tensor(self.encode(text), dtype=torch.int64)

    def decode(self, ids: Iterable[int] | Tensor) -> str:
        """The text of token ids; ``END_OF_TEXT`` shows as itself, so a document's end is visible."""
        return self._tokenizer.decode(checked_ids(ids, self.vocab_size), skip_special_tokens=False)

    def save(self, path: str | Path) -> None:
        """Write the library's own ``tokenizer.json``."""
        Path(path).write_text(self.json, encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        try:
            return cls(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot read the tokenizer ({e})") from None
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def is_hugging_face(data: Any) -> bool:
    """Whether parsed JSON looks like a ``tokenizers`` file (it has a ``model``, and no craft ``kind``)."""
    return isinstance(data, dict) and "kind" not in data and isinstance(data.get("model"), dict)


def is_subword(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` is a BPE or tiktoken one: its tokens are pieces of bytes, not characters or words,
    so one token's text may not encode back to that token (a lone byte decodes to '\ufffd')."""
    return isinstance(tokenizer, (BPETokenizer, TiktokenTokenizer))


# -- tiktoken ----------------------------------------------------------------


class NoDownload(ConnectionError):
    """tiktoken asked for a file that is not in its cache."""


def tiktoken_files_hint(encoding: str) -> str:
    """How to make ``encoding``'s files available offline (one sentence)."""
    return (
        f"tiktoken's files for {encoding!r} are not in its cache and craft does not download at run time; "
        f"on a machine with network run python -c \"import tiktoken; tiktoken.get_encoding({encoding!r})\" "
        f"with TIKTOKEN_CACHE_DIR set, then copy that folder here and set TIKTOKEN_CACHE_DIR to it"
    )


@contextlib.contextmanager
def offline(tiktoken_load: Any) -> Iterator[None]:
    """Within: tiktoken reads its cache and local files only; a URL raises ``NoDownload``."""
    local = tiktoken_load.read_file

    def read_file(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise NoDownload(blobpath)
        return local(blobpath)

    with mock.patch.object(tiktoken_load, "read_file", read_file):
        yield


def tiktoken_encoding(name: str) -> Any:
    """The tiktoken ``Encoding`` called ``name``, from local files only; ValueError (one line) otherwise."""
    tiktoken = require("tiktoken", "tiktoken")
    import tiktoken.load

    known = tiktoken.list_encoding_names()
    if name not in known:
        raise ValueError(f"unknown tiktoken encoding {name!r}; known: {', '.join(known)}")
    try:
        with offline(tiktoken.load):
            return tiktoken.get_encoding(name)
    except NoDownload:
        raise ValueError(tiktoken_files_hint(name)) from None


@attrs.frozen
class TiktokenTokenizer:
    """A tiktoken encoding by name; text is encoded as ordinary text (special tokens are not parsed)."""

    encoding: str
    _enc: Any = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_enc", tiktoken_encoding(self.encoding))

    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab

    @property
    def eot(self) -> int:
        return self._enc.eot_token

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts)

    def encode_tensor(self, text: str) -> Tensor:
        return torch.tensor(self.encode(text), dtype=torch.int64)

    def decode(self, ids: Iterable[int] | Tensor) -> str:
        return self._enc.decode(checked_ids(ids, self.vocab_size))

    def token_bytes(self) -> dict[int, int]:
        """``{id: bytes}``: how many bytes of text each id stands for; special tokens and unused ids are left out."""
        special, sizes = {self._enc.encode_single_token(s) for s in self._enc.special_tokens_set}, {}
        for i in set(range(self._enc.n_vocab)) - special:
            try:
                sizes[i] = len(self._enc.decode_single_token_bytes(i))
            except KeyError:  # an id the encoding leaves unused
                pass
        return sizes

    def save(self, path: str | Path) -> None:
        """Write ``{"kind": "tiktoken", "encoding": NAME}``: the files stay in tiktoken's cache."""
        Path(path).write_text(json.dumps({"kind": "tiktoken", "encoding": self.encoding}) + "\n", encoding="utf-8")

    @classmethod
    def from_json(cls, path: str | Path, data: Any) -> TiktokenTokenizer:
        if not isinstance(data, dict) or not isinstance(data.get("encoding"), str):
            raise ValueError(f'{path}: not a tiktoken tokenizer (expected {{"kind": "tiktoken", "encoding": NAME}})')
        return cls(data["encoding"])
