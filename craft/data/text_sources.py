"""The text files a ``craft prepare tokens SRC...`` reads: files, folders' text files, or ``@stdlib``."""

from __future__ import annotations

import codecs
import glob
import os
import sys
import sysconfig
from pathlib import Path

from craft.data.files import find_files

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".text", ".json", ".jsonl", ".csv", ".html", ".tex", ".c", ".h")
"""Suffixes of the files taken from a SRC folder."""

STDLIB = "@stdlib"
"""The SRC name of the Python standard library's source files."""


def stdlib_files() -> list[str]:
    """The ``.py`` files of the standard library (not ``site-packages``), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    files, seen = [], set()
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name in skip or entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            files += find_files(entry.path, (".py",), seen=seen).files
        elif entry.is_file(follow_symlinks=False) and entry.name.endswith(".py"):
            files.append(entry.path)
    return sorted(files)


def source_files(sources: list[str]) -> list[str]:
    """Every file SRC names, in order (a folder's text files sorted; a glob pattern such as
    ``'texts/**/*.txt'`` that names no file itself, its matches sorted); ValueError for a missing one."""
    files: list[str] = []
    for source in sources:
        if source == STDLIB:
            files += stdlib_files()
        elif os.path.exists(source) or not glob.has_magic(source):
            files += named_files(source)
        else:
            matches = sorted(glob.glob(source, recursive=True))
            if not matches:
                raise ValueError(f"{source!r}: the pattern matches no file or folder")
            for match in matches:
                files += named_files(match, pattern=True)
    return list(dict.fromkeys(files))  # a file named twice (a folder and a file in it) is read once


def named_files(source: str, *, pattern: bool = False) -> list[str]:
    """The file ``source``, or a folder's text files (a folder a pattern matched may hold none)."""
    if os.path.isdir(source):
        found = find_files(source, TEXT_SUFFIXES).files
        if not found and not pattern:
            raise ValueError(f"{source!r}: no text files ({', '.join(TEXT_SUFFIXES)}) in this folder")
        return found
    if os.path.isfile(source):
        return [source]
    raise ValueError(f"{source!r}: no such file or folder; give text files, folders, glob patterns or {STDLIB}")


def is_utf8(path: str, block: int = 1 << 20) -> bool:
    """Whether the file is UTF-8 text (checked block by block)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            while data := f.read(block):
                decoder.decode(data)
            decoder.decode(b"", final=True)
    except (UnicodeDecodeError, OSError):
        return False
    return True


def utf8_files(files: list[str]) -> list[str]:
    """The files that are UTF-8 text; the others are named on stderr (a file in another encoding is noticed)."""
    good = [f for f in files if is_utf8(f)]
    readable = set(good)
    left_out = [f for f in files if f not in readable]
    if left_out:
        shown = ", ".join(map(repr, left_out[:5])) + (f", ... {len(left_out)} in all" if len(left_out) > 5 else "")
        print(f"left out, not UTF-8: {shown}", file=sys.stderr)
    return good
