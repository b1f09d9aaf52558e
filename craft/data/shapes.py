"""Synthetic shapes: small labelled images drawn with Pillow, fully offline.

Each image shows one shape (its class) in a named colour, size and position,
rotated, over a dark background with distractor strokes and pixel noise.
Image ``i`` of a split is a pure function of ``(data_seed, split, i)``:
``describe`` gives its attributes (shape, colour, size and position words, for
captions), ``render`` draws them at any resolution. No global RNG is touched.

``[data] kind = "shapes"`` renders in memory, each image on first use;
``write_shapes_folder`` writes the same images as files for ``image_folder``.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
from concurrent.futures import Executor, ThreadPoolExecutor
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import torch
from PIL import Image
from torch import Tensor

from craft.data import DATASETS
from craft.data import checks
from craft.data.batching import Batch, EvalBatches, TrainBatches, derive_seed, normalize, options_fingerprint
from craft.data.drawing import RenderedImages, Stroke, draw, image_tensor  # image_tensor: re-exported
from craft.data.threads import data_threads

SHAPES = ("arrow", "circle", "cross", "ring", "square", "star", "triangle")
"""Every shape class, sorted by name (class ``k`` of a config is its ``k``-th sorted name)."""

COLOURS = {
    "red": (225, 40, 40),
    "orange": (240, 140, 25),
    "yellow": (235, 220, 45),
    "green": (45, 195, 65),
    "cyan": (45, 205, 215),
    "blue": (55, 95, 240),
    "purple": (145, 65, 215),
    "magenta": (225, 55, 195),
    "white": (230, 230, 230),
}
SIZES = {"small": (0.2, 0.25), "medium": (0.25, 0.3), "large": (0.3, 0.36)}
"""Size word -> range of the shape's radius, as a fraction of the image side."""

POSITIONS = (("top left", "top", "top right"), ("left", "centre", "right"), ("bottom left", "bottom", "bottom right"))
"""Position word of the shape's centre, by thirds of the image: ``POSITIONS[row][column]``."""

COLOUR_JITTER = 25  # +- per channel around the named colour
BACKGROUND_MAX = 85  # background channels are drawn from [0, BACKGROUND_MAX]: dark, so shapes stand out
STROKES = (0, 2)  # distractor lines per image, inclusive range


@attrs.frozen
class ShapeSpec:
    """Everything that determines one image. Geometry is in fractions of the side."""

    shape: str
    colour: str
    size: str
    position: str
    x: float  # centre, from the left edge
    y: float  # centre, from the top edge
    radius: float
    angle: float  # degrees, counter-clockwise
    rgb: tuple[int, int, int]
    background: tuple[int, int, int]
    strokes: tuple[Stroke, ...]
    strokes_over: int  # the last ``strokes_over`` strokes are drawn over the shape
    noise_seed: int


def describe(index: int, *, seed: int, split: str, classes: tuple[str, ...] | list[str] = SHAPES) -> ShapeSpec:
    """The attributes of image ``index`` of ``split``; its class is ``sorted(classes)[index % len]``."""
    names = sorted(classes)
    rng = random.Random(derive_seed("shapes", seed, split, index))
    colour = rng.choice(list(COLOURS))
    size = rng.choice(list(SIZES))
    radius = rng.uniform(*SIZES[size])
    margin = radius  # whole shapes: a clipped corner can turn a triangle into a square
    x, y = rng.uniform(margin, 1 - margin), rng.uniform(margin, 1 - margin)
    strokes = tuple(
        (rng.random(), rng.random(), rng.random(), rng.random(), _rgb(rng)) for _ in range(rng.randint(*STROKES))
    )
    return ShapeSpec(
        shape=names[index % len(names)],
        colour=colour,
        size=size,
        position=POSITIONS[min(int(y * 3), 2)][min(int(x * 3), 2)],
        x=x,
        y=y,
        radius=radius,
        angle=rng.uniform(0, 360),
        rgb=tuple(min(255, max(0, c + rng.randint(-COLOUR_JITTER, COLOUR_JITTER))) for c in COLOURS[colour]),
        background=tuple(rng.randint(0, BACKGROUND_MAX) for _ in range(3)),
        strokes=strokes,
        strokes_over=rng.randint(0, len(strokes)),
        noise_seed=rng.getrandbits(63),
    )


