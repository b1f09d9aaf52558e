"""craft's image_folder train iterator against torchvision's ImageFolder + DataLoader.

Both read the same folder of PNGs written by ``write_shapes_folder`` (once at
32x32 and once at 128x128 sources), and both decode, convert to RGB, resize
to 32x32 (bilinear, antialiased), scale to float and normalize, shuffle and
batch (128, last partial batch dropped). The contender: ``DataLoader(
num_workers=2, persistent_workers=True)`` over ``ImageFolder`` with the
equivalent ``transforms.v2`` pipeline on PIL images. craft: the default
config (2 decoding threads, 4 batches prefetched), cache off.

Each round times one epoch of each contender, in alternating order, each
started cold (craft: ``load_state_dict`` drops the prefetched batches;
DataLoader: a new epoch iterator). Prints the median images/s over rounds.

    python benchmarks/data_speed.py [--images 3000] [--rounds 5] [--threads 2] [--dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision.transforms.v2 as T
from common import print_table
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from craft.data import ImageFolderConfig, write_shapes_folder

BATCH, SIZE, OURS, THEIRS = 128, 32, "craft image_folder", "ImageFolder + DataLoader"


def ours(root: Path, threads: int):
    """One epoch of craft's train iterator, started cold."""
    ds = ImageFolderConfig(path=str(root), batch_size=BATCH, image_size=SIZE, num_threads=threads).build(
        "train", seed=0
    )
    epoch = [0]

    def run() -> int:
        ds.load_state_dict({"epoch": epoch[0], "index": 0})  # drop what was prefetched meanwhile
        epoch[0] += 1
        return sum(next(ds)["image"].shape[0] for _ in range(ds.batches_per_epoch))

    return run


def theirs(root: Path, workers: int):
    """One epoch of the usual torchvision pipeline."""
    transform = T.Compose(
        [
            T.ToImage(),
            T.Resize((SIZE, SIZE), antialias=True),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize([0.5], [0.5]),
        ]
    )
    loader = DataLoader(
        ImageFolder(str(root / "train"), transform=transform),
        batch_size=BATCH,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=True,
        generator=torch.Generator().manual_seed(0),
    )
    return lambda: sum(images.shape[0] for images, _ in loader)


def rate(run) -> float:
    start = time.perf_counter()
    count = run()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="train images per folder")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="craft's decoding threads")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
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
            contenders[source] = {OURS: ours(root, args.threads), THEIRS: theirs(root, args.workers)}
            for run in contenders[source].values():
                run()  # warm-up: page cache, worker start-up

        rates = {(source, name): [] for source in contenders for name in contenders[source]}
        for r in range(args.rounds):
            for source, runs in contenders.items():
                for name in list(runs)[:: 1 if r % 2 == 0 else -1]:  # alternate who goes first
                    rates[source, name].append(rate(runs[name]))

    median = {key: statistics.median(values) for key, values in rates.items()}
    print(
        f"\nimages/s to 32x32 float batches of {BATCH}, median of {args.rounds} alternating epochs of "
        f"{args.images} images; {torch.get_num_threads()} torch threads, craft {args.threads} decoding threads, "
        f"DataLoader {args.workers} workers, torch {torch.__version__}"
    )
    print_table(
        ["source images", OURS, THEIRS, "ratio"],
        [
            [
                f"{source}x{source} PNG",
                f"{median[source, OURS]:,.0f}",
                f"{median[source, THEIRS]:,.0f}",
                f"{median[source, OURS] / median[source, THEIRS]:.2f}x",
            ]
            for source in contenders
        ],
    )


if __name__ == "__main__":
    main()
