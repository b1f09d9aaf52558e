"""Synthetic shapes and the batch iterators they share with every dataset."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from craft.data import DATASETS, ShapesConfig, describe, render, write_shapes_folder
from craft.data import shapes as shapes_module
from craft.data.batching import epoch_order
from craft.data.shapes import COLOURS, POSITIONS, SHAPES, SIZES, image_tensor

SMALL = dict(num_train=30, num_val=11, image_size=12, batch_size=4, classes=["circle", "square", "star"])
PER_EPOCH = 30 // 4  # 7 batches; the last 2 examples of every epoch are dropped


def small(**changes) -> ShapesConfig:
    return ShapesConfig(**{**SMALL, **changes})


def take(ds, n: int) -> list[dict[str, torch.Tensor]]:
    return [next(ds) for _ in range(n)]


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("image", "label"))


@functools.cache
def reference(seed: int = 0, n: int = 3 * PER_EPOCH + 3) -> list[dict]:
    """An uninterrupted run's first ``n`` batches, across three epoch boundaries."""
    return take(small().build("train", seed=seed), n)


def test_registered():
    assert DATASETS["shapes"] is ShapesConfig


def test_train_batches_have_the_contract_shapes():
    ds = small().build("train", seed=0)
    assert iter(ds) is ds
    batch = next(ds)
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (4, 3, 12, 12)
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (4,)
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0  # mean = std = 0.5
    assert ds.classes == ["circle", "square", "star"] and ds.num_classes == 3 and ds.batch_size == 4
    assert 0 <= batch["label"].min() and batch["label"].max() < 3


def test_grayscale_and_class_subset_sorted():
    ds = small(channels=1, classes=["star", "arrow"]).build("val", seed=0)
    batch = next(iter(ds))
    assert batch["image"].shape == (4, 1, 12, 12)
    assert ds.classes == ["arrow", "star"]


def test_same_seed_same_batches_other_seed_other_order():
    assert same(take(small().build("train", seed=0), 5), reference()[:5])
    other = take(small().build("train", seed=1), 5)
    assert not same(other, reference()[:5])
    # data_seed changes the images themselves, the run's seed only their order
    first = lambda cfg: next(iter(cfg.build("val", seed=0)))["image"]  # noqa: E731
    assert not torch.equal(first(small(data_seed=1)), first(small()))


def test_each_epoch_is_a_fresh_permutation_of_all_but_the_remainder():
    ds = small().build("train", seed=0)
    seen = [torch.cat([ds.indices(epoch, i) for i in range(ds.batches_per_epoch)]) for epoch in range(3)]
    for indices in seen:
        assert len(indices.unique()) == PER_EPOCH * 4
    assert not torch.equal(seen[0], seen[1])
    # the order is a permutation, fixed by (seed, epoch) alone, and another epoch or seed reorders it
    order = epoch_order(30, 0, 2)
    assert order.dtype == torch.int64 and sorted(order.tolist()) == list(range(30))
    assert order.tolist() != list(range(30))
    assert torch.equal(epoch_order(30, 0, 2), order.clone())
    assert not torch.equal(epoch_order(30, 0, 3), order) and not torch.equal(epoch_order(30, 1, 2), order)
    labels = torch.cat([b["label"] for b in reference()[:PER_EPOCH]])
    assert sorted(labels.tolist()) == sorted((seen[0] % 3).tolist())


