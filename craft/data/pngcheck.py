"""A structural check of PNG files, run before torchvision decodes them.

torchvision's ``decode_png`` (0.29) crashes the process (SIGSEGV) when libpng
reports an error while reading rows: a damaged IDAT chunk, compressed data that
does not inflate, a bad row filter byte. Those are found here first, in Python,
so a damaged file is a ``ValueError`` naming the problem rather than a dead run.
Errors libpng reports while reading the header are handled by torchvision.
"""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type
# Adam7 passes: (x start, y start, x step, y step)
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def is_png(data: bytes) -> bool:
    return data[:8] == SIGNATURE


def png_problem(data: bytes) -> str | None:
    """What would make libpng fail while reading the rows of PNG ``data``, or None.

    Checks the CRC of each critical chunk up to the end of the image data, that
    the IDAT stream inflates to the rows the header asks for, and each row's
    filter byte. Header problems are left to the decoder (it reports them safely).
    """
    pos, header, idat = 8, None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        critical = kind[:1].isupper()
        if kind == b"IDAT" or (idat and critical) or kind == b"IEND":
            if len(body) < length or len(crc) < 4:
                return f"{kind.decode('latin-1')} chunk cut short: the file is truncated"
            if critical and struct.unpack(">I", crc)[0] != zlib.crc32(kind + body):
                return f"{kind.decode('latin-1')} chunk is damaged (CRC mismatch)"
        if kind == b"IHDR" and len(body) == 13:
            header = struct.unpack(">IIBBBBB", body)
        if kind == b"IDAT":
            idat.append(body)
        elif idat or kind == b"IEND":
            break  # the image data is over
        pos += 12 + length
    if header is None or not idat:
        return None if header is None else "no image data (IDAT)"
    width, height, depth, colour, _, _, interlace = header
    if colour not in _CHANNELS or depth not in (1, 2, 4, 8, 16):
        return None  # the decoder rejects the header itself
    bits = _CHANNELS[colour] * depth
    passes = [(width, height)] if interlace == 0 else [
        (-(-(width - x0) // dx), -(-(height - y0) // dy)) for x0, y0, dx, dy in _ADAM7
    ]
    rows = [(1 + -(-w * bits // 8), h) for w, h in passes if w > 0 and h > 0]  # (row bytes with filter, count)
    return rows_problem(b"".join(idat), rows)


CHUNK = 2**20  # inflate this many bytes at a time: the check never holds the whole image


def rows_problem(compressed: bytes, rows: list[tuple[int, int]]) -> str | None:
    """Why the zlib stream ``compressed`` is not ``rows`` (``(bytes per row with its filter byte, count)``
    per pass) of valid filter bytes, or None. Inflates ``CHUNK`` bytes at a time."""
    spans, start = [], 0  # (first byte, end, row size) of each pass in the inflated stream
    for size, count in rows:
        spans.append((start, start + size * count, size))
        start += size * count
    expected, done, inflate = start, 0, zlib.decompressobj()
    while done < expected:
        try:
            chunk = inflate.decompress(compressed, min(CHUNK, expected - done))
        except zlib.error as e:
            return f"image data does not inflate ({e})"
        compressed = inflate.unconsumed_tail
        if not chunk:
            break
        for first, end, size in spans:
            low, high = max(first, done), min(end, done + len(chunk))
            row = first + -(-(low - first) // size) * size  # the first row start at or after ``low``
            if row < high and any(f > 4 for f in chunk[row - done : high - done : size]):
                return "bad row filter byte: the image data is damaged"
        done += len(chunk)
    if done < expected:
        return f"not enough image data ({done} of {expected} bytes): the file is truncated or damaged"
    return None
