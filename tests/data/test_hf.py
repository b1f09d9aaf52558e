"""[data] kind = "hf_dataset": save_to_disk folders and Parquet files, images and text, offline."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import ROOT, run_cli
from craft.data import HFDatasetConfig

datasets = pytest.importorskip("datasets")

SIZE = 8


def png(level: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), (level, 255 - level, level // 2)).save(buffer, format="PNG")
    return buffer.getvalue()


def image_rows(count: int, start: int = 0) -> dict:
    images = [{"bytes": png(3 * (start + k)), "path": None} for k in range(count)]
    return {"img": images, "y": [k % 3 for k in range(count)]}


@pytest.fixture(scope="module")
def saved_images(tmp_path_factory) -> Path:
    """A DatasetDict (train 24, validation 6) with an Image column and ClassLabel labels, save_to_disk."""
    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["ant", "bee", "cow"])})
    parts = {
        "train": datasets.Dataset.from_dict(image_rows(24), features=features),
        "validation": datasets.Dataset.from_dict(image_rows(6, start=40), features=features),
    }
    root = tmp_path_factory.mktemp("hf") / "images"
    datasets.DatasetDict(parts).save_to_disk(str(root))
    return root


@pytest.fixture(scope="module")
def parquet_text(tmp_path_factory) -> Path:
    """train-*.parquet with a text column, no val split (a seeded fraction is held out)."""
    root = tmp_path_factory.mktemp("hf") / "text"
    root.mkdir()
    lines = [f"the cat sat on mat number {k}." for k in range(60)]
    datasets.Dataset.from_dict({"text": lines}).to_parquet(str(root / "train-00000-of-00001.parquet"))
    return root


def test_images_use_the_datasets_own_splits_and_class_names(saved_images):
    config = HFDatasetConfig(path=str(saved_images), image_column="img", label_column="y", batch_size=4,
                             image_size=SIZE, num_threads=0)
    train, val = config.build("train", seed=0), config.build("val", seed=0)
    assert train.classes == ["ant", "bee", "cow"] and train.num_examples == 24 and val.num_examples == 6
    batch = next(train)
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["label"].dtype == torch.int64
    levels = sorted(round(float(b["image"][i, 0, 0, 0]) * 127.5 + 127.5) for b in val for i in range(len(b["label"])))
    assert levels == [3 * (40 + k) for k in range(6)]  # val rows, decoded to the pixels written


def test_a_seeded_fraction_is_held_out_per_class_and_shards_split_the_batch(saved_images):
    config = HFDatasetConfig(path=str(saved_images), image_column="img", label_column="y", batch_size=4,
                             image_size=SIZE, num_threads=0, val_split=None, val_fraction=0.25)
    train, val = config.build("train", seed=0), config.build("val", seed=0)
    assert (train.num_examples, val.num_examples) == (18, 6)
    whole = next(train)
    halves = [next(config.build("train", seed=0, rank=r, world_size=2)) for r in range(2)]
    assert torch.equal(torch.cat([h["image"] for h in halves]), whole["image"])


def test_a_resumed_iterator_continues_where_it_stopped(saved_images):
    config = HFDatasetConfig(path=str(saved_images), image_column="img", label_column="y", batch_size=4,
                             image_size=SIZE, num_threads=2)
    unbroken = config.build("train", seed=1)
    expected = [next(unbroken)["label"] for _ in range(9)]
    resumed = config.build("train", seed=1)
    resumed.load_state_dict({"epoch": 1, "index": 2})
    assert all(torch.equal(next(resumed)["label"], e) for e in expected[8:])
    unbroken.close(), resumed.close()


def test_a_missing_column_is_one_line_naming_the_columns(saved_images):
    with pytest.raises(ValueError, match=r"data.image_column = 'image' is not a column .* its columns: img, y"):
        HFDatasetConfig(path=str(saved_images), label_column="y").build("train", seed=0)


def experiment(tmp_path: Path, data: str, model: str, task: str = "") -> Path:
    toml = tmp_path / "hf.toml"
    toml.write_text(
        f'name = "hf"\nout_dir = "{tmp_path / "runs"}"\n{model}\n{data}\n{task}\n'
        '[optim]\nkind = "adamw"\nlr = 0.01\n[train]\nsteps = 3\neval_every = 3\nlog_every = 1\ncompile = false\n'
    )
    return toml


def test_an_image_dataset_trains_from_the_cli(tmp_path, saved_images):
    data = (f'[data]\nkind = "hf_dataset"\npath = "{saved_images}"\nimage_column = "img"\nlabel_column = "y"\n'
            f"image_size = {SIZE}\nbatch_size = 4\n[data.augment]\nhorizontal_flip = 0.5\n")
    result = run_cli(str(experiment(tmp_path, data, '[model]\nkind = "resnet"\nnum_classes = 3\nwidths = [4]')))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "val accuracy" in result.stdout + result.stderr


def test_a_text_dataset_trains_a_language_model_from_the_cli(tmp_path, parquet_text):
    data = f'[data]\nkind = "hf_dataset"\npath = "{parquet_text}"\ntext_column = "text"\n'
    data += "block_size = 16\nbatch_size = 4\n"
    model = '[model]\nkind = "gpt"\nblock_size = 16\nn_layer = 1\nn_head = 2\nn_embd = 16'
    result = run_cli(str(experiment(tmp_path, data, model, '[task]\nkind = "language_model"')))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "val loss" in result.stdout + result.stderr


def test_without_the_datasets_package_the_run_says_which_extra_to_install(tmp_path, saved_images):
    toml = experiment(tmp_path, f'[data]\nkind = "hf_dataset"\npath = "{saved_images}"', '[model]\nkind = "resnet"')
    code = (f"import sys; sys.modules['datasets'] = None; sys.argv = ['craft', {str(toml)!r}]; "
            "from craft.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 1
    assert "pip install 'craft[hf]'" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def parquet_of_paths(tmp_path_factory) -> Path:
    """train.parquet whose image column holds file paths relative to its folder, and labels 0.0, 1.0, 2.0
    (floats, as a pandas round trip leaves them)."""
    root = tmp_path_factory.mktemp("hf") / "paths"
    (root / "pics").mkdir(parents=True)
    for k in range(12):
        (root / "pics" / f"{k}.png").write_bytes(png(10 * k))
    rows = {"file": [f"pics/{k}.png" for k in range(12)], "y": [float(k % 3) for k in range(12)]}
    datasets.Dataset.from_dict(rows).to_parquet(str(root / "train.parquet"))
    return root


@pytest.mark.parametrize("where", ["folder", "file"])
def test_an_image_column_of_relative_file_paths_and_float_labels_is_read(parquet_of_paths, where):
    path = parquet_of_paths if where == "folder" else parquet_of_paths / "train.parquet"
    config = HFDatasetConfig(path=str(path), image_column="file", label_column="y", batch_size=12,
                             image_size=SIZE, num_threads=0, val_fraction=0.0)
    train = config.build("train", seed=0)
    assert train.classes == ["0", "1", "2"]
    batch = next(train)
    levels = sorted(round(float(v) * 127.5 + 127.5) for v in batch["image"][:, 0, 0, 0])
    assert levels == [10 * k for k in range(12)] and sorted(batch["label"].tolist()) == [0] * 4 + [1] * 4 + [2] * 4


def test_a_path_that_is_not_a_file_names_its_row(tmp_path):
    datasets.Dataset.from_dict({"image": ["gone.png", "gone.png"], "label": [0, 1]}).to_parquet(str(tmp_path / "t.parquet"))
    config = HFDatasetConfig(path=str(tmp_path), batch_size=1, image_size=SIZE, num_threads=0)
    with pytest.raises(ValueError, match=r"row \d of the image column names 'gone.png', which is not a file"):
        next(config.build("train", seed=0))


def test_labels_that_are_not_classes_are_named(tmp_path):
    rows = {"image": [{"bytes": png(k), "path": None} for k in range(2)], "label": [0.5, 1.0]}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "t.parquet"))
    with pytest.raises(ValueError, match=r"class numbers .* or class names, not 0\.5 \(float\)"):
        HFDatasetConfig(path=str(tmp_path), batch_size=1, image_size=SIZE).build("train", seed=0)


def test_a_val_split_the_dataset_lacks_is_an_error_unless_it_is_the_default(saved_images):
    options = dict(path=str(saved_images), image_column="img", label_column="y", batch_size=4, image_size=SIZE,
                   num_threads=0)
    with pytest.raises(ValueError, match=r"data.val_split = 'valid' is not a split of .*; its splits: train, validation"):
        HFDatasetConfig(**options, val_split="valid").build("val", seed=0)
    with pytest.raises(ValueError, match=r"data.train_split = 'training' is not a split"):
        HFDatasetConfig(**options, train_split="training").build("train", seed=0)
    own = HFDatasetConfig(**options).build("val", seed=0)
    assert own.summary == f"6 images in {saved_images} (split 'validation'), 3 classes"


def test_without_its_val_split_the_summary_says_a_fraction_of_train_is_held_out(parquet_of_paths):
    config = HFDatasetConfig(path=str(parquet_of_paths), image_column="file", label_column="y", batch_size=4,
                             image_size=SIZE, num_threads=0, val_fraction=0.25)
    train, val = config.build("train", seed=0), config.build("val", seed=0)
    assert train.summary.endswith("(split 'train' less the rows held out for val), 3 classes")
    assert val.summary.endswith("(0.25 of 'train' held out by data_seed = 0; no 'validation' split), 3 classes")


def test_a_text_dataset_read_as_images_points_to_text_column(parquet_text):
    with pytest.raises(ValueError, match=r"data.image_column = 'image' .* its columns: text; .*or data.text_column"):
        HFDatasetConfig(path=str(parquet_text)).build("train", seed=0)


@pytest.mark.parametrize("name, kind", [("n", "int64"), ("img", r"Image \(struct<bytes: binary"), ("y", r"ClassLabel \(int64\)")])
def test_a_text_column_that_is_not_text_is_one_line_naming_its_type(tmp_path, saved_images, name, kind):
    if name == "n":  # a column of numbers: its printed form is no corpus (0 was even dropped as empty)
        datasets.Dataset.from_dict({"n": [0, 1, 2], "words": ["a", "b", "c"]}).to_parquet(str(tmp_path / "t.parquet"))
    path, choices = (tmp_path, r"a column of strings \(words\), or") if name == "n" else (saved_images, "no column of strings:")
    with pytest.raises(ValueError, match=rf"data.text_column = '{name}' holds {kind}.*, not text; .*{choices}"):
        HFDatasetConfig(path=str(path), text_column=name, block_size=2, batch_size=1).build("train", seed=0)


def test_text_rows_that_are_missing_or_empty_are_skipped_and_no_other(tmp_path):
    rows = {"text": ["0", "", None, "False", " ", "ab"] * 8}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "train.parquet"))
    config = HFDatasetConfig(path=str(tmp_path), text_column="text", block_size=2, batch_size=1, val_fraction=0.5)
    counts = [int(config.build(split, seed=0).summary.split()[0]) for split in ("train", "val")]
    assert sum(counts) == len("0\nFalse\n \nab\n") * 8  # the characters of both splits: "0", "False", " " kept


def test_val_labels_unknown_to_train_are_the_ones_that_occur(tmp_path):
    for split, labels in (("train", [0, 1] * 4), ("validation", [0, 1, 5, 5])):
        rows = {"image": [{"bytes": png(k), "path": None} for k in range(len(labels))], "label": labels}
        datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / f"{split}-0.parquet"))
    with pytest.raises(ValueError, match=r"the val split has classes unknown to the train split: \['5'\];"):
        HFDatasetConfig(path=str(tmp_path), batch_size=1, image_size=SIZE).build("val", seed=0)


def test_an_empty_val_split_is_said_when_built_not_at_the_first_evaluation(parquet_of_paths, tmp_path):
    config = HFDatasetConfig(path=str(parquet_of_paths), image_column="file", label_column="y", batch_size=12,
                             image_size=SIZE, num_threads=0, val_fraction=0.0)
    with pytest.raises(ValueError, match=r"val split of .* is empty: data.val_fraction = 0 of 12 rows \(per class\) holds none out"):
        config.build("val", seed=0)
    datasets.Dataset.from_dict({"text": ["ab"] * 4}).to_parquet(str(tmp_path / "train-0.parquet"))
    datasets.Dataset.from_dict({"text": []}, features=datasets.Features({"text": datasets.Value("string")})).to_parquet(
        str(tmp_path / "validation-0.parquet"))
    with pytest.raises(ValueError, match="the 'validation' split of .* has no rows; give it rows, or name another split"):
        HFDatasetConfig(path=str(tmp_path), text_column="text", block_size=2, batch_size=1).build("val", seed=0)


def image_parquet(root: Path, split: str, labels: list) -> None:
    rows = {"image": [{"bytes": png(k), "path": None} for k in range(len(labels))], "label": labels}
    datasets.Dataset.from_dict(rows).to_parquet(str(root / f"{split}-0.parquet"))


def test_a_label_column_of_images_is_said_by_its_type_not_its_kilobytes(saved_images):
    """label_column pointed at the Image column printed a row's whole encoded PNG ({'bytes': b'\\x89PNG...'})."""
    with pytest.raises(ValueError) as raised:
        HFDatasetConfig(path=str(saved_images), image_column="img", label_column="img").build("train", seed=0)
    message = str(raised.value)
    assert message.startswith("data.label_column = 'img' holds Image (struct<bytes: binary, path: string>), not class "
                              "numbers or names; set data.label_column to the column of classes (its columns: img, y)")
    assert "PNG" not in message and len(message) < 300


