"""Image folders: listing, labels, splits, decoding, threads, resume, errors, prepare."""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from craft.data import DATASETS, ImageFolderConfig, ShapesConfig
from craft.data import images as images_module
from craft.data.augment import AugmentConfig
from craft.data.listing import list_images

SIZE = 6


def solid(path: Path, value: int, *, mode: str = "RGB", size: int = SIZE) -> Path:
    """A ``size`` square image of gray level ``value`` in Pillow ``mode``: ``value`` identifies the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (size, size), (value, value, value))
    if mode == "P":
        image = image.quantize(colors=4)
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path)
    return path


def values(batch: dict) -> list[int]:
    """The gray level of each image of a batch (normalized with mean = std = 0.5)."""
    pixels = (batch["image"] * 127.5 + 127.5).round().to(torch.int64)
    assert (pixels == pixels[:, :1, :1, :1]).all(), "images should be solid"
    return pixels[:, 0, 0, 0].tolist()


def all_values(batches) -> list[int]:
    return [v for b in batches for v in values(b)]


def folder_tree(root: Path, counts: dict[str, int], start: int = 10) -> dict[int, str]:
    """``root/<class>/<class>_<k>.png`` with distinct gray levels; returns level -> class."""
    level, classes = start, {}
    for name, count in counts.items():
        for k in range(count):
            solid(root / name / f"{name}_{k}.png", level)
            classes[level] = name
            level += 3
    return classes


def config(path: Path, **changes) -> ImageFolderConfig:
    return ImageFolderConfig(path=str(path), **{"batch_size": 4, "image_size": SIZE, **changes})


def take(ds, n: int) -> list[dict]:
    return [next(ds) for _ in range(n)]


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("image", "label"))


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> tuple[Path, dict[int, str], dict[int, str]]:
    """``root/train`` (3 classes, 22 images) and ``root/val`` (2 classes, 5 images)."""
    root = tmp_path_factory.mktemp("splits")
    train = folder_tree(root / "train", {"dog": 8, "cat": 7, "emu": 7})
    val = folder_tree(root / "val", {"cat": 2, "dog": 3}, start=100)
    return root, train, val


PER_EPOCH = 22 // 4  # 5


@functools.cache
def reference(root: Path) -> list[dict]:
    return take(config(root).build("train", seed=0), 3 * PER_EPOCH + 3)


def test_registered():
    assert DATASETS["image_folder"] is ImageFolderConfig


def test_labels_from_folders_sorted_and_shared_by_train_and_val(splits):
    root, train, val = splits
    ds = config(root).build("train", seed=0)
    assert ds.classes == ["cat", "dog", "emu"] and ds.num_classes == 3 and ds.batch_size == 4
    for batch in take(ds, 2 * PER_EPOCH):
        assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["image"].dtype == torch.float32
        assert batch["label"].dtype == torch.int64
        assert [ds.classes[k] for k in batch["label"].tolist()] == [train[v] for v in values(batch)]
    vds = config(root).build("val", seed=0)
    assert vds.classes == ds.classes  # the val split has no emu, labels still index the train list
    batches = list(vds)
    assert sorted(all_values(batches)) == sorted(val)
    assert [vds.classes[k] for b in batches for k in b["label"].tolist()] == [val[v] for v in all_values(batches)]


def test_labels_from_prefixes(tmp_path):
    for k, name in enumerate(["zebra_01.png", "ant_x_2.png", "ant_1.jpg", "zebra_02.png", "bee_1.png", "ant_3.png"]):
        solid(tmp_path / "flat" / name, 40 * k)
    ds = config(tmp_path / "flat", labels="prefix", batch_size=2, val_fraction=0.0, cache=True)
    train = ds.build("train", seed=0)
    assert train.classes == ["ant", "bee", "zebra"]
    by_level = {0: "zebra", 40: "ant", 80: "ant", 120: "zebra", 160: "bee", 200: "ant"}
    for batch in take(train, 3):
        got = values(batch)
        # the JPEG is lossy: compare its label by the nearest level
        got = [min(by_level, key=lambda v: abs(v - g)) for g in got]
        assert [train.classes[k] for k in batch["label"].tolist()] == [by_level[v] for v in got]


def test_val_fraction_split_is_per_class_disjoint_stable_and_not_the_run_seed(tmp_path):
    levels = folder_tree(tmp_path / "all", {"a": 10, "b": 10, "c": 1})
    cfg = config(tmp_path / "all", batch_size=1, val_fraction=0.2)
    val = all_values(cfg.build("val", seed=0))
    assert sorted(val) == sorted(set(val)) and len(val) == 4  # 2 of a, 2 of b, c's only file stays in train
    assert sorted(levels[v] for v in val) == ["a", "a", "b", "b"]
    train = cfg.build("train", seed=0)
    seen = set(all_values(take(train, train.batches_per_epoch)))
    assert seen | set(val) == set(levels) and not seen & set(val)
    assert all_values(cfg.build("val", seed=7)) == val  # the run's seed does not move the split
    assert all_values(attrs.evolve(cfg, data_seed=1).build("val", seed=0)) != val


def test_val_path_and_val_iteration_covers_every_file_once(tmp_path):
    folder_tree(tmp_path / "tr", {"x": 4, "y": 4})
    val = folder_tree(tmp_path / "elsewhere", {"y": 5, "x": 6}, start=100)
    ds = config(tmp_path / "tr", val_path=str(tmp_path / "elsewhere"), batch_size=4).build("val", seed=0)
    assert len(ds) == 3 and ds.num_examples == 11
    batches = list(ds)
    assert [len(b["label"]) for b in batches] == [4, 4, 3]
    assert sorted(all_values(batches)) == sorted(val)
    assert same(list(ds), batches)  # re-iterable, fixed order
    cfg = config(tmp_path / "tr", val_path=str(tmp_path / "elsewhere"))
    shards = [cfg.build("val", seed=0, rank=r, world_size=2) for r in range(2)]
    assert sorted(all_values(shards[0]) + all_values(shards[1])) == sorted(val)


def test_val_path_beside_a_folder_with_train_and_val_trains_on_its_train(tmp_path):
    """`craft evaluate RUN --data.val_path=X` on a run whose data.path holds train/ and val/."""
    train = folder_tree(tmp_path / "d" / "train", {"x": 3, "y": 3})
    folder_tree(tmp_path / "d" / "val", {"x": 2, "y": 2}, start=50)
    test = folder_tree(tmp_path / "test", {"x": 2, "y": 1}, start=100)
    cfg = config(tmp_path / "d", val_path=str(tmp_path / "test"), batch_size=2)
    assert sorted(all_values(cfg.build("val", seed=0))) == sorted(test)
    built = cfg.build("train", seed=0)
    assert built.classes == ["x", "y"] and set(all_values(take(built, built.batches_per_epoch))) <= set(train)


@pytest.mark.parametrize("channels", [1, 3])
def test_mixed_modes_and_sizes_become_the_configured_channels(tmp_path, channels):
    modes = {"gray.png": "L", "rgba.png": "RGBA", "palette.png": "P", "rgb.png": "RGB", "gray.jpg": "L", "la.png": "LA"}
    for k, (name, mode) in enumerate(modes.items()):
        solid(tmp_path / "c" / name, 30 + 40 * k, mode=mode, size=SIZE + 4 * (k % 2))
    ds = config(tmp_path, batch_size=6, channels=channels, val_fraction=0.0).build("train", seed=0)
    batch = next(ds)
    assert batch["image"].shape == (6, channels, SIZE, SIZE)
    got = sorted(values(batch))
    want = sorted(30 + 40 * k for k in range(len(modes)))
    assert all(abs(g - w) <= 3 for g, w in zip(got, want)), (got, want)  # JPEG is lossy, palettes quantize


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path):
    path = tmp_path / "c" / "deep.png"
    path.parent.mkdir()
    Image.new("I;16", (SIZE, SIZE), 257 * 200).save(path)
    ds = config(tmp_path, batch_size=1, val_fraction=0.0).build("train", seed=0)
    assert values(next(ds)) == [200]


def test_same_seed_same_batches_other_seed_other_order(splits):
    root = splits[0]
    assert same(take(config(root).build("train", seed=0), 6), reference(root)[:6])
    assert not same(take(config(root).build("train", seed=1), 6), reference(root)[:6])


@pytest.mark.parametrize("changes", [{"num_threads": 0}, {"cache": True}, {"num_threads": 3, "prefetch": 1}])
def test_threads_and_cache_do_not_change_the_batches(splits, changes):
    root = splits[0]
    n = 2 * PER_EPOCH + 1
    assert same(take(config(root, **changes).build("train", seed=0), n), reference(root)[:n])


@settings(max_examples=20)
@given(stop=st.integers(0, 3 * PER_EPOCH))
def test_resume_is_exact_with_prefetched_batches_in_flight(splits, stop):
    root = splits[0]
    ds = config(root).build("train", seed=0)
    take(ds, stop)
    state = ds.state_dict()
    assert state == {"epoch": stop // PER_EPOCH, "index": stop % PER_EPOCH}
    ds.load_state_dict({"epoch": 0, "index": 0})  # throw the prefetched batches away, twice
    ds.load_state_dict(state)
    assert same(take(ds, 3), reference(root)[stop : stop + 3])
    ds.close()


def test_ranks_split_every_global_batch(splits):
    root = splits[0]
    ranks = [config(root).build("train", seed=0, rank=r, world_size=2) for r in range(2)]
    for step in range(PER_EPOCH + 1):
        parts = [next(ds) for ds in ranks]
        assert torch.equal(torch.cat([p["image"] for p in parts]), reference(root)[step]["image"])
        assert not set(values(parts[0])) & set(values(parts[1]))
    with pytest.raises(ValueError, match=r"batch_size=4.*world_size=3"):
        config(root).build("train", seed=0, rank=0, world_size=3)


# -- errors -------------------------------------------------------------------


def test_missing_path_suggests_prepare(tmp_path):
    # Pointing at the user's own folder first: a mistyped path is likelier than wanting synthetic shapes.
    with pytest.raises(FileNotFoundError, match=r"nope does not exist; point it at a folder of images, or for craft's "
                       r"synthetic shapes there, run `craft prepare shapes .*nope` or set prepare = \"shapes\""):
        config(tmp_path / "nope").build("train", seed=0)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no images \(.jpg, .jpeg, .png\) in .*empty"):
        config(tmp_path / "empty").build("train", seed=0)


def test_class_folder_without_images(tmp_path):
    folder_tree(tmp_path, {"cat": 4})
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"class folder .*dog has no images"):
        config(tmp_path).build("train", seed=0)


def test_loose_images_without_class_folders_point_to_prefix(tmp_path):
    solid(tmp_path / "cat_1.png", 5)
    with pytest.raises(ValueError, match=r"no class folders.*labels = \"prefix\""):
        config(tmp_path).build("train", seed=0)


def test_prefix_labels_need_an_underscore(tmp_path):
    solid(tmp_path / "a" / "one.png", 5)
    solid(tmp_path / "a" / "two.png", 9)
    with pytest.raises(ValueError, match=r"no image in .* has a class prefix.*cat_001.jpg"):
        config(tmp_path / "a", labels="prefix").build("train", seed=0)
    solid(tmp_path / "a" / "cat_3.png", 9)
    with pytest.raises(ValueError, match=r"2 of 3 images .* no class prefix, e.g. .*one.png"):
        config(tmp_path / "a", labels="prefix").build("train", seed=0)


def test_corrupt_image_names_the_file(tmp_path):
    folder_tree(tmp_path, {"cat": 3})
    (tmp_path / "cat" / "cat_9.png").write_bytes(b"\x89PNG not really")
    ds = config(tmp_path, batch_size=4, val_fraction=0.0).build("train", seed=0)
    with pytest.raises(ValueError, match=r"cannot decode image .*cat_9.png"):
        next(ds)
    with pytest.raises(ValueError, match=r"cat_9.png"):  # and again: the position did not move
        next(ds)
    assert ds.state_dict() == {"epoch": 0, "index": 0}


def test_val_classes_unknown_to_train(tmp_path):
    folder_tree(tmp_path / "train", {"cat": 2, "dog": 2})
    folder_tree(tmp_path / "val", {"cat": 1, "owl": 1})
    cfg = config(tmp_path, batch_size=2)
    cfg.build("train", seed=0)  # the train split alone is fine
    with pytest.raises(ValueError, match=r"val images in .*val have classes unknown to the train split: \['owl'\]"):
        cfg.build("val", seed=0)


@pytest.mark.parametrize("labels", ["folders", "prefix"])
def test_a_class_spelled_decomposed_by_macos_is_the_class_spelled_composed_elsewhere(tmp_path, labels):
    """A train folder copied from a Mac names 'café' as 'cafe' + a combining accent; the val folder made on
    Linux, with the composed 'é'. The run stopped: 'val images have classes unknown to the train split: ['café']'."""
    import unicodedata

    for split, form, start in (("train", "NFD", 10), ("val", "NFC", 100)):
        counts = {unicodedata.normalize(form, name): 2 for name in ("café", "thé")}
        if labels == "folders":
            folder_tree(tmp_path / split, counts, start=start)
        else:
            for k, name in enumerate(n for n in counts for _ in range(2)):
                solid(tmp_path / split / f"{name}_{k}.png", start + 3 * k)
    cfg = config(tmp_path, batch_size=2, labels=labels)
    train, val = cfg.build("train", seed=0), cfg.build("val", seed=0)
    assert train.classes == val.classes == ["caf\u00e9", "th\u00e9"]
    labelled = {v: y for b in val for v, y in zip(values(b), b["label"].tolist())}
    assert labelled == {100: 0, 103: 0, 106: 1, 109: 1}


def test_missing_val_path_and_empty_val_split(tmp_path):
    folder_tree(tmp_path / "d", {"cat": 4})
    with pytest.raises(FileNotFoundError, match=r"val_path .*gone"):
        config(tmp_path / "d", val_path=str(tmp_path / "gone")).build("train", seed=0)
    with pytest.raises(ValueError, match=r"val split .* is empty \(data.val_fraction = 0\); set data.val_fraction > 0"):
        config(tmp_path / "d", val_fraction=0.0).build("val", seed=0)


@pytest.mark.parametrize(
    "counts, fraction, match",
    [
        ({"a": 5, "b": 5}, 0.1, (r"data.val_fraction = 0.1 of 5 images per class rounds to 0 images; "
                                 r"set data.val_fraction >= 0.11, add .*val, or set data.val_path")),
        ({"a": 3, "b": 2}, 0.1, (r"data.val_fraction = 0.1 of at most 3 images per class rounds to 0 images; "
                                 r"set data.val_fraction >= 0.17")),
        ({"a": 1, "b": 1}, 0.5, r"each class has one image, which stays in train; add .*val, or set data.val_path"),
    ],
)  # fmt: skip
def test_a_val_fraction_that_rounds_to_no_image_names_the_least_that_holds_one_out(tmp_path, counts, fraction, match):
    folder_tree(tmp_path / "d", counts)
    with pytest.raises(ValueError, match=rf"the val split of .*d is empty: {match}"):
        config(tmp_path / "d", val_fraction=fraction).build("val", seed=0)
    if "images per class" in match:  # the fraction named holds one out
        least = float(match.split(">= ")[1].split(",")[0])
        assert config(tmp_path / "d", val_fraction=least).build("val", seed=0).num_examples >= 1


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"labels": "suffix"}, "must be one of 'folders', 'prefix', got 'suffix'"),
        ({"prepare": "mnist"}, "must be one of None, 'shapes'"),
        ({"val_fraction": 1.0}, r"must be in \[0, 1\)"),
        ({"channels": 4}, "must be 1 \\(grayscale\\) or 3"),
        ({"num_threads": -1}, "must be >= 0"),
        ({"channels": 1, "mean": [0.4, 0.5, 0.6]}, r"needs 1 or 1 \(channels\) values"),
        ({"image_size": 1}, "must be >= 2, got 1"),  # torchvision's antialiased resize to 1 pixel fails
        ({"image_size": 100_000}, r"100000 x 100000 = 10,000,000,000 pixels is over 89,478,485 \(Pillow's limit\)"),
    ],
)
def test_config_errors(tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        config(tmp_path, **changes)


# -- prepare = "shapes" -----------------------------------------------------------


def test_prepare_shapes_writes_the_folder_once_then_reuses_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(images_module, "PREPARED_SHAPES", {"num_train": 20, "num_val": 10})
    writes = []
    real = images_module.write_shapes_folder
    monkeypatch.setattr(images_module, "write_shapes_folder", lambda *a, **k: writes.append(a) or real(*a, **k))
    root = tmp_path / "data" / "shapes"
    cfg = config(root, prepare="shapes", image_size=8, batch_size=5)
    train = cfg.build("train", seed=0)
    assert len(writes) == 1 and train.num_examples == 20 and train.num_classes == 7
    # A mistyped data.path would get synthetic images: the line says the folder was missing, and what to do.
    assert capsys.readouterr().err == (
        f'craft: data.path {root} does not exist: prepare = "shapes" writes 30 synthetic shapes images there (once; '
        "later runs reuse them); to train on your own images, fix data.path and unset prepare (--data.prepare=None)\n"
    )
    assert next(train)["image"].shape == (5, 3, 8, 8)
    val = cfg.build("val", seed=0)
    assert len(writes) == 1 and val.num_examples == 10  # reused: the folder's own train/val split
    (root / "train" / "star" / "star_05.png").unlink()
    assert cfg.build("train", seed=0).num_examples == 19  # never rewritten over existing data

    (tmp_path / "empty").mkdir()
    config(tmp_path / "empty", prepare="shapes", image_size=8, batch_size=5).build("val", seed=0)
    assert len(writes) == 2 and len(list((tmp_path / "empty").rglob("*.png"))) == 30
    assert f"data.path {tmp_path / 'empty'} is an empty folder: prepare" in capsys.readouterr().err


def test_prepare_reuses_a_folder_another_process_finished_first(tmp_path, monkeypatch):
    def other_rank_won(root, **kwargs):
        folder_tree(Path(root) / "train", {"cat": 4})
        folder_tree(Path(root) / "val", {"cat": 1}, start=100)
        raise FileExistsError(f"{root} appeared while it was being written")

    monkeypatch.setattr(images_module, "write_shapes_folder", other_rank_won)
    assert config(tmp_path / "shared", prepare="shapes").build("val", seed=0).num_examples == 1


def test_decoding_runs_in_background_threads(splits, monkeypatch):
    threads = []
    real = images_module.load_images

    def spy(paths, **kwargs):
        threads.append(threading.current_thread().name)
        return real(paths, **kwargs)

    monkeypatch.setattr(images_module, "load_images", spy)
    ds = config(splits[0], prefetch=3).build("train", seed=0)
    take(ds, 2)
    ds.close()
    assert len(threads) >= 2 and all(name.startswith("craft-data-train") for name in threads)


@pytest.mark.parametrize("cls", [ImageFolderConfig, ShapesConfig])
def test_config_fields_are_plain_toml_types(cls):
    # [data.augment] is a table (an attrs record) whose own keys are plain TOML types.
    allowed = {bool, int, float, str, list[str], list[float], str | None, AugmentConfig | None}
    types = attrs.resolve_types(cls)
    assert {f.name: f.type for f in attrs.fields(types) if f.type not in allowed} == {}


def test_images_beside_the_class_folders_are_counted_and_named_when_too_few_remain(tmp_path):
    for k in range(5):
        Image.new("RGB", (4, 4), (k, k, k)).save(tmp_path / f"loose_{k}.png")
    (tmp_path / "only").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "only" / "x.png")
    (tmp_path / "README.md").write_text("not counted: not an image")
    listing = list_images(tmp_path)
    assert listing.files == [str(tmp_path / "only" / "x.png")]
    assert listing.left_out == {"images beside the class folders": 5}
    config = ImageFolderConfig(path=str(tmp_path), batch_size=4, image_size=4, val_fraction=0.0)
    with pytest.raises(ValueError, match=r"has 1 example, fewer than one batch .*\(1 image in .*; left out 5 images beside the class"):
        config.build("train", seed=0)


@pytest.mark.parametrize("name", ["validation", "valid"])
def test_a_val_folder_named_validation_or_valid_is_the_val_split(tmp_path, name):
    for split, count in (("train", 3), (name, 2)):
        for k in range(count):
            solid(tmp_path / split / "cat" / f"{k}.png", k)
            solid(tmp_path / split / "dog" / f"{k}.png", 100 + k)
    config = ImageFolderConfig(path=str(tmp_path), batch_size=2, image_size=SIZE, num_threads=0)
    train, val = config.build("train", seed=0), config.build("val", seed=0)
    assert (train.num_examples, val.num_examples) == (6, 4)
    assert val.summary.startswith(f"4 images in {tmp_path / name} ")


@pytest.mark.parametrize("train_name, val_name", [("Train", "Validation"), ("TRAIN", "VAL"), ("training", "valid")])
def test_split_folders_named_in_another_case_or_training_are_the_splits(tmp_path, train_name, val_name):
    """Kaggle exports name them Train/ and Validation/: they were read as two classes, 'Train' and 'Validation'."""
    folder_tree(tmp_path / train_name, {"cat": 3, "dog": 3})
    folder_tree(tmp_path / val_name, {"cat": 1, "dog": 1}, start=100)
    cfg = config(tmp_path, batch_size=2)
    train, val = cfg.build("train", seed=0), cfg.build("val", seed=0)
    assert train.classes == val.classes == ["cat", "dog"]
    assert (train.num_examples, val.num_examples) == (6, 2) and sorted(all_values(val)) == [100, 103]


def test_a_training_and_a_testing_folder_train_on_training_and_never_read_testing(tmp_path):
    """A Training/ and Testing/ folder (no val): they were two classes; now a fraction of Training is val."""
    folder_tree(tmp_path / "Training", {"cat": 4, "dog": 4})
    folder_tree(tmp_path / "Testing", {"cat": 2, "dog": 2}, start=200)
    cfg = config(tmp_path, batch_size=2, val_fraction=0.25)
    train, val = cfg.build("train", seed=0), cfg.build("val", seed=0)
    assert train.classes == ["cat", "dog"] and (train.num_examples, val.num_examples) == (6, 2)
    assert max(all_values(val)) < 200 and val.summary.startswith(f"2 images in {tmp_path / 'Training'} ")


@pytest.mark.parametrize("names", [("training_set", "test_set"), ("seg_pred", "seg_test", "seg_train")])
def test_class_folders_that_name_splits_are_refused_not_learned_as_classes(tmp_path, names):
    """training_set/ and test_set/ (a Kaggle layout) under data.path became two classes: the model learned
    which split an image came from, and the run said nothing."""
    for k, name in enumerate(names):
        folder_tree(tmp_path / name / "cat", {"a": 2}, start=10 + 10 * k)
    train_name = next(n for n in names if "train" in n)
    with pytest.raises(ValueError, match=rf"the class folders of {tmp_path} name splits, not classes \(.*test.*\): "
                                         rf"point data.path at the train folder \({tmp_path / train_name}\)"):
        config(tmp_path, batch_size=2).build("train", seed=0)


def test_a_val_path_that_holds_split_folders_is_told_to_point_at_one_of_them(tmp_path):
    """data.val_path=FOLDER with FOLDER/train and FOLDER/val was told to "point data.path at the train folder ...
    or rename them train/ and val/": named so already, and the fix is data.val_path=FOLDER/val."""
    folder_tree(tmp_path / "data" / "cat", {"a": 2})
    for split in ("train", "val"):
        folder_tree(tmp_path / "other" / split, {"cat": 2})
    with pytest.raises(ValueError, match=rf"^data.val_path {tmp_path / 'other'} holds split folders \(train, val\), not "
                                         rf"class folders: point data.val_path at one split's folder \({tmp_path / 'other' / 'val'}\)$"):
        config(tmp_path / "data", batch_size=2, val_path=str(tmp_path / "other")).build("val", seed=0)