def render(spec: ShapeSpec, image_size: int, channels: int = 3) -> Image.Image:
    """Draw ``spec`` as an ``image_size`` square Pillow image, mode "RGB" (3 channels) or "L" (1)."""
    under = len(spec.strokes) - spec.strokes_over
    return draw(
        (spec,), spec.background, image_size, channels, noise_seed=spec.noise_seed,
        under=spec.strokes[:under], over=spec.strokes[under:],
    )


def _rgb(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def names_from(known: Sequence[str], noun: str):
    """An attrs validator: a non-empty list of distinct names, each one of ``known`` (``noun`` names them)."""

    def validate(instance, attribute, value: list[str]) -> None:
        unknown = sorted(set(value) - set(known))
        if not value or unknown:
            raise ValueError(f"unknown {noun}(s) {unknown or '(none given)'}; choose from {list(known)}")
        if len(set(value)) != len(value):
            raise ValueError(f"lists a {noun} twice: {value}")

    return validate


validate_shapes = names_from(SHAPES, "shape")


@DATASETS.register("shapes")
@attrs.frozen
class ShapesConfig:
    """``[data] kind = "shapes"``: synthetic shapes rendered in memory.

    ``data_seed`` fixes the images themselves; the run's seed only orders them.
    A background thread renders each image the first time a batch needs it
    (about 0.1 ms each) and keeps it: ``N * C * S * S`` bytes per split, 92 MB
    for the default 30000 train images. Labels cycle through the sorted
    ``classes``, so the classes are balanced.
    """

    num_train: int = attrs.field(default=30000, validator=checks.at_least(0))
    num_val: int = attrs.field(default=2000, validator=checks.at_least(0))
    image_size: int = attrs.field(default=32, validator=checks.at_least(1))
    channels: int = attrs.field(default=3, validator=checks.channels)
    batch_size: int = attrs.field(default=128, validator=checks.at_least(1))
    classes: list[str] = attrs.field(factory=lambda: list(SHAPES), validator=validate_shapes)
    data_seed: int = 0
    mean: list[float] = attrs.field(factory=lambda: [0.5], validator=checks.per_channel)
    std: list[float] = attrs.field(factory=lambda: [0.5], validator=checks.per_channel)

    def build(self, split: str, *, seed: int, rank: int = 0, world_size: int = 1) -> TrainBatches | EvalBatches:
        """Batches ``{"image": float32 (B, C, S, S), "label": int64 (B,)}`` of ``split``."""
        checks.check_split(split)
        classes = sorted(self.classes)
        num = self.num_train if split == "train" else self.num_val
        if num < 1:
            raise ValueError(f"the {split} split is empty: set data.num_{split} > 0")

        def picture(i: int) -> Image.Image:
            spec = describe(i, seed=self.data_seed, split=split, classes=classes)
            return render(spec, self.image_size, self.channels)

        images = RenderedImages(num, picture, image_size=self.image_size, channels=self.channels)
        labels = torch.arange(num) % len(classes)
        mean, std = self.mean, self.std

        def load(indices: Tensor) -> Batch:
            return {"image": normalize(images(indices), mean, std), "label": labels[indices]}

        # One thread renders ahead while the caller trains; one, so renders never race.
        executor = data_threads(1, f"craft-shapes-{split}")
        common = dict(
            batch_size=self.batch_size, classes=classes, rank=rank, world_size=world_size, executor=executor,
            prefetch=2, fingerprint=options_fingerprint(self, split),
        )
        if split == "train":
            return TrainBatches(num, load, seed=seed, **common)
        return EvalBatches(num, load, **common)


def folder_problems(*, image_size: object, num_train: object, num_val: object, classes: int = 0) -> list[str]:
    """What is wrong with the options of a prepared folder, one ``"name: problem"`` line each (none: ``[]``).

    ``image_size`` and ``num_train`` must be positive whole numbers, ``num_val`` non-negative. A folder of
    ``classes`` class folders needs each split's count to reach every class (they are dealt in turn): a class
    folder left empty fails the run that reads it, long after the folder was written.
    """
    problems = []
    counts = (("num_train", num_train, max(1, classes)), ("num_val", num_val, classes))
    for name, value, least in (("image_size", image_size, 1), *counts):
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{name}: must be a whole number, got {value!r}")
        elif value < least:
            each = f", an image for each of the {classes} classes" if classes and name != "image_size" else ""
            problems.append(f"{name}: must be >= {least}{each}, got {value}")
    return problems


def check_folder_options(**options: object) -> None:
    """Raise ValueError naming every ``folder_problems`` of ``options`` before anything is written."""
    problems = folder_problems(**options)
    if problems:
        raise ValueError("; ".join(problems))


def write_shapes_folder(
    root: str | Path,
    *,
    num_train: int,
    num_val: int,
    image_size: int,
    seed: int,
    format: str = "png",
    classes: tuple[str, ...] | list[str] = SHAPES,
    channels: int = 3,
) -> Path:
    """Write ``root/{train,val}/<class>/<class>_<i>.<format>``, the images of ``describe``/``render``.

    The folder appears complete or not at all: it is written under a hidden
    temporary name next to ``root`` and renamed into place. An existing,
    non-empty ``root`` is an error (FileExistsError), never overwritten.
    """
    validate_shapes(None, None, list(classes))
    check_folder_options(image_size=image_size, num_train=num_train, num_val=num_val)
    suffix = {"png": "png", "jpg": "jpg", "jpeg": "jpg"}.get(format.lower())
    if suffix is None:
        raise ValueError(f"format must be 'png' or 'jpg', got {format!r}")

    def fill(tmp: Path, pool: Executor) -> None:
        def write(split: str, i: int, digits: int) -> None:
            spec = describe(i, seed=seed, split=split, classes=classes)
            image = render(spec, image_size, channels)
            image.save(tmp / split / spec.shape / f"{spec.shape}_{i:0{digits}d}.{suffix}", quality=95)

        for split, num in (("train", num_train), ("val", num_val)):
            for name in classes:
                (tmp / split / name).mkdir(parents=True)
            digits = len(str(max(num - 1, 0)))
            for _ in pool.map(write, [split] * num, range(num), [digits] * num):
                pass

    return write_folder(root, fill, thread_name="craft-write-shapes")


def move_into_place(tmp: Path, root: Path) -> None:
    """Rename the finished folder ``tmp`` to ``root`` (absent or empty).

    Raises FileExistsError when another writer's folder took ``root`` first
    (``root`` is then theirs, complete: they renamed it into place too).
    """
    try:
        with contextlib.suppress(FileNotFoundError):  # another writer may have removed it first
            if root.is_dir() and not any(root.iterdir()):
                root.rmdir()  # rename cannot replace a folder portably
        tmp.rename(root)
    except OSError as e:  # ENOTEMPTY, EEXIST: someone else's folder is there now
        raise FileExistsError(f"{root} appeared while it was being written; remove it or pick another") from e


def write_folder(root: str | Path, fill: Callable[[Path, Executor], None], *, thread_name: str) -> Path:
    """Make the folder ``root`` with ``fill(tmp, pool)``, which writes into ``tmp`` using ``pool``'s threads.

    The folder appears complete or not at all: ``tmp`` is a hidden temporary
    folder next to ``root``, renamed into place once ``fill`` returns. An
    existing, non-empty ``root`` is an error (FileExistsError), never overwritten.
    """
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} already exists and is not empty; remove it or choose another folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    # Threads: Pillow releases the GIL while encoding, about half of the time here.
    pool = ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix=thread_name)
    try:
        fill(tmp, pool)
        pool.shutdown()
        move_into_place(tmp, root)
    finally:
        pool.shutdown(cancel_futures=True)  # on Ctrl-C, don't render the rest first
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
