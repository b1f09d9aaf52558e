"""Image folders: JPEG, PNG, WebP, BMP, GIF and TIFF files decoded in background threads.

Labels come from class folders (``root/cat/x.jpg``) or from file-name
prefixes (``root/cat_001.jpg``). Classes are sorted by name; a label is the
class's position in that list, the same for train and val. Every image is
converted to the configured channels, resized to ``image_size`` square and
normalized; a batch is ``{"image": float32 (B, C, S, S), "label": int64 (B,)}``.
"""

from __future__ import annotations

import io
import os
import re
import sys
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import attrs
import torch
import torchvision.io  # noqa: F401  (registers the torch.ops.image decoders)
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode
from torchvision.transforms.v2 import functional as F

from craft.data import DATASETS
from craft.data import checks
from craft.data.batching import Batch, EvalBatches, TrainBatches, derive_seed, normalize, options_fingerprint
from craft.data.files import (
    IMAGE_SUFFIXES, KINDS, MAX_PIXELS, dimensions, files_fingerprint, find_files, inside, read_file, shown, sniff,
)
from craft.data.once import once_per_node
from craft.data.pngcheck import png_problem
from craft.data.shapes import ShapesConfig, image_tensor, write_shapes_folder

_COMMON = (".jpg", ".jpeg", ".png")
_SUFFIXES = ", ".join(_COMMON)  # messages name these first: the common kinds
_MORE_SUFFIXES = ", ".join(s for s in IMAGE_SUFFIXES if s not in _COMMON)
_MODES = {1: ImageReadMode.GRAY, 3: ImageReadMode.RGB}

# The op behind torchvision.io.decode_image. The Python wrapper issues a
# DeprecationWarning on every call (torchvision 0.29 points to TorchCodec);
# per image, that costs more than decoding a 32x32 PNG and serializes the
# decoding threads on the warnings machinery.
_decode = torch.ops.image.decode_image

PREPARED_SHAPES = {
    "num_train": attrs.fields(ShapesConfig).num_train.default,
    "num_val": attrs.fields(ShapesConfig).num_val.default,
}
"""How many images ``prepare = "shapes"`` writes: as many as ``kind = "shapes"`` renders."""


# -- listing ---------------------------------------------------------------


class Listing(NamedTuple):
    """Image files found under ``folder``, the class name of each, and what was left out (reason -> count)."""

    folder: Path
    files: list[str]
    names: list[str]
    left_out: Counter[str] = Counter()

    def subset(self, positions: list[int]) -> Listing:
        files, names = [self.files[i] for i in positions], [self.names[i] for i in positions]
        return Listing(self.folder, files, names, self.left_out)

    def summary(self) -> str:
        """One line: how many files of which kinds were found, and what was left out."""
        kinds = Counter(KINDS[os.path.splitext(f)[1].lower()] for f in self.files)
        found = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        line = f"{len(self.files)} images in {shown(self.folder)}" + (f" ({found})" if found else "")
        return line + (f"; left out {describe_left_out(self.left_out)}" if self.left_out else "")


def describe_left_out(left_out: Counter[str]) -> str:
    """``"3 .txt files, 1 links out of the folder"``: the most frequent reasons first."""
    return ", ".join(f"{n} {reason}" for reason, n in left_out.most_common())


def images_under(folder: str | Path) -> list[str]:
    """Image files anywhere under ``folder``, sorted; see ``craft.data.files.find_files`` for what is left out."""
    return find_files(folder).files


def _no_images(folder: Path, left_out: Counter[str]) -> ValueError:
    found = f"; found only {describe_left_out(left_out)}" if left_out else ""
    return ValueError(
        f"no images ({_SUFFIXES}) in {folder}, nor {_MORE_SUFFIXES}{found}; "
        f"add or convert some, or set prepare = \"shapes\""
    )