def test_a_value_shown_in_a_label_error_is_cut_short():
    from craft.data.hf import labels_of

    class Rows:  # an Arrow column holds one type; a value of any length may still reach the message
        def to_pylist(self):
            return [0, b"\x89PNG" + bytes(5000)]

    with pytest.raises(ValueError, match=r"not b'\\x89PNG.*\.\.\. \(bytes\)") as raised:
        labels_of(Rows(), None)
    assert len(str(raised.value)) < 300


@pytest.mark.parametrize("has_validation", [True, False])
def test_unlabelled_rows_are_said_as_such_with_what_leaving_val_split_out_does(tmp_path, has_validation):
    """-1 is Hugging Face's "no label" (test splits): it was "must hold class numbers ... not -1 (int); set
    data.label_column to the column of classes", a fix that fixes nothing."""
    image_parquet(tmp_path, "train", [0, 1] * 4)
    image_parquet(tmp_path, "test", [-1] * 4)
    if has_validation:
        image_parquet(tmp_path, "validation", [0, 1])
    config = HFDatasetConfig(path=str(tmp_path), batch_size=1, image_size=SIZE, val_split="test")
    unset = ("leave data.val_split out to evaluate on split 'validation', or set it to None to hold out" if has_validation
             else r"leave data.val_split out \(or set it to None\) to hold out")
    with pytest.raises(ValueError, match=rf"^split 'test' of .* has unlabelled rows \(label -1, 4 of 4: .*\); name a "
                                         rf"labelled split as data.val_split, or {unset} data.val_fraction of 'train'$"):
        config.build("val", seed=0)


