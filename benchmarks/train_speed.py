"""End to end: training images/s of custom_cnn.toml vs the seed-style imperative trainer.

Both train the seed CNN (AdamW, clipping, batch 128) on the same folder of
32x32 shape PNGs. craft: the experiment's own parts (``image_folder``
iterator, its settings from experiments/custom_cnn.toml, and the compiled,
donated train step, as ``python -m craft`` runs them). The seed-style
trainer: ``ImageFolder`` + ``DataLoader(num_workers=2)`` feeding an eager
``zero_grad / forward / backward / clip_grad_norm_ / step`` loop. Rounds
alternate; prints the median images/s.

    python benchmarks/train_speed.py [--images 6000] [--steps 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from common import print_table
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from craft.config import load
from craft.data import write_shapes_folder
from craft.models import SmallCNN
from craft.parts import build_data, build_parts, to_device
from craft.step import init_state, make_train_step

EXPERIMENT = Path(__file__).resolve().parent.parent / "experiments" / "custom_cnn.toml"
OURS, THEIRS = "craft: python -m craft experiments/custom_cnn.toml", "seed-style trainer: DataLoader + eager loop"


def ours(root: Path):
    exp = load(EXPERIMENT, {"data.path": str(root)})
    parts = build_parts(exp)
    data = build_data(exp, "train")
    step = make_train_step(
        parts.model, parts.task.loss, parts.optimizer, inputs=parts.task.inputs, compile=exp.train.compile, donate=True
    )
    box = [init_state(parts.model, parts.optimizer, seed=exp.seed)]

    def run(steps: int) -> int:
        seen = 0
        for _ in range(steps):
            batch = next(data)
            box[0], _ = step(box[0], to_device(batch, parts.device))
            seen += batch["label"].shape[0]
        return seen

    return run


def theirs(root: Path):
    transform = T.Compose([T.ToImage(), T.Resize((32, 32), antialias=True), T.ToDtype(torch.float32, scale=True),
                           T.Normalize([0.5], [0.5])])
    loader = DataLoader(ImageFolder(str(root / "train"), transform=transform), batch_size=128, shuffle=True,
                        drop_last=True, num_workers=2, persistent_workers=True)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))  # epoch after epoch
    model = SmallCNN(num_classes=len(loader.dataset.classes))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)

    def run(steps: int) -> int:
        seen = 0
        for _ in range(steps):
            images, labels = next(batches)
            opt.zero_grad()
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            seen += labels.shape[0]
        return seen

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--steps", type=int, default=100, help="timed steps per contender and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_shapes_folder(Path(tmp) / "shapes", num_train=args.images, num_val=200, image_size=32, seed=0)
        runs = {OURS: ours(root), THEIRS: theirs(root)}
        for run in runs.values():
            run(20)  # compile, worker start-up, first decodes
        rates = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                seen = run(args.steps)
                rates[name].append(seen / (time.perf_counter() - start))
    median = {name: statistics.median(r) for name, r in rates.items()}
    print(f"\ntraining images/s, SmallCNN, batch 128, {args.images} 32x32 PNGs, median of {args.rounds} rounds "
          f"of {args.steps} steps; {torch.get_num_threads()} threads, torch {torch.__version__}")
    print_table(["trainer", "images/s", "vs seed-style"],
                [[name, f"{median[name]:,.0f}", f"{median[name] / median[THEIRS]:.2f}x"] for name in runs])


if __name__ == "__main__":
    main()
