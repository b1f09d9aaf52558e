"""The words that name a dataset's split in a folder or file name, as Hugging Face ``datasets`` reads them.

``train-00000-of-00002.parquet``, ``default/partial-test/0000.parquet``,
``seg_train``, ``training_set``, ``Validation``: a split's word set off by
``-``, ``_``, ``.``, a space or digits (or the name's start or end), in any case.
"""

from __future__ import annotations

import re

SPLIT_KEYWORDS = {
    "train": ("train", "training"), "validation": ("validation", "valid", "dev", "val"),
    "test": ("test", "testing", "eval", "evaluation"),
}  # fmt: skip
"""Split -> the words that name it (``datasets.data_files.SPLIT_KEYWORDS``)."""

_WORDS = sorted((word for words in SPLIT_KEYWORDS.values() for word in words), key=len, reverse=True)
_KEYWORD = re.compile(r"(?:^|[-._ 0-9])(" + "|".join(_WORDS) + r")(?=[-._ 0-9]|$)")
_SPLIT_OF_WORD = {word: split for split, words in SPLIT_KEYWORDS.items() for word in words}


def split_word(name: str) -> str | None:
    """The split (``train``, ``validation`` or ``test``) whose word ``name`` holds, the first one in it, or None:
    ``training_set`` -> train, ``mnist_dev.parquet`` -> validation, ``interval`` -> None."""
    found = _KEYWORD.search(name.lower())
    return _SPLIT_OF_WORD[found.group(1)] if found else None
