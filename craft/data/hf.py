"""Hugging Face datasets on disk, offline: images and labels, or text, from Arrow tables.

``path`` is a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``,
a Parquet or Arrow file, or a folder of them (split by the words of their
folder and file names, as ``datasets`` splits them: ``craft.data.hf_tables``).
Nothing is downloaded and nothing is written to the Hugging Face cache: the
tables are read (memory-mapped) with ``datasets`` and ``pyarrow``.

Images are read from the column's raw bytes (an ``Image`` feature stores
``{"bytes", "path"}``) and decoded by craft's decoder (``craft.data.decode``),
so they go through the same resize, augmentation and normalization as an
image folder. Text rows are joined with newlines and cut into windows of
``block_size`` characters, as ``kind = "text"`` does.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Callable
from pathlib import Path

import torch

from craft.data.files import files_fingerprint, read_file
from craft.words import clipped
from craft.data.hf_tables import (  # noqa: F401  (re-exported: they lived here)
    EXTRA, SPLIT_KEYWORDS, TABLE_SUFFIXES, read_tables, require_datasets, split_of,
)

def dataset_fingerprint(files: list[str], path: str | Path) -> str:
    """The files' names and sizes, relative to ``path`` (a file: its folder)."""
    root = Path(path) if Path(path).is_dir() else Path(path).parent
    return files_fingerprint(files, root)


def column(table, name: str, role: str, known_key: str):
    """The column ``name`` of ``table``; a ValueError naming the known columns when it is missing."""
    if name not in table.column_names:
        text = ", or data.text_column for a text dataset" if role == "image" else ""
        raise ValueError(
            f"data.{known_key} = {name!r} is not a column of the dataset; "
            f"its columns: {', '.join(table.column_names)}; "
            f"set data.{known_key} to the {role} column{text}"
        )
    return table.column(name).combine_chunks()


def is_text(kind) -> bool:
    """Whether the Arrow type ``kind`` holds strings."""
    import pyarrow as pa

    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def column_type(table, name: str) -> str:
    """What column ``name`` holds, for a message: its Arrow type, after the ``datasets`` feature
    (``Image``, ``ClassLabel``, ...) the table's metadata records, when it is more than a plain value."""
    kind = str(table.schema.field(name).type)
    try:
        feature = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"][name]["_type"]
    except (KeyError, TypeError, ValueError):  # no datasets metadata: the Arrow type says it
        return kind
    return kind if feature == "Value" else f"{feature} ({kind})"


def text_values(table, name: str) -> list[str | None]:
    """The rows of the text column ``name``; a ValueError naming its type when it holds anything but strings
    (numbers, images, class labels: their printed form is no corpus)."""
    array = column(table, name, "text", "text_column")
    if is_text(array.type):
        return array.to_pylist()
    texts = [c for c in table.column_names if is_text(table.schema.field(c).type)]
    images = "unset to read images (data.image_column) and labels"
    fix = (f"set it to a column of strings ({', '.join(texts)}), or leave it {images}" if texts
           else f"the dataset has no column of strings: leave data.text_column {images}")  # fmt: skip
    raise ValueError(f"data.text_column = {name!r} holds {column_type(table, name)}, not text; {fix}")


def joined_text(values: list[str | None], rows: list[int]) -> str:
    """The text of ``rows``, each followed by a newline; missing (None) and empty rows are skipped."""
    return "".join(f"{values[r]}\n" for r in rows if values[r] is not None and values[r] != "")


def image_reader(array, base: Path) -> Callable[[int], bytes]:
    """``read(row) -> bytes`` of an image column: binary, ``{"bytes", "path"}`` structs (an ``Image``
    feature), or file paths (strings).

    A struct whose ``bytes`` is empty is read from its ``path``; a relative path is relative to
    ``base`` (the dataset's folder; for a single Parquet or Arrow file, its folder).
    """
    import pyarrow as pa

    base = base if base.is_dir() else base.parent
    if is_text(array.type):

        def from_path(row: int) -> bytes:
            return read_file(file_of(array[row].as_py(), row, base))

        return from_path
    if pa.types.is_struct(array.type):
        data = array.field("bytes") if array.type.get_field_index("bytes") >= 0 else None
        paths = array.field("path") if array.type.get_field_index("path") >= 0 else None

        def read(row: int) -> bytes:
            raw = data[row].as_py() if data is not None else None
            if raw:
                return raw
            where = paths[row].as_py() if paths is not None else None
            if not where:
                raise ValueError(f"row {row} of the image column holds neither bytes nor a path")
            return read_file(file_of(where, row, base))

        return read
    if pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
        return lambda row: array[row].as_py() or b""
    raise ValueError(
        f"the image column holds {array.type}, not encoded images (bytes) or file paths; set data.image_column"
    )


