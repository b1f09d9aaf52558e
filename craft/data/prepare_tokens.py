"""``craft prepare tokens SRC... OUT``: text files streamed into token files (nanoGPT's layout).

OUT gets ``train.bin`` and ``val.bin`` (the token ids back to back: flat
little-endian ``uint16``, or ``uint32`` when the vocabulary has more than
65,536 tokens; no header), the tokenizer as ``tokenizer.json`` and
``meta.json`` (dtype, vocabulary size, token counts, the tokenizer's kind and
file). ``[data] kind = "tokens"`` reads the folder.

How the corpus is read:

- SRC are text files or folders; a folder gives its ``TEXT_SUFFIXES`` files,
  walked safely (``craft.data.files.find_files``: no link out of it, each
  file once). ``@stdlib`` is the Python standard library's own source files
  (about 30 MB of ``.py`` with its tests, offline everywhere). Files that are not UTF-8 are
  left out and counted.
- Each file is read in pieces of about ``chunk_size`` bytes, cut only at a
  newline with printable ASCII on both sides (where a byte-level BPE or
  tiktoken never joins the two sides), so its tokens are those of the whole
  file encoded at once, and memory holds a few pieces, never the corpus. (A
  stretch of 64 chunks without such a place, e.g. one long line or ``\\r\\n`` line ends, is
  cut before a space between printable characters, exact too; without one, at a newline anyway:
  its tokens there may differ from the whole file's.)
- The val split is deterministic: the last ``val_fraction`` of each file's
  bytes, from the first line start at or after that point (in a file of
  one long line, the first space or character there). Each file's train part and its val part end with
  the end-of-text token.
- ``--tokenizer=bpe`` trains a byte-level BPE of ``vocab_size`` tokens on the
  train parts (streamed); ``--tokenizer=tiktoken --encoding=gpt2`` uses a
  tiktoken encoding from its local cache.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from craft.data import bpe
from craft.data.text_sources import STDLIB, TEXT_SUFFIXES, is_utf8, source_files, stdlib_files, utf8_files  # noqa: F401

META_FILE, TOKENIZER_FILE = "meta.json", "tokenizer.json"
CHUNK_SIZE = 1 << 20
LONGEST = 64  # chunks held at most while looking for a cut
BATCH_PIECES = 16  # pieces encoded together (on the tokenizer's threads)


# -- pieces --------------------------------------------------------------------


def is_cut(data: bytes, p: int) -> bool:
    """Whether the text may be cut before ``data[p]``: a newline between printable ASCII characters.

    Byte-level BPE and tiktoken never join the sides of such a newline, nor
    read a different split of whitespace when the text ends there (a run of
    newlines or spaces would: ``"\\n\\n\\ndef"`` splits as ``"\\n\\n", "\\n", "def"``).
    """
    return 1 < p < len(data) and data[p - 1] == 0x0A and 0x21 <= data[p - 2] <= 0x7E and 0x21 <= data[p] <= 0x7E


def last_cut(data: bytes) -> int:
    """The last position ``p`` with ``is_cut(data, p)``, or 0."""
    p = data.rfind(b"\n")
    while p >= 0 and not is_cut(data, p + 1):
        p = data.rfind(b"\n", 0, p)
    return p + 1 if p >= 0 else 0


def val_start(path: str, size: int, val_fraction: float, block: int = CHUNK_SIZE) -> int:
    """Where the file's val part begins: the first line start at or after ``size * (1 - val_fraction)``;
    in a file with no line start there (one long line, as text8), the first space, else the first whole
    character. The parts are tokenized apart, so any character boundary will do."""
    start = int(size * (1 - val_fraction))
    if start == 0:
        return 0
    with open(path, "rb") as f:
        f.seek(start - 1)
        offset = start - 1
        first = chunk = f.read(block)
        while chunk:
            newline = chunk.find(b"\n")
            if newline >= 0:
                return min(offset + newline + 1, size)
            offset += len(chunk)
            chunk = f.read(block)
    return start - 1 + next_boundary(first)


def next_boundary(data: bytes) -> int:
    """The first space in ``data[1:]``, else the first character start there, else ``len(data)``."""
    space = data.find(b" ", 1)
    if space >= 1:
        return space
    return next((i for i in range(1, len(data)) if data[i] & 0xC0 != 0x80), len(data))


def pieces(path: str, start: int, end: int, chunk_size: int = CHUNK_SIZE) -> Iterator[str]:
    """The text of bytes ``[start, end)`` of the file, in pieces of about ``chunk_size`` bytes, cut by ``is_cut``.

    A stretch of ``LONGEST`` pieces' worth without a cut is cut at its last space between printable
    characters (``last_space_cut``, exact too), else its last newline, else its last whole character,
    rather than held in memory.
    """
    with open(path, "rb") as f:
        f.seek(start)
        left, carry = end - start, b""
        while left > 0:
            block = f.read(min(chunk_size, left))
            if not block:  # the file shrank while read
                break
            left -= len(block)
            data = carry + block
            cut = last_cut(data) if left > 0 else len(data)
            if not cut and len(data) > LONGEST * chunk_size:
                cut = last_space_cut(data) or data.rfind(b"\n") + 1 or last_character(data)
            if cut:
                yield data[:cut].decode("utf-8")
            carry = data[cut:]
        if carry:
            yield carry.decode("utf-8")


def last_space_cut(data: bytes) -> int:
    """The last position ``p`` of a space between printable ASCII characters (``"x| y"``), or 0.

    No token of a byte-level BPE or tiktoken holds a character and the space after it, so cutting
    there keeps the whole text's tokens: the fallback for text without such a newline (one long
    line, ``\\r\\n`` line ends).
    """
    p = data.rfind(b" ")
    while p > 0 and not (0x21 <= data[p - 1] <= 0x7E and p + 1 < len(data) and 0x21 <= data[p + 1] <= 0x7E):
        p = data.rfind(b" ", 0, p)
    return max(p, 0)


def last_character(data: bytes) -> int:
    """Where the last UTF-8 character of ``data`` starts (cutting there splits no character)."""
    p = len(data) - 1
    while p > 0 and data[p] & 0xC0 == 0x80:  # continuation bytes are 10xxxxxx
        p -= 1
    return max(p, 0)


def parts(files: list[str], val_fraction: float) -> Iterator[tuple[str, str, int, int]]:
    """``(split, path, start, end)``: each file's train part, then its val part (when not empty)."""
    for path in files:
        size = os.path.getsize(path)
        if not size:
            continue
        with open(path, "rb") as f:
            bom = 3 if f.read(3) == b"\xef\xbb\xbf" else 0  # a byte-order mark is not text
        cut = max(val_start(path, size, val_fraction), bom)
        yield "train", path, bom, cut
        if cut < size:
            yield "val", path, cut, size