def list_images(folder: str | Path, labels: str = "folders") -> Listing:
    """The images under ``folder`` and their classes, in a stable (sorted) order.

    ``labels="folders"``: the class is the sub-folder of ``folder`` holding the
    file (at any depth below it). ``labels="prefix"``: the class is the file
    name up to its first ``_`` (``cat_001.jpg`` -> ``cat``). Hidden files and
    folders are skipped, and so are loose images beside class folders. Links
    are followed only within the walked folder (a class folder, with
    ``"folders"``), and each real folder is read once, so a link never moves
    an image into another class (``craft.data.files.find_files``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist or is not a folder")
    if labels == "prefix":
        files, left_out = find_files(folder)
        if not files:
            raise _no_images(folder, left_out)
        names = [os.path.basename(f).partition("_") for f in files]
        names = [prefix if sep and prefix else "" for prefix, sep, _ in names]
        missing = [f for f, name in zip(files, names) if not name]
        if len(missing) == len(files):
            raise ValueError(
                f"no image in {folder} has a class prefix; labels = \"prefix\" needs names like cat_001.jpg "
                f"(class 'cat'): rename the files, or use labels = \"folders\" for {folder}/<class>/<image>"
            )
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(files)} images in {folder} have no class prefix, e.g. {shown(missing[0])}; "
                f"labels = \"prefix\" needs names like cat_001.jpg: rename or remove them"
            )
        return Listing(folder, files, names, left_out)
    if labels != "folders":
        raise ValueError(f"data.labels must be 'folders' or 'prefix', got {labels!r}")
    return _list_class_folders(folder)


def _list_class_folders(folder: Path) -> Listing:
    """``labels="folders"``: every class folder's images; one walk shares the set of folders seen."""
    root = os.path.realpath(folder)
    class_dirs, left_out = [], Counter()
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if entry.is_symlink() and not inside(os.path.realpath(entry.path), root):
            left_out["links out of the folder"] += 1
        else:
            class_dirs.append(entry.name)
    if not class_dirs:
        loose = find_files(folder)
        if loose.files:
            raise ValueError(
                f"{folder} has images but no class folders; labels = \"folders\" expects {folder}/<class>/<image>: "
                f"move the images into class folders, or set labels = \"prefix\" for names like cat_001.jpg"
            )
        raise _no_images(folder, loose.left_out + left_out)
    seen = {(os.stat(folder).st_dev, os.stat(folder).st_ino)}  # a link back to the root is never followed
    files, names = [], []
    for name in class_dirs:
        found, skipped = find_files(folder / name, seen=seen)
        left_out += skipped
        if not found:
            what = f" ({describe_left_out(skipped)})" if skipped else ""
            raise ValueError(
                f"class folder {folder / name} has no images ({_SUFFIXES}, {_MORE_SUFFIXES}){what}; "
                f"add images or remove the folder"
            )
        files += found
        names += [name] * len(found)
    return Listing(folder, files, names, left_out)


