"""Training augmentation for image batches: per-image random parameters from a seeded generator.

``[data.augment]`` is an ``AugmentConfig``. Every image draws its own
parameters (``draw_params``) from a generator seeded by ``(seed, epoch,
example index)``, so a batch never shares one crop (a ``transforms.v2``
transform called on a batched tensor would draw one set for the whole batch),
a resumed run draws what an unbroken one does, and the parameters do not
depend on the batch size, the rank or the thread that decodes. The
parameters are applied with ``torchvision.transforms.v2.functional``
(``augment_image``) on the CPU in the decoding threads, or on the device
(``DeviceBatch``), whichever ``data.augment_on`` says.

Evaluation never augments: ``eval_view`` centre-crops to the crop size.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import attrs
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from craft.data.batching import Batch, derive_seed, normalize
from craft.validators import at_least, between


def _range(low: float, high: float | None = None):
    """Validator: two values ``[a, b]`` with ``low < a <= b`` (and ``b <= high`` when given)."""

    def check(instance, attribute, value: list[float]) -> None:
        if len(value) != 2 or not low < value[0] <= value[1] or (high is not None and value[1] > high):
            bound = f" <= {high}" if high is not None else ""
            raise ValueError(f"needs two values [a, b] with {low} < a <= b{bound}, got {value}")

    return check


@attrs.frozen
class RandomResizedCrop:
    """A random part (``scale`` of the area, aspect ratio within ``ratio``) resized to ``size`` square.

    ``size`` unset: ``data.image_size``. Smaller than ``image_size``, it is the
    size the model sees, and evaluation centre-crops to it (resize, then crop).
    """

    size: int | None = attrs.field(default=None, validator=attrs.validators.optional(at_least(2)))  # see image_side
    scale: list[float] = attrs.field(factory=lambda: [0.08, 1.0], validator=_range(0, 1))
    ratio: list[float] = attrs.field(factory=lambda: [3 / 4, 4 / 3], validator=_range(0))


@attrs.frozen
class ColorJitter:
    """Brightness, contrast, saturation factors in ``[max(0, 1 - x), 1 + x]`` (any ``x >= 0``, as
    torchvision's ``ColorJitter``), hue shift in ``[-hue, hue]``; random order."""

    brightness: float = attrs.field(default=0.0, validator=at_least(0))
    contrast: float = attrs.field(default=0.0, validator=at_least(0))
    saturation: float = attrs.field(default=0.0, validator=at_least(0))
    hue: float = attrs.field(default=0.0, validator=between(0, 0.5))


@attrs.frozen
class AugmentConfig:
    """``[data.augment]``: what a training image may go through (each step off when unset or 0)."""

    random_resized_crop: RandomResizedCrop | None = None
    horizontal_flip: float = attrs.field(default=0.0, validator=between(0, 1))
    color_jitter: ColorJitter | None = None


class Params(NamedTuple):
    """One image's draw: the crop box ``(top, left, height, width)``, the flip, and the jitter steps in order."""

    box: tuple[int, int, int, int] | None
    flip: bool
    jitter: tuple[tuple[str, float], ...]


_TRIES = 10  # torchvision's RandomResizedCrop tries 10 boxes before falling back to a centre crop
_DRAWS = 4 * _TRIES + 1 + 4 + 4  # uniforms per image: crop tries, flip, four jitter factors, their order


def image_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of example ``index``'s augmentation in ``epoch`` of a run seeded ``seed``."""
    return torch.Generator().manual_seed(derive_seed("augment", seed, epoch, index))


def draw_params(config: AugmentConfig, image_size: int, generator: torch.Generator) -> Params:
    """One image's parameters for an ``image_size`` square input; always consumes the same number of draws."""
    u = torch.rand(_DRAWS, generator=generator, dtype=torch.float64).tolist()
    crop, jitter = config.random_resized_crop, config.color_jitter
    box = _crop_box(crop, image_size, u[: 4 * _TRIES]) if crop is not None else None
    flip = u[4 * _TRIES] < config.horizontal_flip
    steps = []
    if jitter is not None:
        factors = u[4 * _TRIES + 1 : 4 * _TRIES + 5]
        order = sorted(range(4), key=lambda k: u[4 * _TRIES + 5 + k])  # a random permutation of the four steps
        for k in order:
            name, amount = _JITTER[k], getattr(jitter, _JITTER[k])
            if amount > 0:
                low = -amount if name == "hue" else max(0.0, 1 - amount)
                high = amount if name == "hue" else 1 + amount
                steps.append((name, low + (high - low) * factors[k]))
    return Params(box, flip, tuple(steps))


_JITTER = ("brightness", "contrast", "saturation", "hue")
_ADJUST = {
    "brightness": F.adjust_brightness, "contrast": F.adjust_contrast,
    "saturation": F.adjust_saturation, "hue": F.adjust_hue,
}  # fmt: skip


def _crop_box(crop: RandomResizedCrop, size: int, u: list[float]) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box on a ``size`` square, from 4 uniforms per try."""
    area, (lo, hi) = size * size, (math.log(crop.ratio[0]), math.log(crop.ratio[1]))
    for t in range(_TRIES):
        a, r, y, x = u[4 * t : 4 * t + 4]
        target = area * (crop.scale[0] + (crop.scale[1] - crop.scale[0]) * a)
        aspect = math.exp(lo + (hi - lo) * r)
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= size and 0 < h <= size:
            return int(y * (size - h + 1)), int(x * (size - w + 1)), h, w
    side = size  # a square input: every ratio bound admits the whole image
    return 0, 0, side, side


def crop_size(config: AugmentConfig | None, image_size: int) -> int:
    """The side of the images a model sees: the crop's ``size``, else ``image_size``."""
    crop = config.random_resized_crop if config is not None else None
    return crop.size if crop is not None and crop.size is not None else image_size


def augment_image(image: Tensor, params: Params, size: int) -> Tensor:
    """uint8 ``(C, S, S)`` -> uint8 ``(C, size, size)``: crop and resize, flip, jitter, as ``params`` say."""
    if params.box is not None:
        top, left, h, w = params.box
        image = F.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    elif image.shape[-1] != size:
        image = F.center_crop(image, [size, size])
    if params.flip:
        image = F.horizontal_flip(image)
    for name, factor in params.jitter:
        if image.shape[0] == 3 or name in ("brightness", "contrast"):  # gray images have no colour to change
            image = _ADJUST[name](image, factor)
    return image


def augment_batch(images: Tensor, params: list[Params], size: int) -> Tensor:
    """uint8 ``(B, C, S, S)`` -> uint8 ``(B, C, size, size)``, each image with its own parameters."""
    return torch.stack([augment_image(im, p, size) for im, p in zip(images, params)])


def eval_view(images: Tensor, size: int) -> Tensor:
    """uint8 ``(B, C, S, S)`` -> ``(B, C, size, size)``: the centre crop, the same for every image."""
    return images if images.shape[-1] == size else F.center_crop(images, [size, size])


def batch_params(config: AugmentConfig, image_size: int, seed: int, epoch: int, indices: Tensor) -> list[Params]:
    """Each example's parameters in ``epoch``: a function of ``(seed, epoch, index)`` alone."""
    return [draw_params(config, image_size, image_generator(seed, epoch, i)) for i in indices.tolist()]


class DeviceBatch(dict):
    """A batch whose augmentation runs after it reaches the device (``data.augment_on = "device"``).

    Holds uint8 ``image (B, C, S, S)`` and the host-drawn parameters;
    ``on_device(moved)`` takes the batch as moved to the device and returns it
    augmented and normalized: float32 ``image (B, C, size, size)``.
    """

    def __init__(self, batch: Batch, params: list[Params], size: int, mean: list[float], std: list[float]) -> None:
        super().__init__(batch)
        self.params, self.size, self.mean, self.std = params, size, mean, std

    def on_device(self, moved: Batch) -> Batch:
        images = augment_batch(moved["image"], self.params, self.size)
        return {**moved, "image": normalize(images, self.mean, self.std)}
