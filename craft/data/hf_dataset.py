"""``[data] kind = "hf_dataset"``: a Hugging Face dataset on disk, as images + labels or as text.

Reading the tables is ``craft.data.hf``; batching, resuming and sharding across
ranks are the shared ``TrainBatches``/``EvalBatches``, as for every dataset.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch
from torch import Tensor

from craft.data import DATASETS, checks
from craft.data.augment import AugmentConfig
from craft.data.batching import Batch, EvalBatches, TrainBatches, options_fingerprint
from craft.data.decode import decode_bytes, resize_stack
from craft.data.files import MAX_PIXELS
from craft.data.hf import (
    UnlabelledRows, class_names, column, dataset_fingerprint, image_reader, joined_text, label_column, labels_of,
    read_tables, seeded_split, text_values,
)
from craft.data.images import DecodedImages, fits_image, image_load, image_side
from craft.data.listing import split_files
from craft.data.text import train_windows, val_windows
from craft.data.threads import data_threads
from craft.data.tokenizers import CharTokenizer
from craft.words import few, plural


def empty_classes(classes: list[str], labels: Tensor) -> str:
    """``" (7 of them with no example: '1', '2', ...)"``, or "": classes a train split never shows (integer labels
    are class numbers, so labels 0, 5 and 9 make 10 classes, and the model 10 outputs, 7 never trained)."""
    seen = set(labels.tolist())
    empty = [c for k, c in enumerate(classes) if k not in seen]
    return f" ({len(empty)} of them with no example: {few(empty)})" if empty else ""


class DecodedRows(DecodedImages):
    """``DecodedImages`` whose images are the encoded bytes ``read(row)`` of a table's rows ``rows``."""

    def __init__(self, read, rows: list[int], name: str, **options) -> None:
        super().__init__([f"{name}[{r}]" for r in rows], **options)
        self.read, self.rows = read, rows

    def _load(self, indices: Tensor) -> Tensor:
        images = [
            decode_bytes(self.read(self.rows[i]), self.files[i], self.channels, self.max_pixels)
            for i in indices.tolist()
        ]
        return resize_stack(images, self.image_size)


VAL_SPLITS = ("validation", "valid", "val", "dev")
"""The names a dataset's val split may have, tried in turn when ``data.val_split`` is left at its default."""


