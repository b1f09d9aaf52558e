"""A text file read in pieces that tokenize exactly as the whole file (``craft prepare tokens``).

- ``pieces`` reads bytes ``[start, end)`` of a file in pieces of about
  ``chunk_size`` bytes, cut only at a newline with printable ASCII on both
  sides (where a byte-level BPE or tiktoken never joins the two sides), so the
  pieces' tokens are those of the whole text encoded at once, and memory holds
  a few pieces, never the corpus.
- ``parts`` splits each file into its train part and its val part (the last
  ``val_fraction`` of its bytes, from a line start: ``val_start``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

CHUNK_SIZE = 1 << 20
LONGEST = 64  # chunks held at most while looking for a cut


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
    when no line starts there before the end (one long line, as text8; a file of one short line), the
    first space, else the first whole character. The parts are tokenized apart, so any character
    boundary will do."""
    start = int(size * (1 - val_fraction))
    if start == 0:
        return 0
    with open(path, "rb") as f:
        f.seek(start - 1)
        offset = start - 1
        first = chunk = f.read(block)
        while chunk:
            newline = chunk.find(b"\n")
            if newline >= 0 and offset + newline + 1 < size:
                return offset + newline + 1
            if newline >= 0:  # only the file's last newline: no line starts in the val part
                break
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
