"""``fingerprint()``: the same data gives the same digest on every rank; other data, another digest."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from craft.data import CaptionFolderConfig, ImageFolderConfig, ShapeCaptionsConfig, ShapesConfig, TextConfig


def solid(path: Path, value: int, size: int = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, value, value)).save(path)


def image_folder(root: Path) -> ImageFolderConfig:
    for k in range(4):
        solid(root / "a" / f"a_{k}.png", 10 + k)
        solid(root / "b" / f"b_{k}.png", 50 + k)
    return ImageFolderConfig(path=str(root), batch_size=4, image_size=4, val_fraction=0.0, num_threads=0)


def fingerprints(config, **build) -> tuple[str, ...]:
    """The train fingerprint as each of two ranks sees it, and with another seed."""
    ranks = [config.build("train", seed=0, rank=r, world_size=2).fingerprint() for r in range(2)]
    return (*ranks, config.build("train", seed=1).fingerprint())


def test_an_image_folder_is_fingerprinted_by_its_file_names_and_sizes(tmp_path):
    config = image_folder(tmp_path / "one")
    first = fingerprints(config)
    assert len(set(first)) == 1 and len(first[0]) == 16
    copy = image_folder(tmp_path / "two")  # the same files elsewhere: the same data
    assert copy.build("train", seed=0).fingerprint() == first[0]
    Image.effect_noise((4, 4), 60).convert("RGB").save(tmp_path / "two" / "b" / "b_3.png")  # one file's size changes
    assert (tmp_path / "two" / "b" / "b_3.png").stat().st_size != (tmp_path / "one" / "b" / "b_3.png").stat().st_size
    assert copy.build("train", seed=0).fingerprint() != first[0]
    (tmp_path / "one" / "a" / "a_3.png").rename(tmp_path / "one" / "a" / "a_9.png")  # one file renamed
    assert config.build("train", seed=0).fingerprint() != first[0]
    split = ImageFolderConfig(path=str(tmp_path / "one"), batch_size=2, image_size=4, val_fraction=0.5)
    assert split.build("val", seed=0).fingerprint() != split.build("train", seed=0).fingerprint()


def test_a_caption_folder_is_fingerprinted_by_its_files_and_captions(tmp_path):
    for k in range(4):
        solid(tmp_path / f"{k}.png", k)
    lines = [json.dumps({"image": f"{k}.png", "caption": f"picture {k}"}) for k in range(4)]
    (tmp_path / "captions.jsonl").write_text("\n".join(lines))
    config = CaptionFolderConfig(path=str(tmp_path), batch_size=2, image_size=4, val_fraction=0.25, num_threads=0)
    before = fingerprints(config)
    assert len(set(before)) == 1
    (tmp_path / "captions.jsonl").write_text("\n".join(lines).replace("picture 0", "photo 0"))
    assert config.build("train", seed=0).fingerprint() != before[0]


def test_text_is_fingerprinted_by_its_content(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("hello world, " * 50)
    config = TextConfig(path=str(path), block_size=8, batch_size=4)
    before = fingerprints(config)
    assert len(set(before)) == 1
    path.write_text("hello World, " * 50)  # same size, other text
    assert config.build("train", seed=0).fingerprint() != before[0]


def test_generated_data_is_fingerprinted_by_the_options_that_make_it():
    shapes = ShapesConfig(num_train=16, num_val=4, image_size=8, batch_size=4)
    assert len(set(fingerprints(shapes))) == 1
    assert ShapesConfig(num_train=16, num_val=4, image_size=8, batch_size=8).build("train", seed=0).fingerprint() == (
        fingerprints(shapes)[0]  # the batch size does not change the data
    )
    for change in ({"data_seed": 1}, {"num_train": 17}, {"image_size": 9}):
        other = ShapesConfig(**{"num_train": 16, "num_val": 4, "image_size": 8, "batch_size": 4, **change})
        assert other.build("train", seed=0).fingerprint() != fingerprints(shapes)[0]
    scenes = ShapeCaptionsConfig(num_train=8, num_val=2, image_size=8, batch_size=2)
    assert len(set(fingerprints(scenes))) == 1
    assert ShapeCaptionsConfig(num_train=8, num_val=2, image_size=8, batch_size=2, max_things=1).build(
        "train", seed=0
    ).fingerprint() != fingerprints(scenes)[0]
