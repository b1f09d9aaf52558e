"""A custom image dataset: ``.jpg`` files whose class is the file-name prefix (``cat_001.jpg``).

Every file is decoded once, up front (fine for a small folder; for a large
one, decode in ``load`` instead, or use craft's ``kind = "image_folder"``
with ``labels = "prefix"``, which decodes in background threads). The
batching, shuffling and resumable position come from craft's
``TrainBatches`` / ``EvalBatches``: the dataset only says how to load a
batch of examples by index. Batches are ``{"image": float32 (B, 3, S, S),
"label": int64 (B,)}``: what ``[task] kind = "classification"`` reads.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2.functional import pil_to_tensor

from craft.data import DATASETS
from craft.data.batching import EvalBatches, TrainBatches


def class_of(path: Path) -> str:
    """``cat_001.jpg`` -> ``cat``."""
    return path.name.partition("_")[0]


def read_jpg(path: Path, size: int) -> Tensor:
    """float32 ``(3, size, size)`` in ``[-1, 1]``."""
    with Image.open(path) as image:
        pixels = pil_to_tensor(image.convert("RGB").resize((size, size)))  # uint8 (3, S, S)
    return pixels.float() / 127.5 - 1


@DATASETS.register("prefixed_jpgs")
@attrs.frozen
class PrefixedJpgsConfig:
    """``[data] kind = "prefixed_jpgs"``: every ``val_every``-th file (sorted by name) is held out for val."""

    path: str
    image_size: int = 32
    batch_size: int = 32
    val_every: int = 5

    def build(self, split: str, *, seed: int, rank: int = 0, world_size: int = 1) -> TrainBatches | EvalBatches:
        files = sorted(Path(self.path).glob("*.jpg"))
        if not files:
            raise ValueError(f"no .jpg files in {self.path}; write some with `python make_images.py {self.path}`")
        classes = sorted({class_of(f) for f in files})  # labels: positions in this list, the same for both splits
        held_out = split == "val"
        chosen = [f for i, f in enumerate(files) if (i % self.val_every == 0) == held_out]
        images = torch.stack([read_jpg(f, self.image_size) for f in chosen])  # (N, 3, S, S)
        labels = torch.tensor([classes.index(class_of(f)) for f in chosen])  # (N,)

        def load(indices: Tensor) -> dict[str, Tensor]:
            return {"image": images[indices], "label": labels[indices]}

        common = dict(batch_size=self.batch_size, classes=classes, rank=rank, world_size=world_size)
        if split == "train":
            return TrainBatches(len(chosen), load, seed=seed, **common)
        return EvalBatches(len(chosen), load, **common)
