"""A token folder's files (``craft.data.tokens``): what the folder states (``meta.json`` and
``tokenizer.json``, or nanoGPT's ``meta.pkl``), each split's file as a memory map, and the checks that
turn a wrong folder, dtype or file into one line naming the fix."""

from __future__ import annotations

import json
import pickle
import shlex
from pathlib import Path
from typing import Any

import numpy as np

DTYPES = ("uint16", "uint32")


def check_folder(path: str, split: str) -> None:
    """``path`` is a folder holding ``split``'s token file (``val.bin`` alone serves a test set); else a ValueError
    that says what it is (a file, nothing, a folder of other files) and how to write a token folder."""
    folder, files = Path(path), ("train.bin", "val.bin")
    write = "`craft prepare tokens SRC... {}` writes one from text files"
    if folder.is_file() and folder.name in files:
        raise ValueError(f"data.path = {path!r} is a token file; give the folder holding it: data.path = {str(folder.parent)!r}")
    if folder.is_file():
        raise ValueError(f"data.path = {path!r} is a file; data.path must be a folder of token files "
                         f"(train.bin and val.bin): {write.format('NEW_FOLDER')}")
    if not folder.is_dir():
        raise ValueError(f"data.path = {path!r}: not a folder; give the folder holding train.bin and val.bin "
                         f"({write.format(shlex.quote(path))})")
    lacking = [name for name in files if not (folder / name).is_file()]
    if f"{split}.bin" in lacking:
        raise ValueError(f"data.path = {path!r} has no {' and no '.join(lacking)}: not a token folder; give the folder "
                         f"holding train.bin and val.bin ({write.format('NEW_FOLDER')})")


def read_nanogpt_meta(path: Path) -> dict[str, Any]:
    """``vocab_size`` and ``itos`` from nanoGPT's ``meta.pkl``, unpickled with no class allowed (plain data only)."""

    class PlainData(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            raise pickle.UnpicklingError(f"{path} holds {module}.{name}; only plain dicts, strings and numbers are read")

    try:
        with open(path, "rb") as f:
            meta = PlainData(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: not nanoGPT's meta.pkl ({e}); delete it and set data.vocab_size") from None
    return meta if isinstance(meta, dict) else {}


def folder_meta(folder: Path) -> tuple[dict[str, Any], Any]:
    """``(meta, tokenizer)`` that the folder itself states: from meta.json + tokenizer.json, or meta.pkl."""
    from craft.data.tokenizers import CharTokenizer, load_tokenizer

    if (folder / "meta.json").is_file():
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{folder / 'meta.json'}: unreadable ({e}); prepare the folder again") from None
        file = folder / meta.get("tokenizer_file", "tokenizer.json")
        return meta, load_tokenizer(file) if file.is_file() else None
    if (folder / "meta.pkl").is_file():
        meta = read_nanogpt_meta(folder / "meta.pkl")
        itos = meta.get("itos")
        try:
            chars = [itos[i] for i in range(len(itos))] if isinstance(itos, dict) else None
            return {"vocab_size": meta.get("vocab_size")}, CharTokenizer(chars) if chars else None
        except (KeyError, TypeError, ValueError):  # not sorted characters: ids without a tokenizer
            return {"vocab_size": meta.get("vocab_size")}, None
    return {}, None


def open_tokens(file: Path, dtype: str) -> np.memmap:
    """The token file as a read-only memory map; ValueError naming the fix when it cannot be one."""
    if not file.is_file():
        raise ValueError(f"{file}: no such file; data.path must be a folder with train.bin and val.bin")
    size, item = file.stat().st_size, np.dtype(dtype).itemsize
    if size == 0:
        raise ValueError(f"{file}: empty, no tokens; put text in it (prepare the folder again with more text, "
                         "or a larger --val_fraction for val.bin)")
    if size % item:
        raise ValueError(f"{file}: {size} bytes is not a whole number of {dtype} tokens; check data.dtype")
    return np.memmap(file, dtype=dtype, mode="r")


def check_count(file: Path, tokens: np.memmap, split: str) -> None:
    """The file holds the number of tokens meta.json states (``train_tokens``, ``val_tokens``): ids of another
    width (uint32 read as uint16 reads each id and a 0) or another prepare's file are refused, not trained on."""
    meta_file = file.parent / "meta.json"
    stated = json.loads(meta_file.read_text(encoding="utf-8")).get(f"{split}_tokens") if meta_file.is_file() else None
    if not isinstance(stated, int) or stated == len(tokens):
        return
    size = file.stat().st_size
    widths = [name for name in DTYPES if np.dtype(name).itemsize * stated == size]
    fix = (f"the file holds {widths[0]} ids: its meta.json's dtype is wrong" if widths
           else f"{file.name} and meta.json are not from the same craft prepare tokens")
    raise ValueError(f"{file}: {len(tokens):,} {tokens.dtype} tokens ({size:,} bytes) but meta.json says "
                     f"{split}_tokens = {stated:,}; {fix}; prepare the folder again")


def check_width(file: Path, tokens: np.memmap, sample: int = 4096) -> None:
    """uint32 ids (below 65,536) read as uint16 come as each id, then a 0: a file whose first ``sample``
    tokens have 0 at every odd place and not at every even one is refused, naming data.dtype."""
    head = np.asarray(tokens[:sample])
    if tokens.dtype == np.uint16 and len(head) >= 64 and not head[1::2].any() and head[0::2].any():
        raise ValueError(f"{file}: every second id is 0, as uint32 ids read as uint16 are; "
                         'set data.dtype = "uint32" (or fix meta.json\'s dtype)')
