"""Captioned scenes: one or two shapes on a 2x2 grid, and the sentence that says what is where.

Scene ``i`` of a split is a pure function of ``(seed, split, i)``, like the
classification shapes (``craft.data.shapes``), whose drawing it reuses. Each
shape sits inside one cell of a 2x2 grid, clear of the cell's edges, so every
word of its caption can be read off the image without a borderline case:

- one shape: ``"a small red circle at the top left"``;
- two shapes in one row or one column (never diagonal):
  ``"a large blue square left of a small green star"`` or ``"... above ..."``.

The grammar is canonical: the first shape named is the left one (or the upper
one), so an image has exactly one right caption and exact-match is a fair
score. ``WORDS`` lists every word the grammar can use.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import attrs
from PIL import Image

from craft.data.batching import derive_seed
from craft.data.drawing import draw
from craft.data.shapes import BACKGROUND_MAX, COLOUR_JITTER, COLOURS, SHAPES

SIZES = {"small": (0.10, 0.12), "large": (0.16, 0.19)}
"""Size word -> range of the radius, as a fraction of the image side (a cell is 0.5 wide): no overlap."""

EDGE = 0.02  # a shape stays this far (fraction of the side) inside its cell
ROWS, COLUMNS = ("top", "bottom"), ("left", "right")
PAIRS = (((0, 0), (0, 1)), ((1, 0), (1, 1)), ((0, 0), (1, 0)), ((0, 1), (1, 1)))
"""The cells two shapes may take: a row (left to right) or a column (top to bottom), never a diagonal."""

WORDS = tuple(
    sorted({"a", "at", "the", "of", "above", *SIZES, *COLOURS, *SHAPES, *ROWS, *COLUMNS})
)
"""Every word a caption can contain, sorted."""

DEFAULT_IMAGE_SIZE = 32


@attrs.frozen
class Thing:
    """One shape of a scene: words (``shape``, ``colour``, ``size``, ``cell``) and geometry (fractions of the side)."""

    shape: str
    colour: str
    size: str
    cell: tuple[int, int]  # (row, column) of the 2x2 grid
    x: float
    y: float
    radius: float
    angle: float  # degrees, counter-clockwise
    rgb: tuple[int, int, int]


@attrs.frozen
class Scene:
    """The shapes of one image, in caption order, its background and its noise."""

    things: tuple[Thing, ...]
    background: tuple[int, int, int]
    noise_seed: int

    @property
    def caption(self) -> str:
        return caption(self)


def _phrase(thing: Thing) -> str:
    return f"a {thing.size} {thing.colour} {thing.shape}"


def caption(scene: Scene) -> str:
    """The scene's one canonical caption (see the module docstring)."""
    first = scene.things[0]
    if len(scene.things) == 1:
        row, column = first.cell
        return f"{_phrase(first)} at the {ROWS[row]} {COLUMNS[column]}"
    second = scene.things[1]
    relation = "left of" if first.cell[0] == second.cell[0] else "above"
    return f"{_phrase(first)} {relation} {_phrase(second)}"


def _thing(rng: random.Random, cell: tuple[int, int], shapes: Sequence[str], colours: Sequence[str]) -> Thing:
    shape, colour, size = rng.choice(shapes), rng.choice(colours), rng.choice(list(SIZES))
    radius = rng.uniform(*SIZES[size])
    row, column = cell
    low = radius + EDGE  # the centre's distance from the cell's near edge, at least

    def centre(index: int) -> float:
        return 0.5 * index + rng.uniform(low, 0.5 - low)

    x, y = centre(column), centre(row)
    rgb = tuple(min(255, max(0, c + rng.randint(-COLOUR_JITTER, COLOUR_JITTER))) for c in COLOURS[colour])
    return Thing(shape, colour, size, cell, x, y, radius, rng.uniform(0, 360), rgb)


def describe_scene(
    index: int,
    *,
    seed: int,
    split: str,
    shapes: Sequence[str] = SHAPES,
    colours: Sequence[str] = tuple(COLOURS),
    max_things: int = 2,
) -> Scene:
    """Scene ``index`` of ``split``: one shape, or (when ``max_things`` is 2) one or two, equally often."""
    if max_things not in (1, 2):
        raise ValueError(f"max_things must be 1 or 2, got {max_things}")
    rng = random.Random(derive_seed("scenes", seed, split, index))
    shapes, colours = sorted(shapes), sorted(colours)
    if rng.randint(1, max_things) == 1:
        things = (_thing(rng, (rng.randrange(2), rng.randrange(2)), shapes, colours),)
    else:
        cells = rng.choice(PAIRS)
        things = tuple(_thing(rng, cell, shapes, colours) for cell in cells)
    background = tuple(rng.randint(0, BACKGROUND_MAX) for _ in range(3))
    return Scene(things, background, rng.getrandbits(63))


def render_scene(scene: Scene, image_size: int = DEFAULT_IMAGE_SIZE, channels: int = 3) -> Image.Image:
    """Draw ``scene`` as an ``image_size`` square Pillow image, mode "RGB" (3 channels) or "L" (1)."""
    return draw(scene.things, scene.background, image_size, channels, noise_seed=scene.noise_seed)