@DATASETS.register("hf_dataset")
@attrs.frozen
class HFDatasetConfig:
    """``[data] kind = "hf_dataset"``: a dataset saved with ``save_to_disk``, or Parquet/Arrow files, offline.

    Images (``text_column`` unset): ``image_column`` holds encoded images,
    ``label_column`` class numbers or names; batches as ``image_folder``'s
    (``image_size``, ``channels``, ``mean``/``std``, ``augment``, threads,
    ``cache``). Text (``text_column`` set, a column of strings): the rows joined by newlines, missing
    and empty ones skipped, are a character corpus cut into ``block_size`` windows, as ``kind = "text"``.
    Splits: the dataset's own ``train_split`` and ``val_split`` (left at its default, ``VAL_SPLITS``); with
    ``val_split`` unset or absent, a ``val_fraction`` of the train rows fixed
    by ``data_seed`` (per class, for images). Needs ``pip install 'craft[hf]'``.
    """

    path: str
    image_column: str = "image"
    label_column: str = "label"
    text_column: str | None = None
    train_split: str = "train"
    val_split: str | None = "validation"
    val_fraction: float = attrs.field(default=0.1, validator=checks.fraction)
    data_seed: int = 0
    batch_size: int = attrs.field(default=128, validator=checks.at_least(1))
    image_size: int = attrs.field(default=32, validator=image_side)
    channels: int = attrs.field(default=3, validator=checks.channels)
    mean: list[float] = attrs.field(factory=lambda: [0.5], validator=checks.per_channel)
    std: list[float] = attrs.field(factory=lambda: [0.5], validator=checks.per_channel)
    num_threads: int = attrs.field(default=2, validator=checks.at_least(0))
    prefetch: int = attrs.field(default=4, validator=checks.at_least(1))
    cache: bool = False
    max_pixels: int = attrs.field(default=MAX_PIXELS, validator=checks.at_least(1))
    augment: AugmentConfig | None = attrs.field(default=None, validator=fits_image)
    augment_on: str = attrs.field(default="host", validator=checks.one_of("host", "device"))
    block_size: int = attrs.field(default=64, validator=checks.at_least(1))

    def build(self, split: str, *, seed: int, rank: int = 0, world_size: int = 1) -> TrainBatches | EvalBatches:
        """Images: ``{"image": float32 (B, C, S, S), "label": int64 (B,)}``; text: ``{"input", "target": (B, T)}``."""
        checks.check_split(split)
        tables, files = read_tables(self.path)
        if self.train_split not in tables:
            raise ValueError(
                f"data.train_split = {self.train_split!r} is not a split of {self.path}; "
                f"its splits: {', '.join(sorted(tables))}"
            )
        common = {"rank": rank, "world_size": world_size, "fingerprint": None}
        digest = dataset_fingerprint(files, self.path)
        if self.text_column is not None:
            return self._text(split, tables, seed, digest, common)
        return self._images(split, tables, seed, digest, common)

    def _rows(self, tables: dict, split: str, names: list[str] | None) -> tuple[object, list[int]]:
        """``(table, rows)`` of ``split``: the dataset's own split, or the seeded fraction of train."""
        val_name = self._val_name(tables)
        if val_name is not None:
            name = self.train_split if split == "train" else val_name
            if not tables[name].num_rows:  # found now, not at the first evaluation
                raise ValueError(f"the {name!r} split of {self.path} has no rows; give it rows, or name another split")
            return tables[name], list(range(tables[name].num_rows))
        table = tables[self.train_split]
        if table.num_rows < 2:
            raise ValueError(f"the train split of {self.path} has {table.num_rows} rows: too few to hold some out")
        if names is not None:  # per class, as an image folder splits
            train, val = split_files(names, self.val_fraction, self.data_seed)
        else:
            train, val = (t.tolist() for t in seeded_split(table.num_rows, self.val_fraction, self.data_seed))
        if split == "val" and not val:
            each = " (per class)" if names is not None else ""
            raise ValueError(
                f"the val split of {self.path} is empty: data.val_fraction = {self.val_fraction:g} of "
                f"{table.num_rows} rows{each} holds none out; raise data.val_fraction, or name a split as data.val_split"
            )
        return table, train if split == "train" else val

    def _val_name(self, tables: dict) -> str | None:
        """The dataset's own split that is val, or None (a fraction of train). The default names its
        spellings too (``VAL_SPLITS``: a DatasetDict's ``valid`` is its val split, as a folder's ``valid/`` is);
        a ``val_split`` set to a name the dataset lacks is an error (a typo must not silently become a
        fraction of train)."""
        if self.val_split is None:
            return None
        if self.val_split in tables:
            return self.val_split
        if self.val_split != attrs.fields(HFDatasetConfig).val_split.default:
            raise ValueError(
                f"data.val_split = {self.val_split!r} is not a split of {self.path}; its splits: "
                f"{', '.join(sorted(tables))}; name one of them, or {self._other_val(tables)}"
            )
        return self._default_val(tables)

    def _default_val(self, tables: dict) -> str | None:
        """The split that ``val_split`` left at its default reads (``VAL_SPLITS``), or None: a fraction of train."""
        return next((name for name in VAL_SPLITS if name in tables and name != self.train_split), None)

    def _other_val(self, tables: dict, failed: str | None = None) -> str:
        """How to read another val split than ``failed``, as a fix: what leaving ``data.val_split`` out does for
        this dataset (its own val split, else a fraction of train), and ``None`` for the fraction."""
        found, held = self._default_val(tables), f"hold out data.val_fraction of {self.train_split!r}"
        if found is None:
            return f"leave data.val_split out (or set it to None) to {held}"
        if found == failed:
            return f"set data.val_split = None to {held}"
        return f"leave data.val_split out to evaluate on split {found!r}, or set it to None to {held}"

    def _labels(self, tables: dict, name: str, named: list[str] | None) -> tuple[Tensor, list[str]]:
        """``labels_of`` split ``name``'s label column; rows labelled -1 (no label) are said as such, with a fix."""
        try:
            return labels_of(label_column(tables[name], self.label_column), named)
        except UnlabelledRows as e:
            fix = (f"name a labelled split as data.val_split, or {self._other_val(tables, name)}" if name != self.train_split
                   else "drop those rows, or name another split as data.train_split")
            raise ValueError(
                f"split {name!r} of {self.path} has unlabelled rows (label -1, {e.count:,} of {e.total:,}: "
                f"Hugging Face's mark for no label, as test splits often have); {fix}"
            ) from None

    def _split_said(self, tables: dict, split: str) -> str:
        """Where ``split``'s rows come from, for the summary line."""
        val_name = self._val_name(tables)
        if val_name is not None:
            return f"split {(self.train_split if split == 'train' else val_name)!r}"
        if split == "train":
            return f"split {self.train_split!r} less the rows held out for val"
        absent = f"no {self.val_split!r} split" if self.val_split is not None else "data.val_split unset"
        others = [name for name in sorted(tables) if name != self.train_split]
        if others:  # a test split is not tuned on unasked: said, with how to evaluate on it
            absent += f"; split {others[0]!r} left alone (data.val_split = {others[0]!r} evaluates on it)"
        return f"{self.val_fraction:g} of {self.train_split!r} held out by data_seed = {self.data_seed}; {absent}"

    def _images(self, split: str, tables: dict, seed: int, digest: str, common: dict) -> TrainBatches | EvalBatches:
        train_table = tables[self.train_split]
        named = class_names(train_table, self.label_column)
        column(train_table, self.image_column, "image", "image_column")  # named first: a text dataset lacks it
        train_labels, classes = self._labels(tables, self.train_split, named)
        table, rows = self._rows(tables, split, [classes[k] for k in train_labels.tolist()])
        split_named = class_names(table, self.label_column) or named  # its own names: matched to train's by name
        split_name = self.train_split if table is train_table else self._val_name(tables)
        all_labels, split_classes = self._labels(tables, split_name, split_named)
        occurring = [split_classes[k] for k in sorted(set(all_labels[rows].tolist()))]  # in label order
        unknown = [c for c in occurring if c not in classes]
        if unknown:
            raise checks.UnknownClasses(
                f"the val split has classes unknown to the train split: {unknown[:5]}"
                f"{' ...' if len(unknown) > 5 else ''}; add them to train or remove them from val", unknown
            )
        position = {c: k for k, c in enumerate(classes)}
        labels = torch.tensor([position[split_classes[k]] for k in all_labels[rows].tolist()], dtype=torch.int64)
        read = image_reader(column(table, self.image_column, "image", "image_column"), Path(self.path))
        images = DecodedRows(
            read, rows, f"{self.path}:{split}", image_size=self.image_size, channels=self.channels,
            cache=self.cache, max_pixels=self.max_pixels,
        )
        load, pass_epoch = image_load(
            images, labels, train=split == "train", seed=seed, augment=self.augment, augment_on=self.augment_on,
            image_size=self.image_size, mean=self.mean, std=self.std,
        )
        threads = self.num_threads
        executor = data_threads(threads, f"craft-data-{split}")
        common.update(
            batch_size=self.batch_size, classes=classes, executor=executor, prefetch=self.prefetch,
            fingerprint=options_fingerprint(self, split, classes, digest),
        )
        if split == "train":
            batches = TrainBatches(len(rows), load, seed=seed, pass_epoch=pass_epoch, **common)
        else:
            batches = EvalBatches(len(rows), load, **common)
        batches.summary = (
            f"{plural(len(rows), 'image')} in {self.path} ({self._split_said(tables, split)}), "
            f"{plural(len(classes), 'class', 'classes')}{empty_classes(classes, labels) if split == 'train' else ''}"
        )
        return batches

    def _text(self, split: str, tables: dict, seed: int, digest: str, common: dict) -> TrainBatches | EvalBatches:
        def text_of(table, rows: list[int]) -> str:
            return joined_text(text_values(table, self.text_column), rows)

        train_table, train_rows = self._rows(tables, "train", None)
        val_table, val_rows = self._rows(tables, "val", None)
        train_text, val_text = text_of(train_table, train_rows), text_of(val_table, val_rows)
        tokenizer = CharTokenizer.from_text(train_text + val_text)  # the whole corpus, as kind = "text"
        common.update(classes=[], fingerprint=options_fingerprint(self, split, digest))
        if split == "train":
            data = tokenizer.encode_tensor(train_text)
            if len(data) < self.block_size + self.batch_size:
                raise ValueError(
                    f"the train text has {len(data)} characters, too few for data.batch_size = {self.batch_size} "
                    f"windows of block_size + 1 = {self.block_size + 1}; lower them or add rows"
                )
            load, count = train_windows(data, self.block_size)
            batches = TrainBatches(count, load, batch_size=self.batch_size, seed=seed, **common)
        else:
            context = tokenizer.encode_tensor(val_text)
            if len(context) < 2:
                raise ValueError(f"the val text of {self.path} is empty; raise data.val_fraction or add rows")
            inputs, targets = val_windows(context, self.block_size)

            def load(indices: Tensor) -> Batch:
                return {"input": inputs[indices], "target": targets[indices]}

            batches = EvalBatches(len(inputs), load, batch_size=self.batch_size, **common)
        batches.tokenizer, batches.vocab_size, batches.block_size = tokenizer, tokenizer.vocab_size, self.block_size
        count = len(train_text if split == "train" else val_text)
        batches.summary = f"{count:,} characters in {self.path} ({self._split_said(tables, split)})"
        return batches