# -- writing -------------------------------------------------------------------


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits (nanoGPT's layout), else ``uint32``."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def write_parts(
    tokenizer, files: list[str], out: Path, val_fraction: float, chunk_size: int, bar: tqdm
) -> dict[str, int]:
    """Encode every part into ``out/{split}.bin.tmp``; returns each split's token count."""
    dtype, eot = token_dtype(tokenizer.vocab_size), tokenizer.eot
    handles = {split: open(out / f"{split}.bin.tmp", "wb") for split in ("train", "val")}
    counts = Counter({"train": 0, "val": 0})
    try:
        for split, path, start, end in parts(files, val_fraction):
            batch: list[str] = []
            for piece in pieces(path, start, end, chunk_size):
                batch.append(piece)
                if len(batch) == BATCH_PIECES:
                    counts[split] += flush(tokenizer, batch, handles[split], dtype, bar)
            counts[split] += flush(tokenizer, batch, handles[split], dtype, bar)
            handles[split].write(np.array([eot], dtype=dtype).tobytes())
            counts[split] += 1
    finally:
        for handle in handles.values():
            handle.close()
    return dict(counts)


def flush(tokenizer, batch: list[str], handle, dtype: np.dtype, bar: tqdm) -> int:
    """Encode and append ``batch``'s pieces (then empty it); returns the number of tokens written."""
    written = 0
    for ids in tokenizer.encode_batch(batch):
        handle.write(np.asarray(ids, dtype=dtype).tobytes())
        written += len(ids)
    bar.update(sum(len(piece.encode("utf-8")) for piece in batch))
    batch.clear()
    return written


def make_tokenizer(kind: str, files: list[str], val_fraction: float, vocab_size: int, encoding: str, chunk_size: int):
    """The tokenizer ``kind`` names: a BPE trained on the train parts, or a local tiktoken encoding."""
    if kind == "tiktoken":
        return bpe.TiktokenTokenizer(encoding)
    train = [(path, start, end) for split, path, start, end in parts(files, val_fraction) if split == "train"]
    total = sum(end - start for _, start, end in train)
    with tqdm(total=total, unit="B", unit_scale=True, desc="training the BPE") as bar:

        def texts() -> Iterator[str]:
            for path, start, end in train:
                for piece in pieces(path, start, end, chunk_size):
                    bar.update(len(piece.encode("utf-8")))
                    yield piece

        return bpe.train_bpe(texts(), vocab_size)


