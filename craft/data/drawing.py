"""Drawing shapes with Pillow: outlines, distractor strokes, anti-aliasing and pixel
noise; and keeping rendered images as a uint8 tensor.

Geometry is in fractions of the image side, so one description draws at any
resolution. Used by ``craft.data.shapes`` (one shape an image) and
``craft.data.scenes`` (captioned scenes of one or two).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from PIL import Image, ImageDraw
from torch import Tensor

NOISE = 0.08  # weight of uniform pixel noise blended into every image


Stroke = tuple[float, float, float, float, tuple[int, int, int]]
"""A distractor line ``(x0, y0, x1, y1, rgb)``, in fractions of the side."""


class Drawable(Protocol):
    """What ``draw`` needs of a shape: its kind, centre, radius (fractions of the side), angle and colour."""

    shape: str
    x: float
    y: float
    radius: float
    angle: float  # degrees, counter-clockwise
    rgb: tuple[int, int, int]


def draw(
    things: Sequence[Drawable],
    background: tuple[int, int, int],
    image_size: int,
    channels: int = 3,
    *,
    noise_seed: int,
    under: Sequence[Stroke] = (),
    over: Sequence[Stroke] = (),
) -> Image.Image:
    """``things`` on ``background``, strokes ``under`` and ``over`` them, then pixel noise from ``noise_seed``.

    A thing is anything with ``shape``, ``x``, ``y``, ``radius``, ``angle``
    and ``rgb`` (a ``ShapeSpec``, a scene's object); geometry is in fractions
    of the side. The image is ``image_size`` square, mode "RGB" (3 channels) or "L" (1).
    """
    # Small images are drawn at up to 4x and box-filtered down: anti-aliased edges.
    supersample = max(1, min(4, 256 // image_size))
    side = image_size * supersample
    image = Image.new("RGB", (side, side), background)
    pen = ImageDraw.Draw(image)
    width = max(1, round(0.04 * side))
    for x0, y0, x1, y1, rgb in under:
        pen.line([(x0 * side, y0 * side), (x1 * side, y1 * side)], fill=rgb, width=width)
    for thing in things:
        _draw_shape(pen, thing, side)
    for x0, y0, x1, y1, rgb in over:
        pen.line([(x0 * side, y0 * side), (x1 * side, y1 * side)], fill=rgb, width=width)
    if supersample > 1:
        image = image.resize((image_size, image_size), Image.Resampling.BOX)
    noise = random.Random(noise_seed).randbytes(image_size * image_size * 3)
    image = Image.blend(image, Image.frombytes("RGB", image.size, noise), NOISE)
    return image.convert("L") if channels == 1 else image


def image_tensor(image: Image.Image) -> Tensor:
    """A Pillow "RGB" or "L" image -> uint8 ``(C, H, W)``."""
    channels = len(image.getbands())
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(image.height, image.width, channels).permute(2, 0, 1)


def _regular(n: int, start: float = -90.0) -> list[tuple[float, float]]:
    angles = [math.radians(start + 360 * k / n) for k in range(n)]
    return [(math.cos(a), math.sin(a)) for a in angles]


def _star(points: int = 5, inner: float = 0.42) -> list[tuple[float, float]]:
    outer = _regular(2 * points)
    return [(px * (1 if k % 2 == 0 else inner), py * (1 if k % 2 == 0 else inner)) for k, (px, py) in enumerate(outer)]


_ARM = 0.3
OUTLINES: dict[str, list[tuple[float, float]]] = {
    # Polygons around the origin with radius about 1; y points down, as in images.
    "arrow": [(-1, -0.22), (0.15, -0.22), (0.15, -0.62), (1, 0), (0.15, 0.62), (0.15, 0.22), (-1, 0.22)],
    "cross": [
        (-_ARM, -1), (_ARM, -1), (_ARM, -_ARM), (1, -_ARM), (1, _ARM), (_ARM, _ARM),
        (_ARM, 1), (-_ARM, 1), (-_ARM, _ARM), (-1, _ARM), (-1, -_ARM), (-_ARM, -_ARM),
    ],  # fmt: skip
    "square": _regular(4, 45),
    "star": _star(),
    "triangle": _regular(3),
}


def _draw_shape(draw: ImageDraw.ImageDraw, spec: Drawable, side: int) -> None:
    cx, cy, r = spec.x * side, spec.y * side, spec.radius * side
    if spec.shape in ("circle", "ring"):
        box = [cx - r, cy - r, cx + r, cy + r]
        if spec.shape == "circle":
            draw.ellipse(box, fill=spec.rgb)
        else:
            draw.ellipse(box, outline=spec.rgb, width=max(1, round(0.32 * r)))
        return
    cos, sin = math.cos(math.radians(spec.angle)), math.sin(math.radians(spec.angle))
    # Counter-clockwise on screen: y points down, so the rotation's sine flips sign.
    points = [(cx + r * (px * cos + py * sin), cy + r * (py * cos - px * sin)) for px, py in OUTLINES[spec.shape]]
    draw.polygon(points, fill=spec.rgb)


class RenderedImages:
    """The images of one split as uint8 ``(N, C, S, S)``: ``picture(i)`` on first use, then kept.

    ``picture(i)`` is image ``i`` as an ``image_size`` square Pillow image with ``channels`` bands.
    """

    def __init__(self, num_examples: int, picture: Callable[[int], Image.Image], *, image_size: int, channels: int):
        self.picture = picture
        self.images = torch.empty(num_examples, channels, image_size, image_size, dtype=torch.uint8)
        self.done = torch.zeros(num_examples, dtype=torch.bool)

    def __call__(self, indices: Tensor) -> Tensor:
        """uint8 ``(len(indices), C, S, S)``."""
        for i in indices[~self.done[indices]].tolist():
            self.images[i] = image_tensor(self.picture(i))
            self.done[i] = True
        return self.images[indices]
