"""Image folders: JPEG, PNG, WebP, BMP, GIF and TIFF files decoded in background threads.

Labels come from class folders (``root/cat/x.jpg``) or from file-name
prefixes (``root/cat_001.jpg``) (``craft.data.listing``). Every image is
decoded (``craft.data.decode``), converted to the configured channels,
resized to ``image_size`` square and, for training with ``[data.augment]``,
augmented per image (``craft.data.augment``); then normalized. A batch is
``{"image": float32 (B, C, S, S), "label": int64 (B,)}`` with ``S`` the crop
size (``image_size`` without a crop).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import attrs
import torch
from torch import Tensor

from craft.data import DATASETS
from craft.data import checks
from craft.data.augment import AugmentConfig, DeviceBatch, augment_batch, batch_params, crop_size, eval_view
from craft.data.batching import Batch, EvalBatches, Load, TrainBatches, normalize, options_fingerprint
from craft.data.decode import decode_bytes, drop_unreadable, load_images, read_image, resize_stack  # noqa: F401
from craft.data.files import MAX_PIXELS, files_fingerprint
from craft.data.listing import (  # noqa: F401  (re-exported: they lived here)
    TRAIN_FOLDERS, VAL_FOLDERS, Listing, describe_left_out, empty_val, images_under, list_images, split_files,
    split_folder,
)
from craft.data.once import once_per_node
from craft.data.shapes import ShapesConfig, write_shapes_folder
from craft.data.threads import data_threads

PREPARED_SHAPES = {
    "num_train": attrs.fields(ShapesConfig).num_train.default,
    "num_val": attrs.fields(ShapesConfig).num_val.default,
}
"""How many images ``prepare = "shapes"`` writes: as many as ``kind = "shapes"`` renders."""


def cache_store(count: int, channels: int, image_size: int) -> Tensor:
    """uint8 ``(count, channels, image_size, image_size)``, uninitialised: the ``data.cache``; a ValueError
    saying how much it needs when the memory is not there."""
    try:
        return torch.empty(count, channels, image_size, image_size, dtype=torch.uint8)
    except RuntimeError:  # "DefaultCPUAllocator: can't allocate memory"
        need = count * channels * image_size * image_size
        raise ValueError(
            f"data.cache = true needs {need / 2**30:,.1f} GiB for {count:,} images of {channels}x{image_size}x{image_size}, "
            f"more than this machine can allocate; set data.cache = false or lower data.image_size"
        ) from None


class DecodedImages:
    """``indices -> uint8 (b, C, S, S)`` of ``files``; with ``cache``, each file is decoded once.

    Safe to call from several threads: cached rows are written before they
    are marked done, and concurrent calls decode disjoint or identical rows.
    """

    def __init__(
        self, files: list[str], *, image_size: int, channels: int, cache: bool, max_pixels: int = MAX_PIXELS
    ) -> None:
        self.files, self.image_size, self.channels, self.max_pixels = files, image_size, channels, max_pixels
        self.store = cache_store(len(files), channels, image_size) if cache else None
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


def image_load(
    decoded, labels: Tensor, *, train: bool, seed: int, augment: AugmentConfig | None, augment_on: str,
    image_size: int, mean: list[float], std: list[float],
) -> tuple[Load, bool]:
    """``(load, pass_epoch)``: batches ``{"image", "label"}`` of ``decoded(indices) -> uint8 (b, C, S, S)``.

    Training with ``augment``: ``load(indices, epoch)`` augments each image with
    its own parameters (``craft.data.augment``), here or, with ``augment_on =
    "device"``, after the batch reaches the device (a ``DeviceBatch``).
    Otherwise ``load(indices)``: the centre crop to the crop size, nothing random.
    """
    size = crop_size(augment, image_size)
    if not train or augment is None:

        def plain(indices: Tensor) -> Batch:
            return {"image": normalize(eval_view(decoded(indices), size), mean, std), "label": labels[indices]}

        return plain, False

    def augmented(indices: Tensor, epoch: int) -> Batch:
        params = batch_params(augment, image_size, seed, epoch, indices)
        batch = {"image": decoded(indices), "label": labels[indices]}
        if augment_on == "device":
            return DeviceBatch(batch, params, size, mean, std)
        return {**batch, "image": normalize(augment_batch(batch["image"], params, size), mean, std)}

    return augmented, True


def image_side(instance, attribute, size: int) -> None:
    """Validator of ``data.image_size``: at least 2 (torchvision's antialiased resize fails on a 1-pixel
    colour image), and a square of at most ``MAX_PIXELS`` pixels (Pillow's limit: a batch of larger
    images would not fit in memory)."""
    if size < 2:
        raise ValueError(f"must be >= 2, got {size}")
    if size * size > MAX_PIXELS:
        raise ValueError(
            f"{size} x {size} = {size * size:,} pixels is over {MAX_PIXELS:,} (Pillow's limit); "
            f"lower image_size (what every image is resized to)"
        )


def fits_image(instance, attribute, augment: AugmentConfig | None) -> None:
    """Validator: the crop is no larger than the decoded image (``data.image_size``)."""
    if augment is not None and crop_size(augment, instance.image_size) > instance.image_size:
        raise ValueError(
            f"random_resized_crop.size = {crop_size(augment, instance.image_size)} is larger than "
            f"data.image_size = {instance.image_size}; raise image_size (what is decoded) or lower the crop size"
        )


# -- config ----------------------------------------------------------------


@DATASETS.register("image_folder")
@attrs.frozen
class ImageFolderConfig:
    """``[data] kind = "image_folder"``: image files under ``path``.

    Splits: ``val_path`` if set (training from ``path/train`` when it exists, else ``path``); else ``path/train`` and ``path/val``
    (or ``training``; ``validation``, ``valid``; in any case) if both exist; else a per-class ``val_fraction`` of the files (fixed by
    ``data_seed``, not by the run's seed). ``prepare = "shapes"`` writes the
    synthetic shapes there first when ``path`` is missing or empty;
    ``prepare = "photos"``, the photo-like JPEGs (``craft.data.photos``).
    ``num_threads`` threads decode up to ``prefetch`` batches ahead
    (``num_threads = 0``: decode in the caller). ``cache`` keeps decoded,
    resized images in memory (``N * C * S * S`` bytes) after their first read.
    ``skip_unreadable`` leaves out files that do not decode, with a warning
    that counts them, instead of stopping at the first (it decodes every file
    once when the data is built). A file whose header claims more than
    ``max_pixels`` pixels is unreadable (refused before it is decoded).
    Formats: JPEG, PNG, WebP, BMP, GIF (first frame), TIFF (first page).
    ``augment`` (``[data.augment]``): training images are augmented per image
    (``craft.data.augment``), in the decoding threads (``augment_on =
    "host"``) or on the device; val images are centre-cropped to the crop size.
    """

    path: str
    batch_size: int = attrs.field(default=128, validator=checks.at_least(1))
    image_size: int = attrs.field(default=32, validator=image_side)
    channels: int = attrs.field(default=3, validator=checks.channels)
    labels: str = attrs.field(default="folders", validator=checks.one_of("folders", "prefix"))
    val_path: str | None = None
    val_fraction: float = attrs.field(default=0.1, validator=checks.fraction)
    prepare: str | None = attrs.field(default=None, validator=checks.one_of(None, "shapes", "photos"))
    mean: list[float] = attrs.field(factory=lambda: [0.5], validator=checks.per_channel)
    std: list[float] = attrs.field(factory=lambda: [0.5], validator=checks.per_channel)
    num_threads: int = attrs.field(default=2, validator=checks.at_least(0))
    prefetch: int = attrs.field(default=4, validator=checks.at_least(1))
    cache: bool = False
    data_seed: int = 0
    skip_unreadable: bool = False
    max_pixels: int = attrs.field(default=MAX_PIXELS, validator=checks.at_least(1))
    augment: AugmentConfig | None = attrs.field(default=None, validator=fits_image)
    augment_on: str = attrs.field(default="host", validator=checks.one_of("host", "device"))

    def build(self, split: str, *, seed: int, rank: int = 0, world_size: int = 1) -> TrainBatches | EvalBatches:
        """Batches ``{"image": float32 (B, C, S, S), "label": int64 (B,)}`` of ``split``."""
        checks.check_split(split)
        train, chosen = self.listing(split)
        classes = sorted(set(train.names))
        if split == "val":
            unknown = sorted(set(chosen.names) - set(classes))
            if unknown:
                raise checks.UnknownClasses(
                    f"val images in {chosen.folder} have classes unknown to the train split: {unknown[:5]}"
                    f"{' ...' if len(unknown) > 5 else ''}; add them to train or remove them from val", unknown
                )
            if not chosen.files:  # only a val_fraction of train can be empty
                raise empty_val(self.path, train.names, self.val_fraction)
        if self.skip_unreadable:
            chosen = drop_unreadable(chosen, self.channels, self.num_threads, self.max_pixels)
        files = chosen.files
        position = {name: k for k, name in enumerate(classes)}
        labels = torch.tensor([position[n] for n in chosen.names], dtype=torch.int64)
        images = DecodedImages(
            files, image_size=self.image_size, channels=self.channels, cache=self.cache, max_pixels=self.max_pixels
        )
        load, pass_epoch = image_load(
            images, labels, train=split == "train", seed=seed, augment=self.augment, augment_on=self.augment_on,
            image_size=self.image_size, mean=self.mean, std=self.std,
        )
        executor = data_threads(self.num_threads, f"craft-data-{split}")
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
        if split == "train":
            try:
                batches = TrainBatches(len(files), load, seed=seed, pass_epoch=pass_epoch, **common)
            except ValueError as e:  # too few images: say what the folder held
                if executor is not None:
                    executor.shutdown(wait=False)
                raise ValueError(f"{e} ({chosen.summary()})") from None
        else:
            batches = EvalBatches(len(files), load, **common)
        batches.summary = chosen.summary()
        return batches

    def listing(self, split: str) -> tuple[Listing, Listing]:
        """``(train listing, split's listing)``: the train one fixes the classes."""
        root = Path(self.path)
        if self.prepare is not None:
            prepare_shapes(root, image_size=self.image_size, seed=self.data_seed, what=self.prepare)
        if not root.exists():
            raise FileNotFoundError(
                f"data.path {root} does not exist; point it at a folder of images, or for craft's synthetic "
                f"shapes there, run `craft prepare shapes {root}` or set prepare = \"shapes\" in [data]"
            )
        if not root.is_dir():
            raise FileNotFoundError(f"data.path {root} is not a folder; point it at a folder of images")
        train_folder = split_folder(root, TRAIN_FOLDERS)  # train/ (or Train/, training/)
        if self.val_path is not None:  # a prepared folder's train/ stays its train split
            train_root, val_root = train_folder or root, Path(self.val_path)
        elif train_folder is not None and split_folder(root, VAL_FOLDERS) is not None:
            train_root, val_root = train_folder, split_folder(root, VAL_FOLDERS)
        else:  # one folder: hold out a seeded fraction of it
            listing = list_images(train_folder or root, self.labels)
            train_pos, val_pos = split_files(listing.names, self.val_fraction, self.data_seed)
            train = listing.subset(train_pos)  # what the folder left out is said once, on the train line
            return train, train if split == "train" else listing.subset(val_pos)._replace(left_out=Counter())
        if not val_root.exists():
            raise FileNotFoundError(f"data.val_path {val_root} does not exist; fix the path or unset it")
        train = list_images(train_root, self.labels)
        val_key = "data.val_path" if self.val_path is not None else "data.path"
        return train, train if split == "train" else list_images(val_root, self.labels, key=val_key)


def prepare_shapes(root: Path, *, image_size: int, seed: int, what: str = "shapes") -> None:
    """Write the synthetic ``what`` folder (shapes or photos) at ``root`` unless it already has something in it.

    Under torchrun, local rank 0 of each node writes while the other ranks
    wait (``once_per_node``); a folder another writer finished first is reused.
    """
    once_per_node(lambda: _write_unless_present(root, image_size=image_size, seed=seed, what=what))


def _write_unless_present(root: Path, *, image_size: int, seed: int, what: str) -> None:
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        return
    if what == "photos":
        from craft.data.photos import PHOTO_SIZE, PREPARED_PHOTOS, write_photos_folder

        counts, size, write = PREPARED_PHOTOS, max(image_size, PHOTO_SIZE), write_photos_folder
    else:
        counts, size, write = PREPARED_SHAPES, image_size, write_shapes_folder
    # A one-time pause of seconds: say why, as a dataset download would, and that a data.path
    # mistyped for the user's own images gets synthetic ones (later runs reuse them without a word).
    count, state = counts["num_train"] + counts["num_val"], "is an empty folder" if root.exists() else "does not exist"
    print(f"craft: data.path {root} {state}: prepare = \"{what}\" writes {count} synthetic {what} images there (once; "
          "later runs reuse them); to train on your own images, fix data.path and unset prepare (--data.prepare=None)",
          file=sys.stderr)
    try:
        write(root, image_size=size, seed=seed, **counts)
    except FileExistsError:
        if not (root.is_dir() and any(root.iterdir())):
            raise
        # Another process (another job on a shared disk) wrote it first: reuse theirs, it is complete.
