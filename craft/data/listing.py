"""Listing an image folder: its files, their classes, what was left out, and the train/val split.

Labels come from class folders (``root/cat/x.jpg``) or from file-name
prefixes (``root/cat_001.jpg``). Classes are sorted by name (in Unicode's
composed form); a label is the class's position in that list, the same for
train and val.
"""

from __future__ import annotations

import os
import unicodedata
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import torch

from craft.data.batching import derive_seed
from craft.data.files import IMAGE_SUFFIXES, KINDS, find_files, hidden, inside, shown
from craft.data.splits import split_word
from craft.words import plural

_COMMON = (".jpg", ".jpeg", ".png")
_SUFFIXES = ", ".join(_COMMON)  # messages name these first: the common kinds
_MORE_SUFFIXES = ", ".join(s for s in IMAGE_SUFFIXES if s not in _COMMON)



class Listing(NamedTuple):
    """Image files found under ``folder``, the class name of each, and what was left out (reason -> count)."""

    folder: Path
    files: list[str]
    names: list[str]
    left_out: Counter[str] = Counter()

    def subset(self, positions: list[int]) -> Listing:
        files, names = [self.files[i] for i in positions], [self.names[i] for i in positions]
        return Listing(self.folder, files, names, self.left_out)

    def summary(self) -> str:
        """One line: how many files of which kinds were found, and what was left out."""
        kinds = Counter(KINDS[os.path.splitext(f)[1].lower()] for f in self.files)
        found = ", ".join(f"{n:,} {kind}" for kind, n in sorted(kinds.items()))
        line = f"{plural(len(self.files), 'image')} in {shown(self.folder)}" + (f" ({found})" if found else "")
        return line + (f"; left out {describe_left_out(self.left_out)}" if self.left_out else "")


def describe_left_out(left_out: Counter[str]) -> str:
    """``"3 .txt files, 1 link out of the folder"``: the most frequent reasons first."""
    return ", ".join(f"{n:,} {reason if n != 1 else _one(reason)}" for reason, n in left_out.most_common())


_ONE = {"not regular files": "file that is not regular", "images beside the class folders": "image beside the class folders",
        "links out of the folder": "link out of the folder", "broken links": "broken link", "repeated folders": "repeated folder"}


def _one(reason: str) -> str:
    """A reason ``left_out`` counts (plural: ``".txt files"``) for one file: ``".txt file"``."""
    return _ONE.get(reason) or reason.replace("files", "file", 1)


TRAIN_FOLDERS = ("train", "training")
VAL_FOLDERS = ("val", "validation", "valid")
"""Names a val folder beside ``train`` may have (``valid``: as Roboflow and Kaggle exports name it)."""


def split_folder(root: Path, names: tuple[str, ...]) -> Path | None:
    """The first ``root/<name>`` of ``names`` that is a folder, as spelled or in another case (``Train/``,
    ``VALID/``: as Kaggle exports name them), or None."""
    exact = next((root / name for name in names if (root / name).is_dir()), None)
    if exact is not None or not root.is_dir():
        return exact
    folders = {e.name.lower(): Path(e.path) for e in sorted(os.scandir(root), key=lambda e: e.name) if e.is_dir()}
    return next((folders[name] for name in names if name in folders), None)


class SplitFolders(ValueError):
    """Class folders ``names`` of ``folder`` (given as ``key``) that name splits; ``split`` is the one to point
    ``key`` at: the train one for ``data.path``, the val (else test) one for ``data.val_path``."""

    def __init__(self, message: str, folder: Path, names: list[str], key: str, split: Path) -> None:
        super().__init__(message)
        self.folder, self.names, self.key, self.split = folder, names, key, split


