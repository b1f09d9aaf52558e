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
- Each file is read in pieces (``craft.data.text_pieces``) of about ``chunk_size`` bytes, cut only at a
  newline between visible characters, else (``\\r\\n`` line ends, one long line) before a space between
  printable ones: places where a byte-level BPE or tiktoken never joins the two sides, so its tokens are
  those of the whole file encoded at once, and memory holds a few pieces, never the corpus. (A stretch of
  64 chunks with neither is cut at a newline or a character anyway: its tokens there may differ.)
- The val split is deterministic: the last ``val_fraction`` of each file's
  bytes, from the first line start at or after that point (when no line
  starts there, the first space there, else the last one before it, else a character). Each file's train part and its val part end with
  the end-of-text token.
- ``--tokenizer=bpe`` trains a byte-level BPE of ``vocab_size`` tokens on the
  train parts (streamed); ``--tokenizer=tiktoken --encoding=gpt2`` uses a
  tiktoken encoding from its local cache; ``--tokenizer=PATH`` (a
  ``tokenizer.json``, or a run folder or token folder holding one) encodes with
  that saved tokenizer and trains nothing, so a test set's ids mean what a
  run's do (``craft evaluate RUN --data.path=OUT``); meta.json names the file
  (``tokenizer_from``).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from craft.data import bpe
from craft.data.text_pieces import CHUNK_SIZE, parts, pieces
from craft.data.text_sources import (  # noqa: F401
    STDLIB, TEXT_SUFFIXES, compressed, compression, is_utf8, source_files, stdlib_files, utf8_files,
)
from craft.words import plural

META_FILE, TOKENIZER_FILE = "meta.json", "tokenizer.json"
BATCH_PIECES = 16  # pieces encoded together (on the tokenizer's threads)


