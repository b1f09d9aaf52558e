"""Write a small folder of labelled JPEG files to try ``my_images.py`` on, offline.

Each file is named ``<class>_<number>.jpg`` (``circle_007.jpg``): one shape,
at a random place, size and colour, on a noisy background. Pillow only::

    python make_images.py data/shapes [--per_class 40] [--size 48]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")


def draw(shape: str, size: int, rng: random.Random) -> Image.Image:
    noise = bytes(rng.randrange(0, 80) for _ in range(size * size))
    image = Image.frombytes("L", (size, size), noise).convert("RGB")  # a dark, noisy background
    radius = rng.uniform(0.2, 0.35) * size
    x, y = (rng.uniform(radius, size - radius) for _ in range(2))
    colour = tuple(rng.randrange(120, 256) for _ in range(3))
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    elif shape == "square":
        pen.rectangle((x - radius, y - radius, x + radius, y + radius), fill=colour)
    else:
        pen.polygon([(x, y - radius), (x - radius, y + radius), (x + radius, y + radius)], fill=colour)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--per_class", type=int, default=40)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    args.folder.mkdir(parents=True, exist_ok=True)
    for shape in CLASSES:
        for i in range(args.per_class):
            draw(shape, args.size, rng).save(args.folder / f"{shape}_{i:03d}.jpg", quality=90)
    print(f"wrote {args.per_class * len(CLASSES)} images to {args.folder}")


if __name__ == "__main__":
    main()