def test_a_mistyped_val_split_says_what_leaving_it_out_does_for_this_dataset(saved_images, tmp_path):
    """"leave it out to hold out data.val_fraction of train" was wrong where the dataset has a validation split."""
    options = dict(image_column="img", label_column="y", batch_size=4, image_size=SIZE, val_split="nope")
    with pytest.raises(ValueError, match=r"name one of them, or leave data.val_split out to evaluate on split "
                                         r"'validation', or set it to None to hold out data.val_fraction of 'train'$"):
        HFDatasetConfig(path=str(saved_images), **options).build("val", seed=0)
    image_parquet(tmp_path, "train", [0, 1] * 4)
    with pytest.raises(ValueError, match=r"leave data.val_split out \(or set it to None\) to hold out data.val_fraction"):
        HFDatasetConfig(path=str(tmp_path), **{**options, "image_column": "image", "label_column": "label"}).build("val", seed=0)


def test_integer_labels_with_gaps_say_which_classes_train_never_shows(tmp_path):
    """Labels 0, 5 and 9 are class numbers: 10 classes, 7 of which the run never sees; the data line says so."""
    image_parquet(tmp_path, "train", [0, 5, 9] * 4)
    config = HFDatasetConfig(path=str(tmp_path), batch_size=1, image_size=SIZE, val_fraction=0.25)
    train, val = config.build("train", seed=0), config.build("val", seed=0)
    assert train.classes == [str(k) for k in range(10)]
    assert train.summary.endswith("10 classes (7 of them with no example: '1', '2', '3', '4', '6', ... 7 in all)")
    assert val.summary.endswith(", 10 classes")
