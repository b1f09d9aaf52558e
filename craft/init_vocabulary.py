"""Whether ``train.init_from``'s weights index the new data's tokens and classes as they did (``craft.init_from``).

A token id picks a row of a language model's embedding and output layer, a label a row of a classifier's head:
weights trained with another ``tokenizer.json`` or ``classes.json`` give each row to another token or class,
even where the sizes agree. ``changed`` says how the data differs from the source folder's files;
``check_indexed`` refuses unless ``train.init_skip`` leaves those rows at init. ``skip_globs`` words an
``init_skip`` for a list of names.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
from pathlib import Path
from typing import Any, NamedTuple

import torch

from craft.data.tokenizers import load_tokenizer
from craft.other_data import classes_differ, tokenizer_differs
from craft.rundir import CLASSES_FILE, TOKENIZER_FILE, RunError
from craft.words import few, plural


class Changed(NamedTuple):
    """How the new data's tokens or classes differ from the source's: in a sentence (``why``), in short
    (``short``), what indexes the tensors (``unit``: token, class), the fix besides ``init_skip``, and the
    first dimensions of the tensors they index (``sizes``)."""

    why: str
    short: str
    unit: str
    fix: str
    sizes: set[int]


def changed(folder: Path | None, sizes: dict[str, int], data: Any) -> Changed | None:
    """How ``data``'s tokenizer or classes (``write_data_files`` reads the same) differ from the source ``folder``'s
    ``tokenizer.json`` / ``classes.json``; None where they match or either has none to compare. ``sizes``: the
    source model's ``vocab_size`` / ``num_classes``, which may exceed the file's count (a padded vocabulary)."""
    if folder is None or data is None:
        return None
    if tokenizer_differs(folder, data):
        tokenizer, size = data.tokenizer, load_tokenizer(folder / TOKENIZER_FILE).vocab_size
        return Changed(
            f"the data's tokenizer differs from the source's {TOKENIZER_FILE} ({plural(size, 'token')}, the data's "
            f"{tokenizer.vocab_size}), so the same token ids mean other text", "the data's vocabulary differs from "
            "the source's", "token", "encode the data with the source's tokenizer (a token folder: craft prepare "
            f"tokens SRC... OUT --tokenizer={shlex.quote(str(folder))})", {size, sizes.get("vocab_size", size)})
    if differ := classes_differ(folder, getattr(data, "classes", None), "the source's"):
        size = len(json.loads((folder / CLASSES_FILE).read_text(encoding="utf-8")))
        return Changed(f"{differ}, so the same labels mean other classes", "the data's classes differ from the "
                       "source's", "class", "give the data the source's classes, in its order",
                       {size, sizes.get("num_classes", size)})
    return None


def check_indexed(change: Changed, tensors: dict[str, torch.Tensor], left: list[str], skip: list[str], where: str) -> None:
    """A ``RunError`` unless ``skip`` leaves at init every source tensor that ``change``'s tokens or classes
    index: the 1-D and 2-D ones (embedding, head and its bias; not a conv with as many channels) whose first
    dimension is the source's vocabulary size or class count."""
    indexed = [n for n, t in tensors.items() if t.ndim in (1, 2) and t.shape[0] in change.sizes]
    kept = [n for n in indexed if n not in left and not matches(n, skip)]
    if not kept:
        return
    names = skip_globs(kept, tensors)
    which = f" ({few(kept, 3)})" if names is None else ""
    fix = f"train.init_skip = [{quoted([*skip, *names])}]" if names is not None else "train.init_skip"
    raise RunError(f"{where}: {change.why}; {change.fix}, or leave the {change.unit}-indexed tensors{which} at "
                   f"their fresh init with {fix}")


def matches(name: str, globs: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def quoted(names: list[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def skip_globs(names: list[str], every) -> list[str] | None:
    """What ``train.init_skip`` lists to leave just ``names`` at init: the names themselves when they are few
    (<= 3), else globs by prefix where a glob matches none of ``every``'s other names; None if still over 3."""
    names = sorted(set(names))
    if len(names) <= 3:
        return names
    others = set(every) - set(names)

    def glob(name: str) -> str:
        prefix = name.rsplit(".", 1)[0] + ".*" if "." in name else name
        return name if any(fnmatch.fnmatchcase(o, prefix) for o in others) else prefix

    globs = sorted({glob(n) for n in names})
    return globs if len(globs) <= 3 else None
