"""craft prepare photos and data.prepare = "photos": a seeded, photo-like JPEG folder."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from conftest import run_cli
from craft.data import ImageFolderConfig
from craft.data.photos import PHOTO_CLASSES, render_photo, write_photos_folder


def test_prepare_photos_writes_a_balanced_jpeg_folder_from_the_cli(tmp_path):
    result = run_cli("prepare", "photos", str(tmp_path / "p"), "--num_train=14", "--num_val=7", "--image_size=48")
    assert result.returncode == 0, result.stderr[-2000:]
    train = sorted((tmp_path / "p" / "train").rglob("*.jpg"))
    assert Counter(f.parent.name for f in train) == {name: 2 for name in PHOTO_CLASSES}  # 14 in all, not per class
    assert train[0].read_bytes()[:3] == b"\xff\xd8\xff"
    batches = ImageFolderConfig(path=str(tmp_path / "p"), image_size=48, batch_size=7, num_threads=0)
    assert next(batches.build("train", seed=0))["image"].shape == (7, 3, 48, 48)


def test_photos_are_a_function_of_seed_split_and_index(tmp_path):
    same = [render_photo(3, seed=1, split="train", size=32) for _ in range(2)]
    assert same[0][0] == same[1][0] and same[0][1].tobytes() == same[1][1].tobytes()
    assert render_photo(3, seed=2, split="train", size=32)[1].tobytes() != same[0][1].tobytes()
    a, b = (write_photos_folder(tmp_path / n, num_train=7, num_val=0, image_size=32, seed=0) for n in "ab")
    files = lambda root: {p.relative_to(root): p.read_bytes() for p in Path(root).rglob("*.jpg")}  # noqa: E731
    assert files(a) == files(b)


def test_an_unknown_prepare_option_is_one_line_listing_every_option_and_the_closest(tmp_path):
    """It listed only num_train and num_val (not --image_size, --seed) and suggested none, unlike prepare tokens."""
    result = run_cli("prepare", "photos", str(tmp_path / "p"), "--seeed=3")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "error: craft prepare photos: unknown option --seeed (did you mean 'seed'?); "
        "options: --num_train, --num_val, --image_size, --seed"
    ]


@pytest.mark.parametrize("counts, problem", [
    (dict(num_train=3, num_val=7), "--num_train: must be >= 7, an image for each of the 7 classes, got 3"),
    (dict(num_train=14, num_val=0), "--num_val: must be >= 7, an image for each of the 7 classes, got 0"),
])
def test_prepare_photos_refuses_counts_that_leave_a_class_without_images(tmp_path, counts, problem):
    """--num_train=3 wrote 3 of the 7 classes (a run learnt 3 without a word), --num_val=3 a val of 3 classes."""
    from craft.cli import UsageError, prepare

    with pytest.raises(UsageError) as error:
        prepare("photos", str(tmp_path / "p"), image_size=16, **counts)
    assert str(error.value) == problem and len(PHOTO_CLASSES) == 7
    assert not (tmp_path / "p").exists()


def test_data_prepare_photos_writes_the_folder_on_first_use(tmp_path, monkeypatch):
    from craft.data import photos

    monkeypatch.setitem(photos.PREPARED_PHOTOS, "num_train", 14)
    monkeypatch.setitem(photos.PREPARED_PHOTOS, "num_val", 7)
    config = ImageFolderConfig(path=str(tmp_path / "photos"), prepare="photos", image_size=32, batch_size=7)
    ds = config.build("train", seed=0)
    assert ds.num_examples == 14 and ds.classes == sorted(PHOTO_CLASSES)
    assert len(list((tmp_path / "photos" / "val").rglob("*.jpg"))) == 7
    ds.close()


@pytest.mark.parametrize("what", ["photos", "shapes"])
def test_prepare_help_says_the_counts_are_totals_dealt_to_the_classes(what):
    result = run_cli("prepare", what, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "per class" not in text and "--num_train and --num_val are each split's total" in text