@settings(max_examples=25)
@given(stop=st.integers(0, 3 * PER_EPOCH))
def test_resume_is_exact_at_any_stop_point(stop):
    ds = small().build("train", seed=0)
    take(ds, stop)
    state = ds.state_dict()
    assert state == {"epoch": stop // PER_EPOCH, "index": stop % PER_EPOCH}
    resumed = small().build("train", seed=0)
    resumed.load_state_dict(state)
    assert same(take(resumed, 3), reference()[stop : stop + 3])


def test_load_state_dict_rewinds_and_rejects_foreign_positions():
    ds = small().build("train", seed=0)
    take(ds, 9)
    ds.load_state_dict({"epoch": 0, "index": 2})
    assert same(take(ds, 2), reference()[2:4])
    ds.load_state_dict({"epoch": 0, "index": PER_EPOCH})  # end of epoch 0 == start of epoch 1
    assert ds.state_dict() == {"epoch": 1, "index": 0}
    with pytest.raises(ValueError, match="does not fit"):
        ds.load_state_dict({"epoch": 0, "index": PER_EPOCH + 1})


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_get_disjoint_slices_whose_union_is_the_global_batch(world_size):
    ranks = [small().build("train", seed=0, rank=r, world_size=world_size) for r in range(world_size)]
    for step in range(PER_EPOCH + 2):
        parts = [next(ds) for ds in ranks]
        assert all(p["image"].shape[0] == 4 // world_size for p in parts)
        whole = reference()[step]
        assert torch.equal(torch.cat([p["image"] for p in parts]), whole["image"])
        assert torch.equal(torch.cat([p["label"] for p in parts]), whole["label"])
        indices = [ds.indices(*divmod(step, PER_EPOCH)) for ds in ranks]
        assert len(torch.cat(indices).unique()) == 4
    assert ranks[0].batch_size == 4 // world_size and ranks[0].global_batch_size == 4


def test_batch_size_must_divide_by_world_size():
    with pytest.raises(ValueError, match=r"batch_size=4.*world_size=3"):
        small().build("train", seed=0, rank=0, world_size=3)
    with pytest.raises(ValueError, match=r"batch_size=4.*world_size=3"):
        small().build("val", seed=0, rank=1, world_size=3)


def test_val_is_every_example_once_in_order_with_the_partial_batch():
    ds = small().build("val", seed=0)
    assert len(ds) == 3 and ds.num_examples == 11
    batches = list(ds)
    assert [len(b["label"]) for b in batches] == [4, 4, 3]
    assert torch.cat([b["label"] for b in batches]).tolist() == [i % 3 for i in range(11)]
    assert same(list(ds), batches)  # re-iterable, same order


def test_val_shards_cover_every_example_once():
    whole = torch.cat([b["image"] for b in small().build("val", seed=0)])
    ranks = [small().build("val", seed=0, rank=r, world_size=2) for r in range(2)]
    assert sum(ds.num_examples for ds in ranks) == 11
    per_batch = zip(*[list(ds) for ds in ranks])
    assert torch.equal(torch.cat([torch.cat([p["image"] for p in parts]) for parts in per_batch]), whole)


def test_train_split_smaller_than_a_batch_is_an_error():
    with pytest.raises(ValueError, match="fewer than one batch"):
        small(num_train=3).build("train", seed=0)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"classes": ["circle", "blob"]}, r"unknown shape\(s\) \['blob'\]; choose from \['arrow'"),
        ({"classes": []}, "unknown shape"),
        ({"channels": 2}, r"must be 1 \(grayscale\) or 3 \(RGB\), got 2"),
        ({"mean": [0.5, 0.5]}, r"needs 1 or 3 \(channels\) values"),
        ({"std": [0.0]}, "must be positive"),
        ({"num_val": -1}, "must be >= 0"),
    ],
)
def test_config_errors(changes, match):
    with pytest.raises(ValueError, match=match):
        small(**changes)


def test_empty_split():
    with pytest.raises(ValueError, match="the val split is empty: set data.num_val > 0"):
        small(num_val=0).build("val", seed=0)


def test_unknown_split():
    with pytest.raises(ValueError, match="'train' or 'val'"):
        small().build("test", seed=0)


def test_describe_is_deterministic_and_speaks_in_words():
    specs = [describe(i, seed=3, split="train") for i in range(40)]
    assert specs == [describe(i, seed=3, split="train") for i in range(40)]
    assert specs != [describe(i, seed=3, split="val") for i in range(40)]
    for i, spec in enumerate(specs):
        assert spec.shape == SHAPES[i % len(SHAPES)]
        assert spec.colour in COLOURS and spec.size in SIZES
        assert spec.position == POSITIONS[int(spec.y * 3)][int(spec.x * 3)]
        assert SIZES[spec.size][0] <= spec.radius <= SIZES[spec.size][1]
    assert len({s.colour for s in specs}) > 3 and len({s.position for s in specs}) > 3