def split_files(names: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train, val)`` positions: per class, a seeded ``round(fraction * n)`` go to val.

    Per class, so every class is in both splits where it can be (one file
    stays in train); a function of ``(names, fraction, seed)`` only, so the
    same sorted listing always splits the same way.
    """
    by_class: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        by_class.setdefault(name, []).append(i)
    val = []
    for name, positions in by_class.items():
        generator = torch.Generator().manual_seed(derive_seed("split", seed, name))
        order = torch.randperm(len(positions), generator=generator).tolist()
        take = min(round(fraction * len(positions)), len(positions) - 1)
        val += [positions[k] for k in order[:take]]
    held = set(val)
    return [i for i in range(len(names)) if i not in held], sorted(val)


# -- decoding --------------------------------------------------------------


def read_image(path: str, channels: int = 3, max_pixels: int = MAX_PIXELS) -> Tensor:
    """uint8 ``(channels, H, W)`` of a JPEG, PNG, WebP, BMP, GIF (first frame) or TIFF (first page) file.

    Gray, RGBA and palette images are converted. Raises ValueError naming the
    file when it cannot be decoded: not a regular file, content of another
    kind than its suffix says (a GIF named ``.png``), a header claiming more
    than ``max_pixels`` pixels (checked before anything is inflated), damage.
    """
    data = read_file(path)
    if not data:
        raise ValueError(f"cannot decode image {shown(path)} (empty file); replace or delete it")
    kind, named = sniff(data), KINDS.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise ValueError(f"cannot decode image {shown(path)} (not a {', '.join(sorted(set(KINDS.values())))} file); "
                         f"replace or delete it")  # fmt: skip
    if named is not None and kind != named:
        raise ValueError(
            f"cannot decode image {shown(path)}: it holds a {kind} image but its name says {named}; "
            f"rename it to .{kind.lower()}, convert it, or delete it"
        )
    size = dimensions(data, kind)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ValueError(
            f"cannot decode image {shown(path)}: its header claims {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, "
            f"over data.max_pixels = {max_pixels:,}; raise data.max_pixels to read it, or shrink or delete it"
        )
    image = _decode_pillow(data, channels) if kind in ("BMP", "TIFF") else _decode_torchvision(data, channels, kind)
    if isinstance(image, str):
        raise ValueError(f"cannot decode image {shown(path)} ({image}); replace or delete it")
    if image.dtype != torch.uint8:  # 16-bit PNGs decode to uint16
        image = F.to_dtype(image, torch.uint8, scale=True)
    if image.ndim != 3 or image.shape[0] != channels:  # never let an odd file reach torch.stack
        raise ValueError(
            f"cannot decode image {shown(path)}: it decodes to shape {tuple(image.shape)}, not ({channels}, H, W); "
            f"convert it or delete it"
        )
    return image


def _decode_torchvision(data: bytes, channels: int, kind: str) -> Tensor | str:
    """The decoded image, or why it failed.

    GIF: the first frame. GIF and WebP come out RGB whatever the mode asks
    (WebP warns), so gray is converted here.
    """
    if kind == "PNG":
        problem = png_problem(data)  # torchvision would crash on these: check first
        if problem is not None:
            return problem
    mode = _MODES[3 if kind in ("GIF", "WebP") else channels]
    try:
        image = _decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode.value, True)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return re.sub(r"^.*\.cpp:\d+,\s*", "", reason)  # the decoder's source location says nothing to a user
    image = image[0] if kind == "GIF" and image.ndim == 4 else image  # (frames, 3, H, W) when animated
    return F.rgb_to_grayscale(image) if channels == 1 and image.ndim == 3 and image.shape[0] == 3 else image


def _decode_pillow(data: bytes, channels: int) -> Tensor | str:
    """BMP and TIFF (torchvision has no decoder for them): the first frame, as Pillow converts it."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image_tensor(image.convert("L" if channels == 1 else "RGB"))
    except Exception as e:  # Pillow raises many kinds (OSError, SyntaxError, struct.error ...) on damage
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def load_images(paths: list[str], *, image_size: int, channels: int = 3, max_pixels: int = MAX_PIXELS) -> Tensor:
    """uint8 ``(len(paths), channels, image_size, image_size)``: decoded (``read_image``), converted, resized."""
    images = [read_image(p, channels, max_pixels) for p in paths]
    size = [image_size, image_size]
    if all(im.shape == images[0].shape for im in images):
        # The common case (a folder of equal-sized images): one resize call for the batch.
        batch = torch.stack(images)
        return batch if batch.shape[-2:] == (image_size, image_size) else F.resize(batch, size, antialias=True)
    return torch.stack([F.resize(im, size, antialias=True) if im.shape[-2:] != tuple(size) else im for im in images])


def drop_unreadable(listing: Listing, channels: int, num_threads: int = 0, max_pixels: int = MAX_PIXELS) -> Listing:
    """``listing`` without the files ``read_image`` cannot decode; a warning counts them.

    Decodes every file once (in ``num_threads`` threads), so it costs one pass over the data.
    """

    def problem(path: str) -> str | None:
        try:
            read_image(path, channels, max_pixels)
        except (ValueError, OSError) as e:
            return str(e)
        return None

    if num_threads:
        with ThreadPoolExecutor(num_threads) as pool:
            problems = list(pool.map(problem, listing.files))
    else:
        problems = [problem(p) for p in listing.files]
    bad = [m for m in problems if m is not None]
    if not bad:
        return listing
    if len(bad) == len(listing.files):
        raise ValueError(f"none of the {len(bad)} images in {listing.folder} can be decoded, e.g. {bad[0]}")
    warnings.warn(
        f"skipped {len(bad)} unreadable of {len(listing.files)} images in {listing.folder} (data.skip_unreadable), "
        f"e.g. {bad[0]}",
        stacklevel=2,
    )
    return listing.subset([i for i, m in enumerate(problems) if m is None])


