"""Synthetic photo-like images: a textured object on a textured, cluttered background, saved as JPEG.

Harder than ``craft.data.shapes``: the class is an object's outline, drawn
at a random scale (a quarter to three quarters of the image), position and
rotation, filled with a random texture (stripes, checks, dots, noise) in
random colours, over a background of random gratings, a colour gradient
and noise, with distracting clutter (lines, blobs, arcs) in front and
behind. Every image is a pure function of ``(seed, split, index)``, so
``craft prepare photos DIR`` writes the same folder everywhere, offline.
"""

from __future__ import annotations

import math
from concurrent.futures import Executor
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFilter

from craft.data.batching import derive_seed
from craft.data.shapes import check_folder_options, write_folder

PHOTO_CLASSES = ("circle", "crescent", "cross", "diamond", "ring", "star", "triangle")
PREPARED_PHOTOS = {"num_train": 5000, "num_val": 1000}
"""How many images ``craft prepare photos`` writes by default (at ``image_size = 96``)."""
PHOTO_SIZE = 96


def _outline(name: str, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    """The polygon of object ``name`` centred at ``(cx, cy)`` with radius ``r``, rotated by ``turn`` radians."""
    def ring(n: int, radii: list[float], start: float = 0.0) -> list[tuple[float, float]]:
        return [
            (cx + r * radii[k % len(radii)] * math.cos(turn + start + 2 * math.pi * k / n),
             cy + r * radii[k % len(radii)] * math.sin(turn + start + 2 * math.pi * k / n))
            for k in range(n)
        ]  # fmt: skip

    if name in ("circle", "ring", "crescent"):
        return ring(48, [1.0])
    if name == "diamond":
        return ring(4, [1.0, 0.55])
    if name == "triangle":
        return ring(3, [1.0], -math.pi / 2)
    if name == "star":
        return ring(10, [1.0, 0.42], -math.pi / 2)
    w = 0.33  # the cross
    pts = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1)]
    pts += [(-x, -y) for x, y in pts]
    c, s = math.cos(turn), math.sin(turn)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _texture(size: int, g: torch.Generator, colours: torch.Tensor) -> Image.Image:
    """An RGB ``size`` square of one of four textures, blending the two ``colours (2, 3)`` (0-255)."""
    line = torch.arange(size, dtype=torch.float32)
    y, x = torch.meshgrid(line, line, indexing="ij")
    kind, u = int(torch.randint(4, (1,), generator=g)), torch.rand(3, generator=g)
    period, angle = 3 + 9 * float(u[0]), math.pi * float(u[1])
    along = x * math.cos(angle) + y * math.sin(angle)
    if kind == 0:  # stripes
        mix = (torch.sin(2 * math.pi * along / period) > 0).float()
    elif kind == 1:  # checks
        across = -x * math.sin(angle) + y * math.cos(angle)
        mix = ((torch.floor(along / period) + torch.floor(across / period)) % 2).float()
    elif kind == 2:  # dots
        mix = ((torch.sin(2 * math.pi * x / period) * torch.sin(2 * math.pi * y / period)) > 0.5).float()
    else:  # smooth noise
        coarse = torch.rand(1, 1, 1 + size // 6, 1 + size // 6, generator=g)
        mix = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
    mix = mix.clamp(0, 1)[..., None]
    rgb = colours[0] * (1 - mix) + colours[1] * mix + 18 * torch.randn(size, size, 3, generator=g)
    return Image.fromarray(rgb.clamp(0, 255).to(torch.uint8).numpy())


def _background(size: int, g: torch.Generator) -> Image.Image:
    """Gratings over a colour gradient, plus noise."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    corners = torch.rand(2, 3, generator=g) * 255
    base = corners[0] * (1 - x[..., None]) + corners[1] * x[..., None]
    for _ in range(3):
        u = torch.rand(4, generator=g)
        wave = torch.sin(2 * math.pi * (float(u[0]) * 8 * x + float(u[1]) * 8 * y) + 6.28 * float(u[2]))
        base = base + 40 * float(u[3]) * wave[..., None]
    base = base + 12 * torch.randn(size, size, 3, generator=g)
    return Image.fromarray(base.clamp(0, 255).to(torch.uint8).numpy())


def _clutter(image: Image.Image, g: torch.Generator, count: int) -> None:
    """Draw ``count`` random lines, blobs and arcs on ``image``."""
    draw, size = ImageDraw.Draw(image), image.size[0]
    for _ in range(count):
        u = (torch.rand(7, generator=g) * size).tolist()
        colour = tuple(int(c) for c in torch.randint(256, (3,), generator=g))
        kind = int(torch.randint(3, (1,), generator=g))
        box = [min(u[0], u[2]), min(u[1], u[3]), max(u[0], u[2]) + 1, max(u[1], u[3]) + 1]
        if kind == 0:
            draw.line(u[:4], fill=colour, width=1 + int(u[4] / size * 4))
        elif kind == 1:
            r = 1 + u[4] / 10
            draw.ellipse([u[0] - r, u[1] - r, u[0] + r, u[1] + r], fill=colour)
        else:
            draw.arc(box, start=u[5], end=u[5] + 90 + u[6], fill=colour, width=2)


def render_photo(index: int, *, seed: int, split: str, size: int) -> tuple[str, Image.Image]:
    """``(class, RGB image)`` of example ``index`` of ``split``: a pure function of its arguments."""
    g = torch.Generator().manual_seed(derive_seed("photo", seed, split, index))
    name = PHOTO_CLASSES[index % len(PHOTO_CLASSES)]  # balanced classes
    image = _background(size, g)
    _clutter(image, g, count=4)
    u = torch.rand(4, generator=g).tolist()
    r = size * (0.12 + 0.26 * u[0])
    cx, cy = r + (size - 2 * r) * u[1], r + (size - 2 * r) * u[2]
    colours = torch.rand(2, 3, generator=g) * 255
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon(_outline(name, cx, cy, r, 2 * math.pi * u[3]), fill=255)
    if name in ("ring", "crescent"):  # cut a hole, or a bite, out of the disc
        shift = 0.0 if name == "ring" else 0.45 * r
        hole = 0.55 * r if name == "ring" else 0.8 * r
        box = [cx + shift - hole, cy - shift - hole, cx + shift + hole, cy - shift + hole]
        ImageDraw.Draw(mask).ellipse(box, fill=0)
    image.paste(_texture(size, g, colours), (0, 0), mask.filter(ImageFilter.GaussianBlur(0.6)))
    _clutter(image, g, count=2)  # some clutter in front of the object, as occlusion
    return name, image


def write_photos_folder(
    root: str | Path, *, num_train: int, num_val: int, image_size: int = PHOTO_SIZE, seed: int = 0
) -> Path:
    """Write ``root/{train,val}/<class>/<class>_<i>.jpg`` (JPEG, quality 90); complete or not at all.

    An existing, non-empty ``root`` is an error (FileExistsError), never overwritten.
    """
    check_folder_options(image_size=image_size, num_train=num_train, num_val=num_val)

    def fill(tmp: Path, pool: Executor) -> None:
        def write(split: str, i: int, digits: int) -> None:
            name, image = render_photo(i, seed=seed, split=split, size=image_size)
            image.save(tmp / split / name / f"{name}_{i:0{digits}d}.jpg", quality=90)

        for split, num in (("train", num_train), ("val", num_val)):
            for name in PHOTO_CLASSES[:num]:  # a class folder only where it will hold images
                (tmp / split / name).mkdir(parents=True)
            digits = len(str(max(num - 1, 0)))
            for _ in pool.map(write, [split] * num, range(num), [digits] * num):
                pass

    return write_folder(root, fill, thread_name="craft-write-photos")
