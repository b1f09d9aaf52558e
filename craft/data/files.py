"""Files of a dataset folder: a safe walk, image kinds by content, header sizes.

``find_files`` walks a folder without trusting it: it follows no link out of
the folder, visits each real folder once (a link loop ends), lists each real
file once and lists regular files only (a FIFO named ``x.png`` is left out,
never opened). ``read_file`` reads one file without blocking on anything that
is not a regular file. ``sniff`` names an image's kind from its first bytes and
``pixel_count`` reads its size from the header alone, so a file whose header
claims billions of pixels is refused before anything is decoded or inflated.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from PIL import Image

KINDS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WebP", ".bmp": "BMP",
    ".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF", ".jfif": "JPEG", ".jpe": "JPEG",
}  # fmt: skip
"""Image file suffix (lower case) -> the kind of image it holds (``.jfif``: JPEGs as browsers and Windows save them)."""

IMAGE_SUFFIXES = tuple(KINDS)

MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
"""Default ``data.max_pixels``: Pillow's decompression-bomb limit (89,478,485, about 9459 x 9459)."""


class ImageError(ValueError):
    """One image file cannot be read or decoded; the message names it and the fix (replace, convert or delete it)."""


class Found(NamedTuple):
    """What ``find_files`` found: the files kept (sorted) and what it left out, by reason."""

    files: list[str]
    left_out: Counter[str]


def shown(name: str | Path) -> str:
    """``name`` for a message: as is when plainly printable, else quoted (``repr``) so a newline or space shows."""
    name = str(name)
    return name if name.isprintable() and not any(c.isspace() for c in name) else repr(name)


def hidden(name: str) -> bool:
    """Whether a file or folder named ``name`` is hidden from a walk: a dot name (``.DS_Store``, ``._x.jpg``)
    or ``__MACOSX``, the folder of resource forks a zip made on a Mac holds (never images)."""
    return name.startswith(".") or name == "__MACOSX"


def inside(path: str, folder: str) -> bool:
    """Whether the real path ``path`` is ``folder`` or below it (both real, absolute)."""
    return os.path.commonpath([path, folder]) == folder


def followed(target: str, base: str, root: str | None) -> bool:
    """Whether a walk of ``base`` follows a link to the real path ``target``: inside ``base``, or outside the
    dataset's ``root`` (when given) and not above it."""
    return inside(target, base) or (root is not None and not inside(target, root) and not inside(root, target))


def find_files(
    folder: str | Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES, *, seen: set[tuple[int, int]] | None = None,
    root: str | Path | None = None,
) -> Found:
    """Regular files under ``folder`` whose suffix is one of ``suffixes``, sorted.

    Hidden files and folders (``hidden``) are skipped (not counted). A link is followed
    when its target lies inside ``folder`` (the real folder, whatever links lead
    to it), or, given the dataset's ``root`` (which holds ``folder``), when it lies
    outside ``root`` and not above it: data kept elsewhere, as a subset made of
    links keeps it (a link into another class folder, or up to a folder holding
    ``root``, would move images between classes). Each real folder is visited once and each real file listed once,
    under the first path (in sorted walk order) that reaches it. Everything
    else is counted in ``left_out``: by suffix (``".txt files"``), and "links out of
    the folder", "broken links", "not regular files", "repeated folders",
    "repeated files". ``seen`` holds the ``(st_dev, st_ino)`` of real folders
    already visited (by earlier calls that share it): they are not visited again.
    """
    base, outer = os.path.realpath(folder), None if root is None else os.path.realpath(root)
    files, left_out = [], Counter()
    seen_dirs, seen_files = set() if seen is None else seen, set()
    stack = [str(folder)]
    while stack:
        parent = stack.pop()
        info = os.stat(parent)
        if (info.st_dev, info.st_ino) in seen_dirs:
            left_out["repeated folders"] += 1
            continue
        seen_dirs.add((info.st_dev, info.st_ino))
        with os.scandir(parent) as scan:
            entries = sorted((e for e in scan if not hidden(e.name)), key=lambda e: e.name)
        below = []
        for entry in entries:
            if entry.is_symlink() and not followed(os.path.realpath(entry.path), base, outer):
                left_out["links out of the folder"] += 1
                continue
            try:
                info = os.stat(entry.path)  # follows a link (inside the folder)
            except OSError:  # a dangling link or a link loop
                left_out["broken links"] += 1
                continue
            if stat.S_ISDIR(info.st_mode):
                below.append(entry.path)
            elif not stat.S_ISREG(info.st_mode):
                left_out["not regular files"] += 1
            elif os.path.splitext(entry.name)[1].lower() not in suffixes:
                suffix = os.path.splitext(entry.name)[1].lower()
                left_out[f"{suffix} files" if suffix else "files without a suffix"] += 1
            elif (info.st_dev, info.st_ino) in seen_files:
                left_out["repeated files"] += 1
            else:
                seen_files.add((info.st_dev, info.st_ino))
                files.append(entry.path)
        stack += reversed(below)  # depth first, in name order
    return Found(sorted(files), left_out)


