"""[data.augment]: per-image random parameters, seeded by (seed, epoch, index); eval never augments."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import final_params, run_cli
from craft.data import ImageFolderConfig
from craft.data.augment import (
    AugmentConfig, ColorJitter, DeviceBatch, RandomResizedCrop, augment_image, draw_params, image_generator,
)
from craft.parts import to_device

SIZE = 16
AUGMENT = AugmentConfig(
    random_resized_crop=RandomResizedCrop(size=12, scale=[0.2, 1.0]),
    horizontal_flip=0.5,
    color_jitter=ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05),
)


def gradient(path: Path, offset: int) -> None:
    """A ``SIZE`` square image whose pixels all differ, so any two crops differ."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.arange(SIZE * SIZE * 3).reshape(SIZE, SIZE, 3)
    Image.fromarray(((x * 7 + offset) % 256).to(torch.uint8).numpy()).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("augment")
    for k in range(12):
        gradient(root / ("a" if k % 2 else "b") / f"{k}.png", 0)  # every image the same: only augmentation differs
    return root


def build(folder: Path, split: str = "train", **changes):
    options = {"path": str(folder), "batch_size": 6, "image_size": SIZE, "num_threads": 0, "augment": AUGMENT}
    return ImageFolderConfig(**{**options, **changes}).build(split, seed=3)


def test_every_image_of_a_batch_draws_its_own_crop(folder):
    images = next(build(folder))["image"]
    assert images.shape == (6, 3, 12, 12)
    distinct = {tuple(im.flatten().tolist()) for im in images}
    assert len(distinct) == 6  # one source image, six different augmentations
    boxes = {draw_params(AUGMENT, SIZE, image_generator(3, 0, i)).box for i in range(6)}
    assert len(boxes) > 1


def test_jitter_amounts_above_one_reach_factors_above_two_as_torchvision_allows():
    strong = AugmentConfig(color_jitter=ColorJitter(brightness=1.5, contrast=3.0))
    factors = [dict(draw_params(strong, SIZE, image_generator(0, 0, i)).jitter) for i in range(200)]
    brightness, contrast = [f["brightness"] for f in factors], [f["contrast"] for f in factors]
    assert 0 <= min(brightness) < 0.3 and 2.2 < max(brightness) <= 2.5  # [max(0, 1 - 1.5), 1 + 1.5]
    assert 0 <= min(contrast) and 3.5 < max(contrast) <= 4.0
    with pytest.raises(ValueError, match="must be >= 0"):
        ColorJitter(saturation=-0.1)


def test_parameters_are_a_function_of_seed_epoch_and_index():
    draw = lambda *key: draw_params(AUGMENT, SIZE, image_generator(*key))  # noqa: E731
    assert draw(0, 1, 5) == draw(0, 1, 5)
    assert len({draw(0, 1, 5), draw(1, 1, 5), draw(0, 2, 5), draw(0, 1, 6)}) == 4


def test_two_runs_with_one_seed_match_and_threads_change_nothing(folder):
    a = [next(ds) for ds in [build(folder)] for _ in range(3)]
    threaded = build(folder, num_threads=2)
    b = [next(threaded) for _ in range(3)]
    threaded.close()
    assert all(torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"]) for x, y in zip(a, b))


def test_a_resumed_iterator_augments_as_the_unbroken_one(folder):
    unbroken = build(folder, batch_size=2)  # 5 batches an epoch
    expected = [next(unbroken)["image"] for _ in range(8)]  # into epoch 1
    resumed = build(folder, batch_size=2)
    resumed.load_state_dict({"epoch": 0, "index": 3})
    assert all(torch.equal(next(resumed)["image"], e) for e in expected[3:])


def test_evaluation_never_augments(folder):
    val = list(build(folder, "val", val_fraction=0.5))
    plain = list(build(folder, "val", val_fraction=0.5, augment=None, image_size=SIZE))
    for a, b in zip(val, plain):
        centre = b["image"][:, :, 2:14, 2:14]  # resize (here: none), then the centre crop to 12
        assert torch.equal(a["image"], centre)
    assert torch.equal(list(build(folder, "val", val_fraction=0.5))[0]["image"], val[0]["image"])


def test_augmenting_on_the_device_gives_the_host_pixels(folder):
    host = next(build(folder))
    raw = next(build(folder, augment_on="device"))
    assert isinstance(raw, DeviceBatch) and raw["image"].dtype == torch.uint8
    moved = to_device(raw, torch.device("cpu"))
    assert torch.equal(moved["image"], host["image"]) and torch.equal(moved["label"], host["label"])


def test_gray_images_take_brightness_and_contrast_only():
    image = torch.arange(64, dtype=torch.uint8).reshape(1, 8, 8)
    params = draw_params(AUGMENT, 8, image_generator(0, 0, 0))
    assert augment_image(image, params, 6).shape == (1, 6, 6)


def test_a_crop_larger_than_the_decoded_image_is_one_line(tmp_path):
    toml = tmp_path / "big.toml"
    toml.write_text(
        'name = "big"\n[model]\nkind = "cnn"\n[data]\nkind = "image_folder"\npath = "x"\nimage_size = 16\n'
        "[data.augment]\nrandom_resized_crop = { size = 32 }\nhorizontal_flip = 2\n"
    )
    result = run_cli(str(toml), "--print_config")
    assert result.returncode == 2
    assert "data.augment.horizontal_flip: must be in [0, 1], got 2" in result.stderr
    assert "Traceback" not in result.stderr
    toml.write_text(toml.read_text().replace("horizontal_flip = 2", "horizontal_flip = 0.5"))
    result = run_cli(str(toml), "--print_config")
    assert result.returncode == 2 and "larger than data.image_size = 16" in result.stderr


def experiment(tmp_path: Path, folder: Path, steps: int) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    toml = tmp_path / "aug.toml"
    toml.write_text(
        f'name = "aug"\nseed = 1\nout_dir = "{tmp_path / "runs"}"\n'
        '[model]\nkind = "resnet"\nnum_classes = 2\nwidths = [4]\n'
        f'[data]\nkind = "image_folder"\npath = "{folder}"\nimage_size = {SIZE}\nbatch_size = 4\nval_fraction = 0.25\n'
        "[data.augment]\nrandom_resized_crop = { size = 12, scale = [0.3, 1.0] }\nhorizontal_flip = 0.5\n"
        "color_jitter = { brightness = 0.2, contrast = 0.2, saturation = 0.2 }\n"
        f'[optim]\nkind = "adamw"\nlr = 0.01\n[train]\nsteps = {steps}\neval_every = 3\nlog_every = 1\n'
        "checkpoint_every = 1\ncompile = false\n"
    )
    return toml


def test_a_stopped_and_resumed_augmented_run_is_bitwise_the_unbroken_one(tmp_path, folder):
    whole = run_cli(str(experiment(tmp_path / "whole", folder, 7)))
    assert whole.returncode == 0, whole.stderr[-2000:]
    first = run_cli(str(experiment(tmp_path / "parts", folder, 3)))
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_cli(str(experiment(tmp_path / "parts", folder, 7)), "--resume", "--train.steps=7")
    assert second.returncode == 0, second.stderr[-2000:]
    a, b = final_params(tmp_path / "whole" / "runs" / "aug"), final_params(tmp_path / "parts" / "runs" / "aug")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