def test_render_is_a_pure_function_of_the_spec():
    spec = describe(5, seed=0, split="train")
    a, b = render(spec, 32), render(spec, 32)
    assert a.size == (32, 32) and a.mode == "RGB" and a.tobytes() == b.tobytes()
    assert render(spec, 16, channels=1).mode == "L"
    # the dataset's images are these renders
    ds = ShapesConfig(num_val=8, batch_size=8).build("val", seed=0)
    pixels = torch.stack([image_tensor(render(describe(i, seed=0, split="val"), 32)) for i in range(8)])
    assert torch.allclose(next(iter(ds))["image"], pixels.float() / 127.5 - 1, atol=1e-6)


def test_write_shapes_folder_layout_and_pixels(tmp_path):
    classes = ["ring", "cross"]
    root = write_shapes_folder(tmp_path / "shapes", num_train=6, num_val=3, image_size=16, seed=0, classes=classes)
    assert sorted(p.name for p in (root / "train").iterdir()) == ["cross", "ring"]
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert files == [
        "train/cross/cross_0.png", "train/cross/cross_2.png", "train/cross/cross_4.png",
        "train/ring/ring_1.png", "train/ring/ring_3.png", "train/ring/ring_5.png",
        "val/cross/cross_0.png", "val/cross/cross_2.png", "val/ring/ring_1.png",
    ]  # fmt: skip
    written = Image.open(root / "val" / "ring" / "ring_1.png")
    expected = render(describe(1, seed=0, split="val", classes=classes), 16)
    assert written.tobytes() == expected.tobytes()  # PNG is lossless
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_write_shapes_folder_refuses_a_non_empty_folder_but_fills_an_empty_one(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_shapes_folder(tmp_path / "full", num_train=2, num_val=1, image_size=8, seed=0)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    write_shapes_folder(tmp_path / "empty", num_train=2, num_val=1, image_size=8, seed=0, format="jpg")
    assert len(list((tmp_path / "empty").rglob("*.jpg"))) == 3


def test_write_shapes_folder_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown shape"):
        write_shapes_folder(tmp_path / "a", num_train=1, num_val=1, image_size=8, seed=0, classes=["blob"])
    with pytest.raises(ValueError, match="'png' or 'jpg'"):
        write_shapes_folder(tmp_path / "a", num_train=1, num_val=1, image_size=8, seed=0, format="gif")
    assert not (tmp_path / "a").exists()


def test_interrupted_write_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    calls = []

    def failing(spec, image_size, channels=3):
        calls.append(spec)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return render(spec, image_size, channels)

    monkeypatch.setattr(shapes_module, "render", failing)
    with pytest.raises(KeyboardInterrupt):
        write_shapes_folder(tmp_path / "shapes", num_train=20, num_val=5, image_size=8, seed=0)
    assert list(tmp_path.iterdir()) == []


def test_prepare_shapes_lists_its_options_and_suggests_the_closest():
    """--seeed said only "known: ['num_train', 'num_val']", though --seed and --image_size are accepted too."""
    from craft.cli import UsageError, parse_command_line

    with pytest.raises(UsageError) as error:
        parse_command_line(["prepare", "shapes", "x", "--seeed=1"])
    assert str(error.value) == (
        "craft prepare shapes: unknown option --seeed (did you mean 'seed'?); "
        "options: --num_train, --num_val, --image_size, --seed"
    )


@pytest.mark.parametrize("counts, problem", [
    (dict(num_train=7, num_val=0), "--num_val: must be >= 7, an image for each of the 7 classes, got 0"),
    (dict(num_train=3), "--num_train: must be >= 7, an image for each of the 7 classes, got 3"),
])
def test_prepare_shapes_refuses_counts_that_leave_a_class_without_images(tmp_path, counts, problem):
    """Both exited 0 and the run on the folder failed later: 'class folder x10/val/arrow has no images'."""
    from craft.cli import UsageError, prepare

    assert len(SHAPES) == 7
    with pytest.raises(UsageError) as error:
        prepare("shapes", str(tmp_path / "x"), **counts)
    assert str(error.value) == problem
    assert not (tmp_path / "x").exists()
    prepare("shapes", str(tmp_path / "least"), num_train=7, num_val=7, image_size=8)  # the least that works
    assert {p.parent.name for p in (tmp_path / "least" / "val").rglob("*.png")} == set(SHAPES)
