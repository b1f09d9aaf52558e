"""Character-level text: a corpus, its tokenizer, and batches of token windows or lines.

The corpus is one or more UTF-8 files joined in order, or, with no ``path``,
the Python documentation that ships with every Python install (so language
experiments run offline). Tokens are the corpus's distinct characters, sorted:
the vocabulary is the whole configured corpus (train and val), as in nanoGPT,
so every character of the data encodes. The last ``val_fraction`` of the text
(or of the lines) is the val split.

A batch is ``{"input": int64 (B, T), "target": int64 (B, T)}``: ``target`` is
``input`` shifted one token on. Padding holds token 0 in ``input`` and
``IGNORE_INDEX`` (-100) in ``target``, which ``F.cross_entropy(...,
ignore_index=-100)`` skips.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import attrs
import torch
from torch import Tensor

from craft.data import DATASETS, checks
from craft.data.batching import Batch, EvalBatches, Load, TrainBatches, options_fingerprint
from craft.data.tokenizers import CharTokenizer, UnknownCharactersError  # noqa: F401  (re-exported: they lived here)
from craft.validators import between
from craft.words import plural

IGNORE_INDEX = -100
"""Target of a padding position; ``F.cross_entropy``'s default ``ignore_index``."""


# -- corpus ----------------------------------------------------------------


def read_text(path: str | Path) -> str:
    """The UTF-8 text of the file at ``path``: a leading byte-order mark dropped, and line ends read as ``"\\n"``
    (``"\\r\\n"`` and a lone ``"\\r"``, as Python's text mode reads them), so a copy saved on Windows is the same
    text, with the same characters, as the one it was copied from."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not a text file; set data.path to a file or a list of files")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file; fix data.path (relative paths start at the current folder)") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e}); fix data.path or the file's permissions") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not UTF-8 text (invalid byte 0x{data[e.start]:02x} at offset {e.start}); convert it to UTF-8"
        ) from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def read_corpus(paths: list[str | Path]) -> str:
    """The files' texts joined in order; a file that does not end in a newline gets one."""
    texts = [read_text(p) for p in paths]
    text = "".join(t if not t or t.endswith("\n") else t + "\n" for t in texts)
    if not text:
        names = ", ".join(map(str, paths)) or "no files"
        raise ValueError(f"the corpus is empty ({names}); put text in it or set data.path to other files")
    return text


BYTES_PER_BYTE = 32
"""Memory a byte of text takes at the peak of a run, both splits built (50 MB of Python: 1.7 GB)."""


