"""Hugging Face datasets as they come off the Hub or out of a project: split layouts, split names, class names."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from craft.data import HFDatasetConfig
from craft.data.hf import split_of

datasets = pytest.importorskip("datasets")

SIZE = 4
NAMES = ["ant", "bee", "cow"]


def png(level: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), (level, level, level)).save(buffer, format="PNG")
    return buffer.getvalue()


def table(levels: list[int], labels: list[int], names: list[str] | None = NAMES):
    """Rows whose image's gray level says where it came from (the test reads it back from the batch)."""
    label = datasets.ClassLabel(names=names) if names is not None else datasets.Value("int64")
    features = datasets.Features({"image": datasets.Image(), "label": label})
    rows = {"image": [{"bytes": png(v), "path": None} for v in levels], "label": labels}
    return datasets.Dataset.from_dict(rows, features=features)


def levels_of(config: HFDatasetConfig, split: str) -> list[int]:
    """The gray levels of every image of ``split``, in the order batches give them."""
    batches = config.build(split, seed=0)
    images = [b["image"] for b in (batches if split == "val" else [next(batches)])]
    return sorted(round(float(v) * 127.5 + 127.5) for v in torch.cat(images)[:, 0, 0, 0])


@pytest.mark.parametrize(
    "train, val, test",
    [
        ("default/train/0000.parquet", "default/validation/0000.parquet", "default/test/0000.parquet"),  # Hub convert
        ("default/partial-train/0000.parquet", "default/partial-validation/0000.parquet", "default/partial-test/0000.parquet"),
        ("mnist_train.parquet", "mnist_dev.parquet", "mnist_test.parquet"),
        ("data/train-00000-of-00001.parquet", "data/valid-00000-of-00001.parquet", "data/eval-00000-of-00001.parquet"),
    ],
)
def test_test_and_val_tables_are_never_trained_on_whatever_the_layout_names_them(tmp_path, train, val, test):
    """The splits were read from the start of the file name alone, so the Hub's converted layout
    (default/test/0000.parquet) and names like mnist_test.parquet silently trained on the test rows."""
    for relative, levels in ((train, [10, 20, 30, 40, 50, 60]), (val, [100, 110, 120]), (test, [200, 210, 220])):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        table(levels, [0, 1, 2] * (len(levels) // 3)).to_parquet(str(tmp_path / relative))
    config = HFDatasetConfig(path=str(tmp_path), batch_size=6, image_size=SIZE, num_threads=0)
    assert levels_of(config, "train") == [10, 20, 30, 40, 50, 60]
    assert levels_of(config, "val") == [100, 110, 120]


def test_a_split_is_a_word_of_a_folder_or_file_name_as_datasets_reads_it():
    assert [split_of(p) for p in ("train.parquet", "val.arrow", "a/training/x.parquet", "evaluation-3.parquet")] == [
        "train", "validation", "train", "test"
    ]
    # inside another word, no split: interval, retrain, testimony; the nearest folder before the file's name
    assert [split_of(p) for p in ("interval.parquet", "retrain.parquet", "testimony.parquet", "test/train-0.parquet")] == [
        "train", "train", "train", "test"
    ]


@pytest.mark.parametrize("name", ["valid", "val", "dev"])
def test_a_dataset_dict_s_valid_split_is_its_val_split_by_default(tmp_path, name):
    """A DatasetDict whose val split is named 'valid' had it ignored: a fraction of train was held out instead."""
    parts = {"train": table([10, 20, 30, 40, 50, 60], [0, 1, 2] * 2), name: table([100, 110, 120], [0, 1, 2])}
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "d"))
    config = HFDatasetConfig(path=str(tmp_path / "d"), batch_size=6, image_size=SIZE, num_threads=0)
    assert levels_of(config, "val") == [100, 110, 120] and levels_of(config, "train") == [10, 20, 30, 40, 50, 60]
    assert config.build("val", seed=0).summary == f"3 images in {tmp_path / 'd'} (split {name!r}), 3 classes"


def test_a_test_split_is_left_alone_and_the_summary_says_how_to_evaluate_on_it(tmp_path):
    parts = {"train": table(list(range(10, 130, 10)), [0, 1, 2] * 4), "test": table([200, 210, 220], [0, 1, 2])}
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "d"))
    config = HFDatasetConfig(path=str(tmp_path / "d"), batch_size=12, image_size=SIZE, num_threads=0, val_fraction=0.25)
    assert max(levels_of(config, "val")) < 200
    assert "split 'test' left alone (data.val_split = 'test' evaluates on it)" in config.build("val", seed=0).summary


