"""End to end: training images/s of custom_cnn.toml against the strongest imperative trainer.

Both train the seed CNN (AdamW, clipping, the experiment's warmup-cosine
schedule, batch 128) from the same initial weights on the same folder of
32x32 shape PNGs, with the same data handling: every image decoded once with
torchvision's ``decode_image`` and kept in memory as uint8 (craft:
``cache = true`` from experiments/custom_cnn.toml; the reference: the whole
train split decoded up front into one tensor), normalized per batch, in the
same shuffled order (``epoch_order(n, seed, epoch)``, one permutation per epoch).

craft: the experiment's own parts (``image_folder`` iterator and the compiled
step, donated, as ``python -m craft`` runs them). The reference
(``common.imperative_step``): ``AdamW(fused=True)``, ``clip_grad_norm_(foreach=
True)``, run (b) eager, (c) with ``torch.compile(model)``, (d) as one compiled
step. Every contender first trains one whole epoch (compilation, craft's cache
filled), then rounds of ``--steps`` steps alternate. Prints images/s as
median (min-max) over rounds and speed-ups as median (min-max) of per-round ratios.

    python benchmarks/train_speed.py [--images 6000] [--steps 100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from common import COMPILED_MODEL, COMPILED_STEP, EAGER, imperative_step, print_table, ratio, spread
from torchvision.datasets import ImageFolder
from torchvision.io import ImageReadMode, decode_image

from craft.config import build, load
from craft.data import write_shapes_folder
from craft.data.batching import epoch_order
from craft.optim import default_decay_mask
from craft.parts import build_data, build_parts, to_device
from craft.step import init_state, make_train_step

EXPERIMENT = Path(__file__).resolve().parent.parent / "experiments" / "custom_cnn.toml"
OURS = "craft: python -m craft experiments/custom_cnn.toml"
REFERENCES = {
    "(b) imperative, eager": EAGER, "(c) imperative, compile(model)": COMPILED_MODEL,
    "(d) imperative, compile(step)": COMPILED_STEP,
}


def ours(exp, parts):
    """``run(steps) -> images seen`` with craft's iterator and step."""
    data = build_data(exp, "train")
    step = make_train_step(
        parts.model, parts.task.loss, parts.optimizer, inputs=parts.task.inputs, compile=exp.train.compile,
        donate=True,  # as the run (craft/run.py; no CUDA graphs here)
    )
    box = [init_state(parts.model, parts.optimizer, seed=exp.seed)]

    def run(steps: int) -> int:
        seen = 0
        for _ in range(steps):
            batch = next(data)
            box[0], _ = step(box[0], to_device(batch, parts.device))
            seen += batch["label"].shape[0]
        return seen

    return run, data.batches_per_epoch


def decoded(root: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every train image, decoded once: uint8 ``(N, 3, size, size)`` and int64 labels ``(N,)``."""
    folder = ImageFolder(str(root / "train"))
    images = [decode_image(path, mode=ImageReadMode.RGB) for path, _ in folder.samples]
    images = TF.resize(torch.stack(images), [size, size], antialias=True)
    return images, torch.tensor(folder.targets)


def reference(exp, model: torch.nn.Module, root: Path, mode: str):
    """``run(steps) -> images seen`` of the imperative trainer over the in-memory images."""
    images, labels = decoded(root, exp.data.config.image_size)
    batch_size, seed, opt = exp.data.config.batch_size, exp.seed, exp.optim.config
    schedule = build(exp.schedule, exp.optim.lr, total_steps=exp.train.steps)  # the run's schedule, as a function
    params = dict(model.named_parameters())
    mask = default_decay_mask(params)  # the tensors craft's adamw decays
    groups = [
        {"params": [p for k, p in params.items() if mask[k]], "weight_decay": opt.weight_decay},
        {"params": [p for k, p in params.items() if not mask[k]], "weight_decay": 0.0},
    ]
    step, _ = imperative_step(
        model, lambda logits, b: torch.nn.functional.cross_entropy(logits, b["label"]), mode=mode,
        clip=opt.clip_norm, inputs=lambda b: (b["image"],), param_groups=groups,
        schedule=lambda count: float(schedule(torch.tensor(count))),
        lr=exp.optim.lr, betas=(opt.b1, opt.b2), eps=opt.eps,
    )
    per_epoch, position = len(labels) // batch_size, [0]

    def run(steps: int) -> int:
        for _ in range(steps):
            epoch, index = divmod(position[0], per_epoch)
            chosen = epoch_order(len(labels), seed, epoch)[index * batch_size : (index + 1) * batch_size]
            x = TF.normalize(TF.to_dtype(images[chosen], torch.float32, scale=True), [0.5], [0.5])
            step({"image": x, "label": labels[chosen]})
            position[0] += 1
        return steps * batch_size

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--steps", type=int, default=100, help="timed steps per contender and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_shapes_folder(Path(tmp) / "shapes", num_train=args.images, num_val=200, image_size=32, seed=0)
        exp = load(EXPERIMENT, {"data.path": str(root)})
        parts = build_parts(exp)
        template = copy.deepcopy(parts.model)  # the same initial weights for every contender
        run, per_epoch = ours(exp, parts)
        runs = {OURS: run}
        for name, mode in REFERENCES.items():
            runs[name] = reference(exp, copy.deepcopy(template), root, mode)
        for name, run in runs.items():
            start = time.perf_counter()
            run(per_epoch)  # compilation; craft's cache filled
            print(f"{name}: first epoch ({per_epoch} steps) {time.perf_counter() - start:.1f} s", flush=True)
        seconds = {name: [] for name in runs}  # per round: seconds per image
        for r in range(args.rounds):
            for name in list(runs)[:: 1 if r % 2 == 0 else -1]:
                start = time.perf_counter()
                seen = runs[name](args.steps)
                seconds[name].append((time.perf_counter() - start) / seen)
    print(
        f"\ntraining images/s, SmallCNN, batch 128, {args.images} 32x32 PNGs decoded once into memory on both sides, "
        f"{args.rounds} alternating rounds of {args.steps} steps, after one epoch each; cells: median (min-max) over "
        f"rounds; {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print_table(
        ["trainer", "images/s", *(f"craft vs {n[:3]}" for n in REFERENCES)],
        [
            [name, spread([1 / s for s in seconds[name]], fmt=",.0f"),
             *(ratio(seconds[ref], seconds[OURS]) if name == OURS else "" for ref in REFERENCES)]
            for name in runs
        ],
    )


if __name__ == "__main__":
    main()