def file_of(where: str | None, row: int, base: Path) -> str:
    """The image file a row names: absolute, else under ``base``, else (where only that exists) from the
    working directory; a ValueError naming the row when it is none of these."""
    if not where:
        raise ValueError(f"row {row} of the image column holds no file path")
    candidates = [where] if os.path.isabs(where) else [str(base / where), where]
    found = next((c for c in candidates if os.path.isfile(c)), None)
    if found is None:
        raise ValueError(
            f"row {row} of the image column names {where!r}, which is not a file (relative paths are read from "
            f"{str(base)!r}); fix the path or the data"
        )
    return found


class UnlabelledRows(ValueError):
    """Rows labelled -1, Hugging Face's mark for "no label" (a test split's, often): ``count`` of ``total``."""

    def __init__(self, count: int, total: int) -> None:
        super().__init__(f"the label column has unlabelled rows (-1, {count:,} of {total:,}); drop them")
        self.count, self.total = count, total


def label_column(table, name: str):
    """The label column ``name``; a ValueError naming what it holds (its feature and type, never a value: an
    image's is kilobytes) when it holds neither numbers nor names (images, lists, bytes)."""
    import pyarrow as pa

    array = column(table, name, "label", "label_column")
    if pa.types.is_nested(array.type) or pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
        raise ValueError(
            f"data.label_column = {name!r} holds {column_type(table, name)}, not class numbers or names; "
            f"set data.label_column to the column of classes (its columns: {', '.join(table.column_names)})"
        )
    return array


def labels_of(array, names: list[str] | None) -> tuple[torch.Tensor, list[str]]:
    """``(int64 labels (N,), class names)``: integer labels as they are (named by ``names`` when the
    feature gives them), text labels (in Unicode's composed form) numbered in sorted order. Rows labelled -1
    (no label) are ``UnlabelledRows``."""
    values = array.to_pylist()
    if any(v is None for v in values):
        raise ValueError("the label column has empty rows; fill or drop them")
    if all(isinstance(v, str) for v in values):
        values = [unicodedata.normalize("NFC", v) for v in values]  # 'café' typed on a Mac or elsewhere: one class
        classes = sorted(set(values))
        position = {c: k for k, c in enumerate(classes)}
        return torch.tensor([position[v] for v in values], dtype=torch.int64), classes
    if all(isinstance(v, float) and v.is_integer() for v in values):  # 0.0, 1.0, ...: a pandas round trip
        values = [int(v) for v in values]
    if unlabelled := sum(1 for v in values if v == -1 and not isinstance(v, bool)):
        raise UnlabelledRows(unlabelled, len(values))
    bad = next((v for v in values if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0)), None)
    if bad is not None:
        raise ValueError(
            f"the label column must hold class numbers (0, 1, ...) or class names, not {clipped(bad)} "
            f"({type(bad).__name__}); set data.label_column to the column of classes"
        )
    count = max(values) + 1
    classes = list(names) if names is not None and len(names) >= count else [str(k) for k in range(count)]
    return torch.tensor(values, dtype=torch.int64), classes


def class_names(table, label_column: str) -> list[str] | None:
    """The ``ClassLabel`` names of ``table``'s label column, if its ``datasets`` features give them: a
    save_to_disk folder and a Parquet or Arrow file written by ``datasets`` record them alike."""
    try:
        features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
        feature = features[label_column]
    except (KeyError, TypeError, ValueError):  # no datasets metadata, or no such column
        return None
    names = feature.get("names") if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" else None
    return [str(name) for name in names] if isinstance(names, list) else None


def seeded_split(count: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train rows, val rows)``: a seeded ``round(fraction * count)`` rows (at least one) are val, sorted."""
    from craft.data.batching import derive_seed

    order = torch.randperm(count, generator=torch.Generator().manual_seed(derive_seed("hf-split", seed)))
    take = min(max(1, round(fraction * count)), count - 1)
    return order[take:].sort().values, order[:take].sort().values