def test_what_a_single_folder_left_out_is_said_once_not_per_split(tmp_path):
    """Split by val_fraction, both the train and the val line said "left out 1 file without a suffix"."""
    folder_tree(tmp_path, {"cat": 4, "dog": 4})
    (tmp_path / "cat" / "README").write_text("not an image")
    cfg = config(tmp_path, batch_size=2, val_fraction=0.25)
    train, val = cfg.build("train", seed=0), cfg.build("val", seed=0)
    assert train.summary.endswith("; left out 1 file without a suffix") and "left out" not in val.summary


def test_a_few_classes_whose_names_hold_split_words_are_classes(tmp_path):
    folder_tree(tmp_path, {"Training_Shoes": 1, "Test_Tube": 1, "Boots": 1, "Vase": 1, "Lamp": 1})
    assert config(tmp_path, batch_size=2, val_fraction=0.0).build("train", seed=0).classes == [
        "Boots", "Lamp", "Test_Tube", "Training_Shoes", "Vase"
    ]


def test_split_folders_inside_each_class_folder_are_refused_not_read_whole(tmp_path):
    """root/cat/train/ and root/cat/val/: both were read as class 'cat', so the val images were trained on."""
    for name in ("cat", "dog"):
        folder_tree(tmp_path / name, {"train": 2, "val": 1})
    with pytest.raises(ValueError, match=rf"class folder {tmp_path / 'cat'} holds split folders \(train, val\).*"
                                         rf"arrange the images as {tmp_path}/train/<class> and {tmp_path}/val/<class>"):
        config(tmp_path, batch_size=2).build("train", seed=0)


def test_a_cache_larger_than_memory_can_hold_is_one_line():
    from craft.data.images import cache_store

    with pytest.raises(ValueError, match=r"data\.cache = true needs [\d,.]+ GiB for 10,000,000 images .*set data\.cache = false"):
        cache_store(10_000_000, 3, 100_000)  # 3e17 bytes: more than any address space