def split_folders_error(folder: Path, names: list[str], key: str = "data.path") -> SplitFolders:
    """The error for class folders ``names`` of ``folder`` that name splits (``training_set``, ``test_set``):
    a run would learn which split an image came from. ``key``: the option that named ``folder``."""
    found = ", ".join(map(shown, names))
    if key == "data.val_path":
        val = next((n for want in ("validation", "test") for n in names if split_word(n) == want), names[0])
        return SplitFolders(
            f"data.val_path {folder} holds split folders ({found}), not class folders: point data.val_path at "
            f"one split's folder ({shown(folder / val)})", folder, names, key, folder / val
        )
    train = next((n for n in names if split_word(n) == "train"), names[0])
    rename = "" if set(names) <= {"train", "val"} else ", or rename them train/ and val/"
    return SplitFolders(
        f"the class folders of {folder} name splits, not classes ({found}): "
        f"point data.path at the train folder ({shown(folder / train)}) and data.val_path at the val one{rename}",
        folder, names, key, folder / train,
    )


def naming_splits(folders: list[str]) -> list[str]:
    """The ``folders`` (names) that name splits, sorted, when they name two or more splits (``train``, ``val``)
    and are at least half of ``folders``, else []: 'Training_Shoes' and 'Test_Tube' among 50 classes are classes."""
    names = sorted(n for n in folders if split_word(n))
    return names if len({split_word(n) for n in names}) >= 2 and 2 * len(names) >= len(folders) else []


def split_subfolders(folder: Path) -> list[str]:
    """The sub-folders of ``folder`` that name splits (``naming_splits``), else []."""
    return naming_splits([e.name for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)])


def class_name(raw: str) -> str:
    """A class's name as a folder or file name spells it, in Unicode's composed form (NFC): macOS writes
    ``café`` as ``cafe`` + a combining accent, so a folder copied from a Mac and one made elsewhere name one
    class alike (and as ``classes.json`` and a val folder do)."""
    return unicodedata.normalize("NFC", raw)


def images_under(folder: str | Path) -> list[str]:
    """Image files anywhere under ``folder``, sorted; see ``craft.data.files.find_files`` for what is left out."""
    return find_files(folder).files


def _no_images(folder: Path, left_out: Counter[str]) -> ValueError:
    found = f"; found only {describe_left_out(left_out)}" if left_out else ""
    # prepare writes only into a missing or empty folder: for one holding anything, it would change nothing.
    prepare = "" if any(folder.iterdir()) else ", or set prepare = \"shapes\""
    return ValueError(f"no images ({_SUFFIXES}) in {folder}, nor {_MORE_SUFFIXES}{found}; add or convert some{prepare}")