def test_class_names_of_a_parquet_file_are_kept_and_val_labels_are_matched_by_name(tmp_path):
    """Parquet written by datasets records its ClassLabel names; they were read from save_to_disk folders only,
    so the run's classes were '0', '1', '2'. A val table naming its classes in another order is matched by name."""
    table([10, 20, 30], [0, 1, 2]).to_parquet(str(tmp_path / "train.parquet"))
    table([10, 20, 30], [2, 0, 1], names=["cow", "ant", "bee"]).to_parquet(str(tmp_path / "validation.parquet"))
    config = HFDatasetConfig(path=str(tmp_path), batch_size=3, image_size=SIZE, num_threads=0)
    train, val = config.build("train", seed=0), config.build("val", seed=0)
    assert train.classes == val.classes == NAMES
    batch = next(iter(val))
    by_level = {round(float(v) * 127.5 + 127.5): int(y) for v, y in zip(batch["image"][:, 0, 0, 0], batch["label"])}
    assert by_level == {10: 1, 20: 2, 30: 0}  # cow, ant, bee: as train numbers them (ant 0, bee 1, cow 2)


def test_plain_integer_labels_are_named_by_their_numbers(tmp_path):
    table([10, 20, 30], [0, 1, 2], names=None).to_parquet(str(tmp_path / "train.parquet"))
    table([40], [1], names=None).to_parquet(str(tmp_path / "validation.parquet"))
    config = HFDatasetConfig(path=str(Path(tmp_path)), batch_size=3, image_size=SIZE, num_threads=0)
    assert config.build("train", seed=0).classes == ["0", "1", "2"]
    assert next(iter(config.build("val", seed=0)))["label"].tolist() == [1]


def test_shards_written_with_other_integer_widths_are_one_split(tmp_path):
    """Shards written by two tools (int64 and int32 labels) stopped the run with pyarrow's multi-line
    'Schema at index 1 was different'; they are one table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for k, kind in enumerate((pa.int64(), pa.int32())):
        rows = {"image": [png(10 + 30 * k + 10 * j) for j in range(3)], "label": pa.array([0, 1, 2], kind)}
        pq.write_table(pa.table(rows), tmp_path / f"train-{k}.parquet")
    pq.write_table(pa.table({"image": [png(100)], "label": [1]}), tmp_path / "validation-0.parquet")
    config = HFDatasetConfig(path=str(tmp_path), batch_size=6, image_size=SIZE, num_threads=0)
    assert levels_of(config, "train") == [10, 20, 30, 40, 50, 60]
    pq.write_table(pa.table({"image": [png(0)], "label": ["ant"]}), tmp_path / "train-2.parquet")
    with pytest.raises(ValueError, match=r"the train files .*train-0.parquet and .*train-2.parquet hold the same "
                                         r"columns as other types: label \(int64 vs string\); convert them"):
        config.build("train", seed=0)


def test_a_git_lfs_pointer_or_a_damaged_table_is_one_line_naming_the_file(tmp_path):
    """A Hub repository cloned without git lfs holds pointers named .parquet: pyarrow said 'Parquet magic bytes
    not found in footer', not what the file was nor the fix; a save_to_disk folder of them, 'Expected to read
    1936876918 metadata bytes, but only read 59', naming no file."""
    (tmp_path / "data").mkdir()
    pointer = tmp_path / "data" / "train-00000-of-00001.parquet"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 4096\n")
    config = HFDatasetConfig(path=str(tmp_path), batch_size=1, image_size=SIZE)
    with pytest.raises(ValueError, match=r"cannot read .*train-00000-of-00001.parquet: it is a Git LFS pointer.*git lfs pull"):
        config.build("train", seed=0)
    pointer.write_bytes(b"PAR1 not a table")
    with pytest.raises(ValueError, match=r"cannot read .*train-00000-of-00001.parquet \(.*\); replace or delete it"):
        config.build("train", seed=0)
    pointer.unlink()
    table([10, 20, 30], [0, 1, 2]).save_to_disk(str(tmp_path / "saved"))
    for arrow in (tmp_path / "saved").glob("*.arrow"):
        arrow.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 4096\n")
    config = HFDatasetConfig(path=str(tmp_path / "saved"), batch_size=1, image_size=SIZE)
    with pytest.raises(ValueError, match=r"cannot read .*data-00000-of-00001.arrow: it is a Git LFS pointer"):
        config.build("train", seed=0)


def test_class_names_spelled_decomposed_in_one_split_are_the_composed_ones_of_another(tmp_path):
    """'café' typed on a Mac ('e' + a combining accent) in train and on Linux in validation: the run stopped
    with 'the val split has classes unknown to the train split: ['café']', names that print alike."""
    import unicodedata

    for split, form, levels in (("train", "NFD", [10, 20, 30, 40]), ("validation", "NFC", [100, 110])):
        names = [unicodedata.normalize(form, n) for n in ("café", "thé")]
        rows = {"image": [png(v) for v in levels], "label": [names[k % 2] for k in range(len(levels))]}
        datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / f"{split}.parquet"))
    config = HFDatasetConfig(path=str(tmp_path), batch_size=2, image_size=SIZE, num_threads=0)
    val = config.build("val", seed=0)
    assert val.classes == ["caf\u00e9", "th\u00e9"] and next(iter(val))["label"].tolist() == [0, 1]
