"""What each token id stands for in text: a count of characters or of bytes, per id.

``text_units(tokenizer, vocab_size)`` gives ``("character", sizes)`` for a
character tokenizer (every id one character), ``("byte", sizes)`` for a
byte-level BPE or a tiktoken encoding (each id a fixed piece of bytes, so the
bytes of a run of tokens are the sum of theirs), and None where an id has no
fixed size in text (words, other Hugging Face models, no tokenizer). Special
tokens (end of text) are 0: they are no text. A language model's evaluation
sums ``sizes[target]`` over the scored targets, so its bits are reported per
character (``bpc``) or per byte (``bpb``) of the very text evaluated, never a
guess.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import Tensor

from craft.data.bpe import BPETokenizer, TiktokenTokenizer
from craft.data.tokenizers import CharTokenizer


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, as Hugging Face's ``ByteLevel`` uses it: character -> the byte it stands for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def bpe_bytes(tokenizer: BPETokenizer) -> dict[int, int] | None:
    """``{id: bytes}`` of a byte-level Hugging Face BPE (special tokens 0); None for any other model,
    whose tokens' text depends on their neighbours (WordPiece's ``##``, Metaspace's leading space)."""
    data = json.loads(tokenizer.json)
    decoder, model = data.get("decoder") or {}, data.get("model") or {}
    if decoder.get("type") != "ByteLevel" or not isinstance(model.get("vocab"), dict):
        return None
    alphabet = byte_level_alphabet()
    special = {t["content"]: t["id"] for t in data.get("added_tokens") or [] if t.get("special")}
    sizes = {i: 0 for i in special.values()}
    for token, i in model["vocab"].items():
        if token in special:
            continue
        if not all(c in alphabet for c in token):
            return None
        sizes[i] = len(token)  # one character of the alphabet is one byte
    for added in data.get("added_tokens") or []:  # an added ordinary token is its text, in UTF-8
        sizes.setdefault(added["id"], len(added["content"].encode("utf-8")))
    return sizes


def text_units(tokenizer: Any, vocab_size: int) -> tuple[str, Tensor] | None:
    """``(unit, sizes)``: ``unit`` "character" or "byte", ``sizes`` float32 ``(vocab_size,)`` how many of
    them each id stands for (0 for special tokens and ids past the tokenizer); None where ids have no fixed size."""
    if isinstance(tokenizer, CharTokenizer):
        unit, sizes = "character", dict.fromkeys(range(tokenizer.vocab_size), 1)
    elif isinstance(tokenizer, BPETokenizer):
        unit, sizes = "byte", bpe_bytes(tokenizer)
    elif isinstance(tokenizer, TiktokenTokenizer):
        unit, sizes = "byte", tokenizer.token_bytes()
    else:
        return None
    if sizes is None:
        return None
    table = torch.zeros(max(vocab_size, 1), dtype=torch.float32)
    ids = [i for i in sizes if 0 <= i < len(table)]
    table[ids] = torch.tensor([float(sizes[i]) for i in ids])
    return unit, table