def available_memory() -> int | None:
    """Bytes of memory the system can still give (Linux's MemAvailable), or None where it cannot tell."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def check_fits(paths: list[str | Path], available: int | None) -> None:
    """Refuse, in one line naming the token path, a corpus whose characters would not fit in memory:
    read whole, it would end in the system killing the run, with no word on why."""
    size = sum(Path(p).stat().st_size for p in paths if Path(p).is_file())
    if available is None or size * BYTES_PER_BYTE <= available:
        return
    names = " ".join(map(str, paths))
    raise ValueError(
        f"data.path: {size / 1e6:,.1f} MB of text, held whole in memory as characters by kind = \"text\" "
        f"(about {size * BYTES_PER_BYTE / 1e9:,.1f} GB), more than the {available / 1e9:,.1f} GB free; stream it "
        f"into token files instead: craft prepare tokens {names} data/mytext, then [data] kind = \"tokens\", "
        'path = "data/mytext" (docs/language.md)'
    )


def default_corpus() -> str:
    """The Python documentation topics bundled with Python (about 465k characters, 103 distinct)."""
    from pydoc_data.topics import topics

    return "".join(topics[key] for key in sorted(topics))


# -- examples --------------------------------------------------------------


def split_point(length: int, val_fraction: float) -> int:
    """Where val starts: the last ``val_fraction`` of ``length`` items (tokens or lines) are val."""
    return int(length * (1 - val_fraction))


def train_windows(data: Tensor, block_size: int) -> tuple[Load, int]:
    """``load(starts (b,)) -> batch`` of the windows ``data[s : s + T + 1]``, and their count ``N - T``."""
    offsets = torch.arange(block_size)

    def load(starts: Tensor) -> Batch:
        positions = starts[:, None] + offsets  # (b, T)
        return {"input": data[positions], "target": data[positions + 1]}

    return load, len(data) - block_size


def val_windows(context: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """``(input, target)`` int64 ``(W, T)``: consecutive windows whose targets are ``context[1:]``, each once.

    The last window is padded (input 0, target ``IGNORE_INDEX``).
    """
    count = len(context) - 1
    pad = -count % block_size
    inputs = torch.cat([context[:-1], context.new_zeros(pad)])
    targets = torch.cat([context[1:], context.new_full((pad,), IGNORE_INDEX)])
    return inputs.view(-1, block_size), targets.view(-1, block_size)


def line_spans(text: str) -> tuple[str, Tensor, Tensor]:
    """``(joined, starts, lengths)`` of the non-empty lines of ``text`` (``\\r\\n`` or ``\\n`` ends).

    ``joined = "\\n" + "\\n".join(lines) + "\\n"``; line ``i`` is
    ``joined[starts[i] + 1 : starts[i] + 1 + lengths[i]]``, so its sequence
    ``"\\n" + line + "\\n"`` is ``joined[starts[i] : starts[i] + lengths[i] + 2]``.
    """
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    lines = [line for line in lines if line]
    lengths = torch.tensor([len(line) for line in lines], dtype=torch.int64)
    starts = torch.cumsum(lengths + 1, 0) - (lengths + 1)
    return "\n" + "\n".join(lines) + "\n", starts, lengths


def line_examples(data: Tensor, starts: Tensor, lengths: Tensor, max_length: int) -> Load:
    """``load(lines (b,)) -> batch``: each ``"\\n" + line + "\\n"`` as (input, target), truncated
    and padded to ``max_length``."""
    offsets = torch.arange(max_length)

    def load(indices: Tensor) -> Batch:
        positions = starts[indices, None] + offsets  # (b, T)
        real = offsets < lengths[indices, None] + 1  # a sequence of n + 2 tokens gives n + 1 pairs
        positions = positions.clamp_(max=len(data) - 2)  # padding reads any token, then is overwritten
        return {
            "input": data[positions].masked_fill_(~real, 0),
            "target": data[positions + 1].masked_fill_(~real, IGNORE_INDEX),
        }

    return load


# -- config ----------------------------------------------------------------


def _paths(instance, attribute, value: str | list[str] | None) -> None:
    if value is None or (isinstance(value, str) and value):
        return
    if isinstance(value, list) and value and all(isinstance(p, str) and p for p in value):
        return
    raise ValueError(f"must be a file path or a non-empty list of file paths, got {value!r}")


@DATASETS.register("text")
@attrs.frozen
class TextConfig:
    """``[data] kind = "text"``: character-level language modelling on text files.

    ``path``: a file or a list of files (relative to the current folder);
    unset, the Python documentation bundled with Python. ``format = "windows"``:
    examples are windows of ``block_size`` tokens at every position (train,
    shuffled) or back to back (val). ``format = "lines"``: one example per
    non-empty line, ``"\\n" + line + "\\n"`` (the newline marks both ends),
    truncated and padded to ``max_length``. ``batch_size`` is the global batch;
    ``eval_batch_size`` (default ``batch_size``) is val's.
    """

    path: str | list[str] | None = attrs.field(default=None, validator=_paths)
    format: Literal["windows", "lines"] = attrs.field(default="windows", validator=checks.one_of("windows", "lines"))
    block_size: int = attrs.field(default=64, validator=checks.at_least(1))
    max_length: int = attrs.field(default=128, validator=checks.at_least(1))
    batch_size: int = attrs.field(default=12, validator=checks.at_least(1))
    val_fraction: float = attrs.field(default=0.1, validator=between(0, 1, low_open=True, high_open=True))
    eval_batch_size: int | None = attrs.field(default=None, validator=checks.at_least(1))

    def corpus(self) -> str:
        """The configured text: the files of ``path`` joined, or the default corpus."""
        if self.path is None:
            return default_corpus()
        paths = [self.path] if isinstance(self.path, str) else self.path
        check_fits(paths, available_memory())
        return read_corpus(paths)

    def tokenizer(self) -> CharTokenizer:
        """The vocabulary of the whole corpus (what ``build`` uses)."""
        return CharTokenizer.from_text(self.corpus())

    def build(self, split: str, *, seed: int, rank: int = 0, world_size: int = 1) -> TrainBatches | EvalBatches:
        """Batches ``{"input", "target": int64 (B, T)}`` of ``split``.

        The iterator also carries ``tokenizer``, ``vocab_size`` and ``block_size``
        (its ``T``: ``block_size`` for windows, ``max_length`` for lines).
        """
        checks.check_split(split)
        text = self.corpus()
        tokenizer = CharTokenizer.from_text(text)
        if self.format == "windows":
            length, num_examples, load = self._windows(split, tokenizer.encode_tensor(text))
            unit, size = "tokens", self.block_size
        else:
            length, num_examples, load = self._lines(split, text, tokenizer)
            unit, size = "lines", self.max_length
        digest = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
        fingerprint = options_fingerprint(self, split, digest)
        common = {"classes": [], "rank": rank, "world_size": world_size, "fingerprint": fingerprint}
        if split == "train":
            if num_examples < self.batch_size:
                windows = f" ({num_examples} windows of block_size + 1 tokens)" if unit == "tokens" else ""
                raise ValueError(
                    f"the train split has {length} {unit}{windows}, fewer than one batch "
                    f"(data.batch_size={self.batch_size}); lower batch_size, add text or lower data.val_fraction"
                )
            batches = TrainBatches(num_examples, load, batch_size=self.batch_size, seed=seed, **common)
        else:
            batches = EvalBatches(num_examples, load, batch_size=self.eval_batch_size or self.batch_size, **common)
        batches.tokenizer, batches.vocab_size, batches.block_size = tokenizer, tokenizer.vocab_size, size
        counted = plural(length, "character") if unit == "tokens" else plural(length, "non-empty line")
        part = "all but the last" if split == "train" else "the last"
        batches.summary = f"{counted} in {self._source()} ({part} {self.val_fraction:g}, data.val_fraction)"
        return batches

    def _windows(self, split: str, data: Tensor) -> tuple[int, int, Load]:
        """``(tokens, examples, load)`` of the split of ``data (N,)``."""
        cut = split_point(len(data), self.val_fraction)
        if split == "train":
            train = data[:cut]
            if len(train) < self.block_size + 1:
                raise ValueError(
                    f"the train split has {len(train)} tokens, fewer than block_size + 1 = {self.block_size + 1}; "
                    f"lower data.block_size, add text or lower data.val_fraction"
                )
            load, count = train_windows(train, self.block_size)
            return len(train), count, load
        # Every val token is a target once: the first one's input is the last train token.
        context = data[cut - 1 :] if cut else data
        if cut == len(data) or len(context) < 2:
            raise ValueError(self._empty_val(len(data), "tokens"))
        inputs, targets = val_windows(context, self.block_size)

        def load(indices: Tensor) -> Batch:
            return {"input": inputs[indices], "target": targets[indices]}

        return len(data) - cut, len(inputs), load

    def _lines(self, split: str, text: str, tokenizer: CharTokenizer) -> tuple[int, int, Load]:
        """``(lines, examples, load)`` of the split's non-empty lines."""
        joined, starts, lengths = line_spans(text)
        if not len(lengths):
            raise ValueError(
                f"{self._source()} has no non-empty lines; add some, or set data.format = \"windows\""
            )
        cut = split_point(len(lengths), self.val_fraction)
        chosen = slice(0, cut) if split == "train" else slice(cut, None)
        starts, lengths = starts[chosen], lengths[chosen]
        if split == "val" and not len(lengths):
            raise ValueError(self._empty_val(cut, "non-empty lines"))
        load = line_examples(tokenizer.encode_tensor(joined), starts, lengths, self.max_length)
        return len(lengths), len(lengths), load

    def _source(self) -> str:
        if self.path is None:
            return "the default corpus"
        return self.path if isinstance(self.path, str) else ", ".join(self.path)

    def _empty_val(self, total: int, unit: str) -> str:
        return (
            f"the val split is empty: data.val_fraction={self.val_fraction} of {total} {unit} is none; "
            f"raise val_fraction or add text"
        )
