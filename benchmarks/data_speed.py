"""craft's image_folder train iterator against torchvision's ImageFolder + DataLoader.

Both read the same folder of PNGs written by ``write_shapes_folder`` (once at
32x32 and once at 128x128 sources), and both decode, convert to RGB, resize
to 32x32 (bilinear, antialiased), scale to float and normalize, shuffle and
batch (128, last partial batch dropped). The reference: ``DataLoader(
num_workers=2, persistent_workers=True)`` over ``ImageFolder`` with the
equivalent ``transforms.v2`` pipeline, decoding with the same decoder as
craft (torchvision's ``decode_image``, as the ``loader``); a second,
labelled row decodes with ImageFolder's default PIL loader. craft: the
default config (2 decoding threads, 4 batches prefetched), cache off on both
sides.

A third case reads 128x128 photo-like JPEGs (``write_photos_folder``) and
augments them for training: resize to 128, a random resized crop to 112
(scale 0.35-1), a horizontal flip (p 0.5) and colour jitter (0.2), then
normalize. craft draws each image's parameters in its decoding threads
(``[data.augment]``); the reference is the same ``transforms.v2`` pipeline
per image in ``DataLoader(num_workers=2)`` (per-image randomness on both sides).

Each round times one epoch of each contender, the order reversed every
other round, each started cold (craft: ``load_state_dict`` drops the
prefetched batches; DataLoader: a new epoch iterator). Prints images/s as
median (min-max) over rounds, and craft's speed-up as median (min-max) of
the per-round ratios.

    python benchmarks/data_speed.py [--images 3000] [--rounds 5] [--threads 2] [--dir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torchvision.transforms.v2 as T
from common import print_table, ratio, spread
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.io import ImageReadMode, decode_image

from craft.data import ImageFolderConfig, write_shapes_folder
from craft.data.augment import AugmentConfig, ColorJitter, RandomResizedCrop
from craft.data.photos import write_photos_folder

BATCH, SIZE, OURS = 128, 32, "craft image_folder"
PHOTO, CROP, SCALE, JITTER = 128, 112, (0.35, 1.0), 0.2
AUGMENT = AugmentConfig(
    random_resized_crop=RandomResizedCrop(size=CROP, scale=list(SCALE)), horizontal_flip=0.5,
    color_jitter=ColorJitter(brightness=JITTER, contrast=JITTER, saturation=JITTER),
)
REFERENCES = {"ImageFolder + DataLoader, decode_image": "decode_image", "ImageFolder + DataLoader, PIL": "pil"}


def ours(root: Path, threads: int, augmented: bool = False):
    """One epoch of craft's train iterator, started cold."""
    options = {"image_size": PHOTO, "augment": AUGMENT} if augmented else {"image_size": SIZE}
    ds = ImageFolderConfig(path=str(root), batch_size=BATCH, num_threads=threads, **options).build("train", seed=0)
    epoch = [0]

    def run() -> int:
        ds.load_state_dict({"epoch": epoch[0], "index": 0})  # drop what was prefetched meanwhile
        epoch[0] += 1
        return sum(next(ds)["image"].shape[0] for _ in range(ds.batches_per_epoch))

    return run


def decode_rgb(path: str) -> torch.Tensor:
    """uint8 ``(3, H, W)``: torchvision's decoder, as craft's ``read_image`` uses."""
    return decode_image(path, mode=ImageReadMode.RGB)


def theirs(root: Path, workers: int, decoder: str, augmented: bool = False):
    """One epoch of the usual torchvision pipeline; ``decoder``: ``decode_image`` or ``pil``."""
    augment = [
        T.RandomResizedCrop(CROP, scale=SCALE, antialias=True), T.RandomHorizontalFlip(0.5),
        T.ColorJitter(brightness=JITTER, contrast=JITTER, saturation=JITTER),
    ]
    size = PHOTO if augmented else SIZE
    transform = T.Compose(
        [
            T.ToImage(),  # PIL image -> tensor; a tensor passes through
            T.Resize((size, size), antialias=True),
            *(augment if augmented else []),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize([0.5], [0.5]),
        ]
    )
    loader = DataLoader(
        ImageFolder(str(root / "train"), transform=transform, **({"loader": decode_rgb} if decoder != "pil" else {})),
        batch_size=BATCH,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=True,
        generator=torch.Generator().manual_seed(0),
    )
    return lambda: sum(images.shape[0] for images, _ in loader)


def seconds_per_image(run) -> float:
    start = time.perf_counter()
    count = run()
    return (time.perf_counter() - start) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="train images per folder")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="craft's decoding threads")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--photos", type=int, default=2000, help="train JPEGs of the augmented case (0: skip it)")
    parser.add_argument("--dir", help="where to write the folders (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.dir or tmp)
        contenders = {}
        for source in (32, 128):
            root = base / f"shapes{source}"
            if not root.exists():
                start = time.perf_counter()
                write_shapes_folder(root, num_train=args.images, num_val=0, image_size=source, seed=0)
                seconds = time.perf_counter() - start
                print(f"wrote {args.images} PNGs of {source}x{source} in {seconds:.1f} s", flush=True)
            case = f"{source}x{source} PNG"
            contenders[case] = {OURS: ours(root, args.threads)}
            for name, decoder in REFERENCES.items():
                contenders[case][name] = theirs(root, args.workers, decoder)
        if args.photos:
            root = base / f"photos{PHOTO}"
            if not root.exists():
                write_photos_folder(root, num_train=args.photos, num_val=0, image_size=PHOTO, seed=0)
                print(f"wrote {args.photos} JPEGs of {PHOTO}x{PHOTO}", flush=True)
            case = f"{PHOTO}x{PHOTO} JPEG, augmented to {CROP}"
            contenders[case] = {OURS: ours(root, args.threads, augmented=True)}
            name = next(iter(REFERENCES))
            contenders[case][name] = theirs(root, args.workers, REFERENCES[name], augmented=True)
        for runs in contenders.values():
            for run in runs.values():
                run()  # warm-up: page cache, worker start-up

        seconds = {(source, name): [] for source in contenders for name in contenders[source]}
        for r in range(args.rounds):
            for source, runs in contenders.items():
                for name in list(runs)[:: 1 if r % 2 == 0 else -1]:  # alternate who goes first
                    seconds[source, name].append(seconds_per_image(runs[name]))

    print(
        f"\nimages/s to float batches of {BATCH} (32x32; augmented: {CROP}x{CROP}), {args.rounds} alternating epochs; "
        f"cells: median (min-max) over rounds; {torch.get_num_threads()} torch threads, craft {args.threads} "
        f"decoding threads, DataLoader {args.workers} workers, torch {torch.__version__}"
    )
    print_table(
        ["source images", "contender", "images/s", "craft vs this"],
        [
            [
                source, name, spread([1 / s for s in seconds[source, name]], fmt=",.0f"),
                "" if name == OURS else ratio(seconds[source, name], seconds[source, OURS]),
            ]
            for source in contenders
            for name in contenders[source]
        ],
    )

if __name__ == "__main__":
    main()