class DecodedImages:
    """``indices -> uint8 (b, C, S, S)`` of ``files``; with ``cache``, each file is decoded once.

    Safe to call from several threads: cached rows are written before they
    are marked done, and concurrent calls decode disjoint or identical rows.
    """

    def __init__(
        self, files: list[str], *, image_size: int, channels: int, cache: bool, max_pixels: int = MAX_PIXELS
    ) -> None:
        self.files, self.image_size, self.channels, self.max_pixels = files, image_size, channels, max_pixels
        self.store = torch.empty(len(files), channels, image_size, image_size, dtype=torch.uint8) if cache else None
        self.done = torch.zeros(len(files), dtype=torch.bool) if cache else None

    def __call__(self, indices: Tensor) -> Tensor:
        if self.store is None:
            return self._load(indices)
        missing = indices[~self.done[indices]]
        if len(missing):
            self.store[missing] = self._load(missing)
            self.done[missing] = True
        return self.store[indices]

    def _load(self, indices: Tensor) -> Tensor:
        paths = [self.files[i] for i in indices.tolist()]
        return load_images(paths, image_size=self.image_size, channels=self.channels, max_pixels=self.max_pixels)


# -- config ----------------------------------------------------------------


@DATASETS.register("image_folder")
@attrs.frozen
class ImageFolderConfig:
    """``[data] kind = "image_folder"``: image files under ``path``.

    Splits: ``val_path`` if set; else ``path/train`` and ``path/val`` if both
    exist; else a per-class ``val_fraction`` of the files (fixed by
    ``data_seed``, not by the run's seed). ``prepare = "shapes"`` writes the
    synthetic shapes there first when ``path`` is missing or empty.
    ``num_threads`` threads decode up to ``prefetch`` batches ahead
    (``num_threads = 0``: decode in the caller). ``cache`` keeps decoded,
    resized images in memory (``N * C * S * S`` bytes) after their first read.
    ``skip_unreadable`` leaves out files that do not decode, with a warning
    that counts them, instead of stopping at the first (it decodes every file
    once when the data is built). A file whose header claims more than
    ``max_pixels`` pixels is unreadable (refused before it is decoded).
    Formats: JPEG, PNG, WebP, BMP, GIF (first frame), TIFF (first page).
    """

    path: str
    batch_size: int = attrs.field(default=128, validator=checks.at_least(1))
    image_size: int = attrs.field(default=32, validator=checks.at_least(1))
    channels: int = attrs.field(default=3, validator=checks.channels)
    labels: str = attrs.field(default="folders", validator=checks.one_of("folders", "prefix"))
    val_path: str | None = None
    val_fraction: float = attrs.field(default=0.1, validator=checks.fraction)
    prepare: str | None = attrs.field(default=None, validator=checks.one_of(None, "shapes"))
    mean: list[float] = attrs.field(factory=lambda: [0.5], validator=checks.per_channel)
    std: list[float] = attrs.field(factory=lambda: [0.5], validator=checks.per_channel)
    num_threads: int = attrs.field(default=2, validator=checks.at_least(0))
    prefetch: int = attrs.field(default=4, validator=checks.at_least(1))
    cache: bool = False
    data_seed: int = 0
    skip_unreadable: bool = False
    max_pixels: int = attrs.field(default=MAX_PIXELS, validator=checks.at_least(1))

    def build(self, split: str, *, seed: int, rank: int = 0, world_size: int = 1) -> TrainBatches | EvalBatches:
        """Batches ``{"image": float32 (B, C, S, S), "label": int64 (B,)}`` of ``split``."""
        checks.check_split(split)
        train, chosen = self.listing(split)
        classes = sorted(set(train.names))
        if split == "val":
            unknown = sorted(set(chosen.names) - set(classes))
            if unknown:
                raise ValueError(
                    f"val images in {chosen.folder} have classes unknown to the train split: {unknown[:5]}"
                    f"{' ...' if len(unknown) > 5 else ''}; add them to train or remove them from val"
                )
            if not chosen.files:
                raise ValueError(
                    f"the val split of {self.path} is empty: set data.val_fraction > 0, "
                    f"add {Path(self.path) / 'val'}, or set data.val_path"
                )
        if self.skip_unreadable:
            chosen = drop_unreadable(chosen, self.channels, self.num_threads, self.max_pixels)
        files = chosen.files
        position = {name: k for k, name in enumerate(classes)}
        labels = torch.tensor([position[n] for n in chosen.names], dtype=torch.int64)
        images = DecodedImages(
            files, image_size=self.image_size, channels=self.channels, cache=self.cache, max_pixels=self.max_pixels
        )
        mean, std = self.mean, self.std

        def load(indices: Tensor) -> Batch:
            return {"image": normalize(images(indices), mean, std), "label": labels[indices]}

        executor = (
            ThreadPoolExecutor(self.num_threads, thread_name_prefix=f"craft-data-{split}") if self.num_threads else None
        )
        common = dict(
            batch_size=self.batch_size,
            classes=classes,
            rank=rank,
            world_size=world_size,
            executor=executor,
            prefetch=self.prefetch,
            examples=files,
        )
        common["fingerprint"] = lambda: options_fingerprint(
            self, split, classes, chosen.names, files_fingerprint(files, chosen.folder)
        )
        batches = TrainBatches(len(files), load, seed=seed, **common) if split == "train" else EvalBatches(
            len(files), load, **common
        )
        batches.summary = chosen.summary()
        return batches

    def listing(self, split: str) -> tuple[Listing, Listing]:
        """``(train listing, split's listing)``: the train one fixes the classes."""
        root = Path(self.path)
        if self.prepare == "shapes":
            prepare_shapes(root, image_size=self.image_size, seed=self.data_seed)
        if not root.exists():
            raise FileNotFoundError(
                f"data.path {root} does not exist; create it with `craft prepare shapes {root}`, "
                f"set prepare = \"shapes\" in [data], or point data.path at an image folder"
            )
        if not root.is_dir():
            raise FileNotFoundError(f"data.path {root} is not a folder; point it at a folder of images")
        if self.val_path is not None:
            train_root, val_root = root, Path(self.val_path)
        elif (root / "train").is_dir() and (root / "val").is_dir():
            train_root, val_root = root / "train", root / "val"
        else:  # one folder: hold out a seeded fraction of it
            listing = list_images(root / "train" if (root / "train").is_dir() else root, self.labels)
            train_pos, val_pos = split_files(listing.names, self.val_fraction, self.data_seed)
            train = listing.subset(train_pos)
            return train, train if split == "train" else listing.subset(val_pos)
        if not val_root.exists():
            raise FileNotFoundError(f"data.val_path {val_root} does not exist; fix the path or unset it")
        train = list_images(train_root, self.labels)
        return train, train if split == "train" else list_images(val_root, self.labels)


def prepare_shapes(root: Path, *, image_size: int, seed: int) -> None:
    """Write the synthetic shapes folder at ``root`` unless it already has something in it.

    Under torchrun, local rank 0 of each node writes while the other ranks
    wait (``once_per_node``); a folder another writer finished first is reused.
    """
    once_per_node(lambda: _write_shapes_unless_present(root, image_size=image_size, seed=seed))


def _write_shapes_unless_present(root: Path, *, image_size: int, seed: int) -> None:
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        return
    count = PREPARED_SHAPES["num_train"] + PREPARED_SHAPES["num_val"]
    # A one-time pause of seconds: say why, as a dataset download would.
    print(f"craft: writing {count} synthetic shapes images to {root} (once; later runs reuse them)", file=sys.stderr)
    try:
        write_shapes_folder(root, image_size=image_size, seed=seed, **PREPARED_SHAPES)
    except FileExistsError:
        if not (root.is_dir() and any(root.iterdir())):
            raise
        # Another process (another job on a shared disk) wrote it first: reuse theirs, it is complete.