def prepare_tokens(
    sources: list[str],
    out: str,
    *,
    tokenizer: str = "bpe",
    vocab_size: int = 8192,
    encoding: str = "gpt2",
    val_fraction: float = 0.1,
    chunk_size: int = CHUNK_SIZE,
    overwrite: bool = False,
) -> str:
    """Write OUT/{train,val}.bin, OUT/tokenizer.json and OUT/meta.json from SRC...; returns a summary line.

    ``tokenizer``: ``"bpe"`` (trained here, ``vocab_size`` tokens) or
    ``"tiktoken"`` (``encoding``, from tiktoken's local cache). Options are
    checked before anything is read; the .bin files appear only when complete.
    """
    check_options(tokenizer, vocab_size, val_fraction, chunk_size)
    folder = Path(out)
    check_out(folder, overwrite)
    inside = folder.resolve()  # OUT's own files (a tokenizer.json, a meta.json) are not text to read
    files = [f for f in source_files(list(sources)) if inside not in Path(f).resolve().parents]
    good = utf8_files(files)
    if not good:
        raise ValueError(f"no UTF-8 text in {', '.join(map(repr, sources))}; convert the files to UTF-8")
    tok = make_tokenizer(tokenizer, good, val_fraction, vocab_size, encoding, chunk_size)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tqdm(total=sum(os.path.getsize(f) for f in good), unit="B", unit_scale=True, desc="tokenizing") as bar:
            counts = write_parts(tok, good, folder, val_fraction, chunk_size, bar)
    except BaseException:  # Ctrl-C, a full disk: no half-written .tmp files (as large as the corpus) left behind
        for split in ("train", "val"):
            (folder / f"{split}.bin.tmp").unlink(missing_ok=True)
        raise
    (folder / META_FILE).unlink(missing_ok=True)  # written last: a folder stopped mid-way reads as unprepared
    for split in ("train", "val"):
        os.replace(folder / f"{split}.bin.tmp", folder / f"{split}.bin")
    tok.save(folder / TOKENIZER_FILE)
    meta = {
        "dtype": token_dtype(tok.vocab_size).name, "vocab_size": tok.vocab_size, "tokenizer": tokenizer,
        "tokenizer_file": TOKENIZER_FILE, "eot": tok.eot, "train_tokens": counts["train"], "val_tokens": counts["val"],
        "files": len(good), "left_out_not_utf8": len(files) - len(good), "val_fraction": val_fraction,
        **({"encoding": encoding} if tokenizer == "tiktoken" else {}),
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    skipped = f" ({len(files) - len(good)} not UTF-8, left out)" if len(files) > len(good) else ""
    return (
        f"{folder}: {counts['train']:,} train and {counts['val']:,} val tokens ({meta['dtype']}, "
        f"vocab_size {tok.vocab_size:,}) from {len(good):,} files{skipped}"
    )


WRITTEN = ("train.bin", "val.bin", META_FILE, TOKENIZER_FILE, "meta.pkl")
"""Files that mark OUT as holding tokens already (``meta.pkl``: nanoGPT's; left in place, meta.json takes precedence)."""


def check_out(folder: Path, overwrite: bool) -> None:
    """OUT must be a folder (or not exist) and, without ``overwrite``, hold none of ``WRITTEN``:
    token files there may be someone's data (nanoGPT's folder has no meta.json)."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is a file; OUT must be a folder (new, or one to --overwrite)")
    held = [name for name in WRITTEN if (folder / name).exists()]
    if held and not overwrite:
        raise ValueError(
            f"{str(folder)!r} already holds prepared tokens ({', '.join(held)}); pick another OUT or add --overwrite"
        )


def check_options(tokenizer: str, vocab_size: int, val_fraction: float, chunk_size: int) -> None:
    """One line naming the option and the fix, for the first bad one."""
    if tokenizer not in ("bpe", "tiktoken"):
        raise ValueError(f"--tokenizer={tokenizer!r}: use bpe (trained here) or tiktoken (with --encoding=NAME)")
    if tokenizer == "bpe" and not 257 <= vocab_size <= 1 << 32:
        raise ValueError(f"--vocab_size={vocab_size}: a byte-level BPE needs at least 257 tokens (256 bytes + end of text)")
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val_fraction={val_fraction}: must be between 0 and 1 (e.g. 0.1)")
    if chunk_size < 1:
        raise ValueError(f"--chunk_size={chunk_size}: must be a positive number of bytes")