# -- writing -------------------------------------------------------------------


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits (nanoGPT's layout), else ``uint32``."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


Part = tuple[str, str, int, int]
"""``(split, path, start, end)``: a file's train or val bytes (``craft.data.text_pieces.parts``)."""


def write_parts(tokenizer, split_parts: list[Part], out: Path, chunk_size: int, bar: tqdm) -> dict[str, int]:
    """Encode every part into ``out/{split}.bin.tmp``; returns each split's token count."""
    dtype, eot = token_dtype(tokenizer.vocab_size), tokenizer.eot
    handles = {split: open(out / f"{split}.bin.tmp", "wb") for split in ("train", "val")}
    counts = Counter({"train": 0, "val": 0})
    try:
        for split, path, start, end in split_parts:
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


def make_tokenizer(kind: str, split_parts: list[Part], vocab_size: int, encoding: str, chunk_size: int):
    """The tokenizer ``kind`` names: a BPE trained on the train parts, or a local tiktoken encoding."""
    if kind == "tiktoken":
        return bpe.TiktokenTokenizer(encoding)
    train = [(path, start, end) for split, path, start, end in split_parts if split == "train"]
    total = sum(end - start for _, start, end in train)
    with tqdm(total=total, unit="B", unit_scale=True, desc="training the BPE") as bar:

        def texts() -> Iterator[str]:
            for path, start, end in train:
                for piece in pieces(path, start, end, chunk_size):
                    bar.update(len(piece.encode("utf-8")))
                    yield piece

        return bpe.train_bpe(texts(), vocab_size)


KINDS = ("bpe", "tiktoken")
"""The tokenizers ``--tokenizer`` names; anything else is the path of a saved one."""


def saved_tokenizer(path: str) -> tuple[Any, Path]:
    """``(tokenizer, file)``: the BPE or tiktoken tokenizer saved at ``path`` (a tokenizer.json, or a run or
    token folder holding one), with an end-of-text token; a one-line ValueError naming the fix otherwise."""
    from craft.data.tokenizers import load_tokenizer

    given = Path(path)
    file = given / TOKENIZER_FILE if given.is_dir() else given
    if not file.is_file():
        raise ValueError(f"--tokenizer={path}: the folder has no {TOKENIZER_FILE}; give a run folder, "
                         f"a folder craft prepare tokens wrote, or the {TOKENIZER_FILE} itself")
    tok = load_tokenizer(file)
    if not bpe.is_subword(tok):
        raise ValueError(
            f"--tokenizer={path}: {file} is a {type(tok).__name__}, not a BPE or tiktoken tokenizer; a run on "
            '[data] kind = "text" reads other text files as they are (craft evaluate RUN --data.path=FILE)'
        )
    try:
        tok.eot  # noqa: B018 - a BPE without <|endoftext|> cannot end files: said before any text is read
    except ValueError as e:
        raise ValueError(f"--tokenizer={path}: {e}") from None
    return tok, file


def tokenizer_meta(tok, saved: tuple[Any, Path] | None) -> dict[str, str]:
    """meta.json's word on the tokenizer: its kind, tiktoken's encoding, and the file it was read from."""
    kind = "tiktoken" if isinstance(tok, bpe.TiktokenTokenizer) else "bpe"
    return {
        "tokenizer": kind, **({"encoding": tok.encoding} if kind == "tiktoken" else {}),
        **({"tokenizer_from": str(saved[1].resolve())} if saved else {}),
    }


def prepare_tokens(
    sources: list[str],
    out: str,
    *,
    tokenizer: str = "bpe",
    vocab_size: int | None = None,
    encoding: str | None = None,
    val_fraction: float = 0.1,
    chunk_size: int = CHUNK_SIZE,
    overwrite: bool = False,
) -> str:
    """Write OUT/{train,val}.bin, OUT/tokenizer.json and OUT/meta.json from SRC...; returns a summary line.

    ``tokenizer``: ``"bpe"`` (trained here, ``vocab_size`` tokens, default
    8192), ``"tiktoken"`` (``encoding``, default gpt2, from tiktoken's local
    cache), or the path of a saved one (``saved_tokenizer``), used as it is.
    Options are checked before anything is read; the .bin files
    appear only when complete, and only when both splits hold text.
    """
    check_options(tokenizer, vocab_size, encoding, val_fraction, chunk_size)
    vocab_size, encoding = vocab_size or 8192, encoding or "gpt2"
    folder = Path(out)
    check_out(folder, overwrite)
    saved = None if tokenizer in KINDS else saved_tokenizer(tokenizer)  # read before any text is
    good, left_out = readable_sources(sources, folder)
    split_parts = list(parts(good, val_fraction))  # where each file's val part begins: found once, read thrice
    check_splits(split_parts, len(good), val_fraction)
    tok = saved[0] if saved else make_tokenizer(tokenizer, split_parts, vocab_size, encoding, chunk_size)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tqdm(total=sum(os.path.getsize(f) for f in good), unit="B", unit_scale=True, desc="tokenizing") as bar:
            counts = write_parts(tok, split_parts, folder, chunk_size, bar)
    except BaseException:  # Ctrl-C, a full disk: no half-written .tmp files (as large as the corpus) left behind
        for split in ("train", "val"):
            (folder / f"{split}.bin.tmp").unlink(missing_ok=True)
        raise
    (folder / META_FILE).unlink(missing_ok=True)  # written last: a folder stopped mid-way reads as unprepared
    for split in ("train", "val"):
        os.replace(folder / f"{split}.bin.tmp", folder / f"{split}.bin")
    tok.save(folder / TOKENIZER_FILE)
    meta = {
        "dtype": token_dtype(tok.vocab_size).name, "vocab_size": tok.vocab_size, **tokenizer_meta(tok, saved),
        "tokenizer_file": TOKENIZER_FILE, "eot": tok.eot, "train_tokens": counts["train"], "val_tokens": counts["val"],
        "files": len(good), "left_out_not_utf8": left_out, "val_fraction": val_fraction,
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    skipped = f" ({left_out} not UTF-8, left out)" if left_out else ""
    skipped += f", encoded with {saved[1]}" if saved else ""
    fewer = (f": the text has too few distinct pairs to merge for the {vocab_size:,} asked"
             if tokenizer == "bpe" and tok.vocab_size < vocab_size else "")
    return (
        f"{folder}: {counts['train']:,} train and {counts['val']:,} val tokens ({meta['dtype']}, "
        f"vocab_size {tok.vocab_size:,}{fewer}) from {plural(len(good), 'file')}{skipped}"
    )


def readable_sources(sources: list[str], folder: Path) -> tuple[list[str], int]:
    """The UTF-8 files SRC... names, leaving out those inside OUT; and how many were left out as not UTF-8."""
    files = source_files(list(sources))
    inside = folder.resolve()  # OUT's own files (a tokenizer.json, a meta.json) are not text to read
    outside = [f for f in files if inside not in Path(f).resolve().parents]
    if files and not outside:
        raise ValueError(f"every source file is inside OUT {str(folder)!r}; write the tokens to a folder of their own")
    good = utf8_files(outside)
    if not good:
        packed = {f: kind for f in outside if (kind := compression(f))}
        fix = f"they are {compressed(packed)}" if len(packed) == len(outside) else "convert the files to UTF-8"
        raise ValueError(f"no UTF-8 text in {', '.join(map(repr, sources))}; {fix}")
    return good, len(outside) - len(good)


def check_splits(split_parts: list[Part], files: int, val_fraction: float) -> None:
    """Both splits must hold text, or the folder could not train: said before anything is written."""
    sizes = Counter()
    for split, _, start, end in split_parts:
        sizes[split] += end - start
    if not sizes["train"]:
        raise ValueError(f"no text to tokenize: the {plural(files, 'file')} given {'is' if files == 1 else 'are'} empty")
    if not sizes["val"]:
        raise ValueError(
            f"no val text: the last --val_fraction={val_fraction} of each file, from a line start, is empty "
            f"({sizes['train']:,} bytes in all); add text, or raise --val_fraction"
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


def check_options(tokenizer: str, vocab_size: int | None, encoding: str | None, val_fraction: float, chunk_size: int) -> None:
    """One line naming the option and the fix, for the first bad one (an option the tokenizer would ignore too)."""
    if tokenizer not in KINDS and not Path(tokenizer).exists():
        raise ValueError(
            f"--tokenizer={tokenizer!r}: use bpe (trained here), tiktoken (with --encoding=NAME), or the path of a "
            f"saved {TOKENIZER_FILE} (or of the run or token folder holding it); there is no such file or folder"
        )
    for option, value in (("vocab_size", vocab_size), ("encoding", encoding)):
        if tokenizer not in KINDS and value is not None:
            raise ValueError(f"--{option}={value}: not with --tokenizer={tokenizer}, a saved tokenizer used as it is; "
                             f"leave --{option} out (or train a new BPE with --tokenizer=bpe)")
    if tokenizer == "bpe" and encoding is not None:
        raise ValueError(f"--encoding={encoding}: only for --tokenizer=tiktoken; a BPE is trained here (--vocab_size=N)")
    if tokenizer == "tiktoken" and vocab_size is not None:
        raise ValueError(f"--vocab_size={vocab_size}: only for --tokenizer=bpe; tiktoken's {encoding or 'gpt2'} has its own")
    if tokenizer == "bpe" and vocab_size is not None and not 257 <= vocab_size <= 1 << 32:
        raise ValueError(f"--vocab_size={vocab_size}: a byte-level BPE needs at least 257 tokens (256 bytes + end of text)")
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val_fraction={val_fraction}: must be between 0 and 1 (e.g. 0.1)")
    if chunk_size < 1:
        raise ValueError(f"--chunk_size={chunk_size}: must be a positive number of bytes")
