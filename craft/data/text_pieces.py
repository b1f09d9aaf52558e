"""A text file read in pieces that tokenize exactly as the whole file (``craft prepare tokens``).

- ``pieces`` reads bytes ``[start, end)`` of a file in pieces of about
  ``chunk_size`` bytes, cut only at a newline between visible characters, or
  else a space between printable ASCII ones (where a byte-level BPE or
  tiktoken never joins the two sides), so the pieces' tokens are those of the
  whole text encoded at once, and memory holds a few pieces, never the corpus.
- ``parts`` splits each file into its train part and its val part (the last
  ``val_fraction`` of its bytes, from a line start: ``val_start``).
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterator

CHUNK_SIZE = 1 << 20
LONGEST = 64  # chunks held at most while looking for a cut


def is_cut(data: bytes, p: int) -> bool:
    """Whether the text may be cut before ``data[p]``: a newline between two visible characters.

    Visible: printable ASCII, or a letter, number, mark, punctuation or symbol
    (``visible``; never whitespace nor a control). Byte-level BPE and tiktoken
    never join the sides of such a newline, nor read a different split of
    whitespace when the text ends there (a run of newlines or spaces would:
    ``"\\n\\n\\ndef"`` splits as ``"\\n\\n", "\\n", "def"``).
    """
    if not (1 < p < len(data) and data[p - 1] == 0x0A):
        return False
    before = p - 2
    while before > 0 and p - 2 - before < 3 and data[before] & 0xC0 == 0x80:  # back to the character's first byte
        before -= 1
    return visible(data[before : p - 1]) and visible(data[p : p + utf8_length(data[p])])


def utf8_length(lead: int) -> int:
    """The length of the UTF-8 character whose first byte is ``lead`` (1 for a stray byte)."""
    return 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def visible(char: bytes) -> bool:
    """Whether ``char`` (one UTF-8 character's bytes) is printable ASCII or a letter, number, mark,
    punctuation or symbol: no whitespace or control that a tokenizer's pattern joins to a newline."""
    if len(char) == 1:
        return 0x21 <= char[0] <= 0x7E
    try:
        (one,) = char.decode("utf-8")
    except (UnicodeDecodeError, ValueError):  # cut off at the data's end, or not one character
        return False
    return unicodedata.category(one)[0] in "LNMPS"


NEWLINE = re.compile(rb"\n(?=[\x21-\x7e\xc2-\xf4])")
"""A newline before a visible character's first byte: where ``is_cut`` may hold (found in C)."""


def last_cut(data: bytes, since: int = 0, window: int = 1 << 16) -> int:
    """The last position ``p > since`` with ``is_cut(data, p)``, or 0 (searched ``window`` bytes at a time
    from the end: text with few cuts, as ``\\r\\n`` line ends, costs no Python loop over its newlines)."""
    end = len(data)
    while end > since:
        start = max(since, end - window)
        found = [m.end() for m in NEWLINE.finditer(data, start, min(end + 1, len(data))) if m.start() < end]
        for p in reversed(found):
            if is_cut(data, p):
                return p
        end = start
    return 0


def val_start(path: str, size: int, val_fraction: float, block: int = CHUNK_SIZE) -> int:
    """Where the file's val part begins: the first line start at or after ``size * (1 - val_fraction)``;
    when no line starts there before the end (one long line, as text8; a file of one short line), the
    first space there, else the last line start or space before it (a short file's last word is not
    cut in two: ``"a tiny fi"`` and ``"le"``), else the first whole character there. The parts are
    tokenized apart, so any character boundary will do."""
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
        base = max(0, start - block)
        f.seek(base)
        before = f.read(start - base)
    back = last_boundary(before, base)
    if first.find(b" ", 1) < 1 and back > 0:  # no space ahead: the last word stays whole in train
        return back
    return start - 1 + next_boundary(first)


def last_boundary(data: bytes, offset: int) -> int:
    """The file position of the last line start or space in ``data`` (the bytes read from ``offset``),
    or 0 when there is none."""
    found = [p for p in (data.rfind(b" "), data.rfind(b"\n") + 1) if p > 0 or data[:1] == b" "]
    return offset + max(found) if found else 0


def next_boundary(data: bytes) -> int:
    """The first space in ``data[1:]``, else the first character start there, else ``len(data)``."""
    space = data.find(b" ", 1)
    if space >= 1:
        return space
    return next((i for i in range(1, len(data)) if data[i] & 0xC0 != 0x80), len(data))


def pieces(path: str, start: int, end: int, chunk_size: int = CHUNK_SIZE) -> Iterator[str]:
    """The text of bytes ``[start, end)`` of the file, in pieces of about ``chunk_size`` bytes.

    Each piece ends at the last ``is_cut`` newline of what was read, else at its last space between
    printable characters (``last_space_cut``: exact too, for ``\\r\\n`` line ends and one long line).
    Only the bytes read since the last cut are searched, so a text without either costs no rescans;
    after ``LONGEST`` chunks of it, it is cut at its last newline, else its last whole character,
    rather than held in memory (the tokens there may differ from the whole file's).
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
            since = max(len(carry) - 8, 0)  # the carry held no cut; a character (4 bytes) each side of its end may
            cut = (last_cut(data, since) or last_space_cut(data, since)) if left > 0 else len(data)
            if not cut and len(data) > LONGEST * chunk_size:
                cut = data.rfind(b"\n") + 1 or last_character(data)
            if cut:
                yield data[:cut].decode("utf-8")
            carry = data[cut:]
        if carry:
            yield carry.decode("utf-8")


def last_space_cut(data: bytes, since: int = 0) -> int:
    """The last position ``p > since`` of a space between printable ASCII characters (``"x| y"``), or 0.

    No token of a byte-level BPE or tiktoken holds a character and the space after it, so cutting
    there keeps the whole text's tokens: the cut for text without an ``is_cut`` newline (one long
    line, ``\\r\\n`` line ends).
    """
    p = data.rfind(b" ", since)
    while p > since and not (0x21 <= data[p - 1] <= 0x7E and p + 1 < len(data) and 0x21 <= data[p + 1] <= 0x7E):
        p = data.rfind(b" ", since, p)
    return p if p > since else 0


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