def read_file(path: str) -> bytes:
    """The bytes of the regular file ``path``; ValueError naming it when it is anything else.

    Opened without blocking, so a FIFO or a device never stalls the reader.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageError(f"cannot read image {shown(path)}: not a regular file; replace or delete it")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def sniff(data: bytes) -> str | None:
    """The kind of image ``data`` holds, by its first bytes (a value of ``KINDS``), or None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): not DHT (C4), JPG (C8), DAC (CC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_frame(data: bytes) -> int | None:
    """Where JPEG ``data``'s frame header (its start-of-frame marker) is, or None."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers carry no length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF:
            return pos
        if marker == 0xDA:  # start of scan: no frame header before it
            return None
        pos += 2 + length
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = _jpeg_frame(data)
    if pos is None or pos + 9 > len(data):
        return None
    height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
    return width, height


def stored_gray(data: bytes, kind: str | None) -> bool:
    """Whether image ``data`` stores one gray plane (a one-component JPEG, a gray PNG with or without alpha),
    read from its header: its gray is its own, where a colour image's must be computed from its RGB."""
    if kind == "JPEG":
        pos = _jpeg_frame(data)
        return pos is not None and pos + 9 < len(data) and data[pos + 9] == 1
    return kind == "PNG" and len(data) > 25 and data[25] in (0, 4)


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:  # extended: the canvas, 24-bit sizes less one
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and len(data) >= 25:  # lossless: 14-bit sizes less one
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30:  # lossy: 14-bit sizes after the frame tag and start code
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def dimensions(data: bytes, kind: str | None) -> tuple[int, int] | None:
    """``(width, height)`` from the header of image ``data`` of ``kind``, without decoding; None if unknown."""
    if kind == "PNG" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if kind == "JPEG":
        return _jpeg_size(data)
    if kind == "GIF" and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if kind == "WebP":
        return _webp_size(data)
    try:  # BMP, TIFF: Pillow's open reads the header only (and decodes them later)
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # damaged, or past twice Pillow's own limit: decoding says why (nothing is decoded)
        return None


def pixel_count(data: bytes, kind: str | None) -> int | None:
    """``width * height`` claimed by the header of ``data``, or None when it cannot be read."""
    size = dimensions(data, kind)
    return None if size is None else size[0] * size[1]


def files_fingerprint(paths: list[str], folder: str | Path) -> str:
    """A 16-hex-digit digest of each file's path (relative to ``folder``) and size, in order.

    Cheap (one ``stat`` per file, nothing read), and the same wherever the
    folder is mounted; a file that is gone counts with size -1.
    """
    digest = hashlib.blake2b(digest_size=8)
    for path in paths:
        try:
            size = os.stat(path).st_size
        except OSError:
            size = -1
        digest.update(f"{os.path.relpath(path, folder)}\0{size}\n".encode())
    return digest.hexdigest()