def list_images(folder: str | Path, labels: str = "folders", *, key: str = "data.path") -> Listing:
    """The images under ``folder`` and their classes, in a stable (sorted) order.

    ``labels="folders"``: the class is the sub-folder of ``folder`` holding the
    file (at any depth below it). ``labels="prefix"``: the class is the file
    name up to its first ``_`` (``cat_001.jpg`` -> ``cat``). Hidden files and
    folders are skipped, and so are loose images beside class folders (counted in
    ``left_out``). Links
    are followed only within the walked folder (a class folder, with
    ``"folders"``), and each real folder is read once, so a link never moves
    an image into another class (``craft.data.files.find_files``). ``key``: the option naming ``folder``, for messages.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist or is not a folder")
    if labels == "prefix":
        files, left_out = find_files(folder, root=folder)
        if not files:
            raise _no_images(folder, left_out)
        names = [os.path.basename(f).partition("_") for f in files]
        names = [class_name(prefix) if sep and prefix else "" for prefix, sep, _ in names]
        missing = [f for f, name in zip(files, names) if not name]
        if len(missing) == len(files):
            raise ValueError(
                f"no image in {folder} has a class prefix; labels = \"prefix\" needs names like cat_001.jpg "
                f"(class 'cat'): rename the files, or use labels = \"folders\" for {folder}/<class>/<image>"
            )
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(files)} images in {folder} have no class prefix, e.g. {shown(missing[0])}; "
                f"labels = \"prefix\" needs names like cat_001.jpg: rename or remove them"
            )
        return Listing(folder, files, names, left_out)
    if labels != "folders":
        raise ValueError(f"data.labels must be 'folders' or 'prefix', got {labels!r}")
    return _list_class_folders(folder, key)


def _list_class_folders(folder: Path, key: str) -> Listing:
    """``labels="folders"``: every class folder's images; one walk shares the set of folders seen."""
    root = os.path.realpath(folder)
    class_dirs, left_out = [], Counter()
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if hidden(entry.name):
            continue
        if not entry.is_dir():
            if os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                left_out["images beside the class folders"] += 1  # said, so a folder of one class shows why
            continue
        if entry.is_symlink() and inside(root, os.path.realpath(entry.path)):  # to the folder or above it
            left_out["links out of the folder"] += 1
        else:
            class_dirs.append(entry.name)
    if named_splits := naming_splits(class_dirs):  # splits, not classes
        raise split_folders_error(folder, named_splits, key)
    if not class_dirs:
        loose = find_files(folder)
        if loose.files:
            raise ValueError(
                f"{folder} has images but no class folders; labels = \"folders\" expects {folder}/<class>/<image>: "
                f"move the images into class folders, or set labels = \"prefix\" for names like cat_001.jpg"
            )
        raise _no_images(folder, loose.left_out + left_out)
    seen = {(os.stat(folder).st_dev, os.stat(folder).st_ino)}  # a link back to the root is never followed
    files, names = [], []
    for name in class_dirs:
        inner = split_subfolders(folder / name)
        if inner:  # cat/train/, cat/val/: the val images would be trained on
            raise ValueError(
                f"class folder {shown(folder / name)} holds split folders ({', '.join(map(shown, inner))}), and one "
                f"split is read whole; arrange the images as {shown(folder)}/train/<class> and {shown(folder)}/val/<class>"
            )
        found, skipped = find_files(folder / name, seen=seen, root=folder)
        left_out += skipped
        if not found:
            what = f" ({describe_left_out(skipped)})" if skipped else ""
            raise ValueError(
                f"class folder {folder / name} has no images ({_SUFFIXES}, {_MORE_SUFFIXES}){what}; "
                f"add images or remove the folder"
            )
        files += found
        names += [class_name(name)] * len(found)
    return Listing(folder, files, names, left_out)


def split_files(names: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train, val)`` positions: per class, a seeded ``round(fraction * n)`` go to val.

    Per class, so every class is in both splits where it can be (one file
    stays in train); a function of ``(names, fraction, seed)`` only, so the
    same sorted listing always splits the same way.
    """
    by_class: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        by_class.setdefault(name, []).append(i)
    val = []
    for name, positions in by_class.items():
        generator = torch.Generator().manual_seed(derive_seed("split", seed, name))
        order = torch.randperm(len(positions), generator=generator).tolist()
        take = min(round(fraction * len(positions)), len(positions) - 1)
        val += [positions[k] for k in order[:take]]
    held = set(val)
    return [i for i in range(len(names)) if i not in held], sorted(val)


def empty_val(folder: str | Path, names: list[str], fraction: float) -> ValueError:
    """The error for a per-class ``fraction`` (``split_files``) that held out none of the images of classes
    ``names``: why, and the least fraction (in hundredths) that holds one out, where one does."""
    sizes = Counter(names).values()
    largest, other = max(sizes, default=0), f"add {Path(folder) / 'val'}, or set data.val_path"
    if fraction == 0:
        return ValueError(f"the val split of {folder} is empty (data.val_fraction = 0); set data.val_fraction > 0, {other}")
    if largest < 2:
        return ValueError(f"the val split of {folder} is empty: each class has one image, which stays in train; {other}")
    least = next(k / 100 for k in range(1, 101) if round(k / 100 * largest) >= 1)  # as split_files rounds
    each = f"{'at most ' if min(sizes) < largest else ''}{largest} images per class"
    return ValueError(
        f"the val split of {folder} is empty: data.val_fraction = {fraction:g} of {each} rounds to 0 images; "
        f"set data.val_fraction >= {least:g}, {other}"
    )
