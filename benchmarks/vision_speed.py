"""A ResNet-18-sized train step: craft's compiled functional step against the imperative loop.

The model is ``craft.models.ResNet`` at ResNet-18 size (ImageNet stem, widths
64-512, two basic blocks a stage, BatchNorm; 11.7M parameters with 1000
classes), channels-last, the same initial weights and the same batch (data
already on the device) for every contender. AdamW with global-norm clipping.
craft: ``make_train_step`` compiled (and ``donate=True``). The reference,
``common.imperative_step``: ``zero_grad``, forward, backward,
``clip_grad_norm_(foreach=True)``, ``AdamW(fused=True)``, (b) eager, (c)
with ``torch.compile(model)``, and (d) the whole step (forward, backward,
clip, the optimizer update) under one ``torch.compile`` (foreach AdamW with a
tensor learning rate, the compiled-optimizer recipe). Every row runs under the
same precision (bf16 autocast by default on CUDA, fp32 on the CPU).
Contenders alternate in one process over ``--rounds`` rounds; prints images/s
as median (min-max) over rounds, first-call seconds (compilation included),
peak memory of one step (tensors held between steps + the step's own peak),
the loss of step ``--check_steps`` (its forward, after ``--check_steps`` - 1
updates) from the same weights on the same batch, and each craft row's speed-up over each reference and over the
best (fastest median) one (median (min-max) of per-round ratios); last, the
best craft row against the best reference: speed-up, loss difference, memory.

    python benchmarks/vision_speed.py                       # CPU, tiny: 32 px, batch 8, widths 8-64
    python benchmarks/vision_speed.py --eager_only --rounds 1 --steps 1   # seconds: craft uncompiled vs eager
    python benchmarks/vision_speed.py --device cuda --image_size 224 --batch 256     # ResNet-18, bf16
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
import torch.nn.functional as F
from common import (
    COMPILED_MODEL, COMPILED_STEP, EAGER, imperative_step, interleaved_rounds, peak_bytes_during, print_table, ratio,
    spread, timed,
)

from craft.models.resnet import ResNet
from craft.optim import adamw
from craft.step import init_state, make_train_step
from craft.tree import nbytes

LR, WEIGHT_DECAY, CLIP, CLASSES = 1e-3, 0.01, 1.0, 1000
LETTER = {EAGER: "(b)", COMPILED_MODEL: "(c)", COMPILED_STEP: "(d)"}


def loss_fn(logits, batch):
    return F.cross_entropy(logits.float(), batch["target"])


def resnet18(device: torch.device, width: int = 64) -> torch.nn.Module:
    torch.manual_seed(0)
    widths = (width, 2 * width, 4 * width, 8 * width)
    return ResNet(CLASSES, 3, widths, blocks=2, imagenet_stem=True, channels_last=True).to(device)


def craft_step(model: torch.nn.Module, precision: str, **options):
    """craft's step (decay on every tensor, as torch's AdamW); returns (step(batch) -> loss, bytes held)."""
    tx = adamw(LR, weight_decay=WEIGHT_DECAY, clip_norm=CLIP, mask=lambda p: {k: True for k in p})
    train_step = make_train_step(model, loss_fn, tx, precision=precision, **options)
    box = [init_state(model, tx)]

    def step(batch):
        box[0], metrics = train_step(box[0], batch)
        return metrics["loss"]

    return step, lambda: nbytes(box[0])


def contenders(precision: str, eager_only: bool = False) -> dict:
    """name -> build(model) -> (step(batch) -> loss, held()); ``eager_only``: nothing compiled (a quick check)."""
    bf16 = precision == "bf16"
    if eager_only:
        out = {"craft step, compile=False": lambda m: craft_step(m, precision, compile=False)}
    else:
        out = {
            "craft step": lambda m: craft_step(m, precision),
            "craft step, donate=True": lambda m: craft_step(m, precision, donate=True),
        }
    for mode in (EAGER,) if eager_only else (EAGER, COMPILED_MODEL, COMPILED_STEP):
        out[f"{LETTER[mode]} imperative, {mode}"] = lambda m, mo=mode: imperative_step(
            m, loss_fn, mode=mo, clip=CLIP, bf16=bf16, lr=LR, weight_decay=WEIGHT_DECAY
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--width", type=int, default=None, help="the first stage's width (ResNet-18: 64, the CUDA default; CPU: 8)"
    )
    parser.add_argument("--eager_only", action="store_true", help="craft uncompiled against the eager loop only")
    parser.add_argument("--precision", default=None, help="fp32 or bf16 (default: bf16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per contender and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--check_steps", type=int, default=5, help="the step whose loss is compared (its forward, after N - 1 updates)")
    args = parser.parse_args()
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    torch.backends.cudnn.benchmark = True

    template = resnet18(device, args.width or (64 if device.type == "cuda" else 8))
    g = torch.Generator().manual_seed(0)
    batch = {
        "input": torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(device)
        .contiguous(memory_format=torch.channels_last),
        "target": torch.randint(0, CLASSES, (args.batch,), generator=g).to(device),
    }
    steps, first, peak, loss = {}, {}, {}, {}
    for name, build in contenders(precision, args.eager_only).items():
        step, held = build(copy.deepcopy(template))
        last = [None]
        first[name] = timed(lambda step=step: last.__setitem__(0, step(batch)), device)
        for _ in range(args.check_steps - 1):
            last[0] = step(batch)
        loss[name] = float(last[0])  # step check_steps's loss, from the same weights on the same batch
        peak[name] = held() + peak_bytes_during(lambda step=step: step(batch), device)
        steps[name] = lambda step=step: step(batch)
        print(f"built {name}: first call {first[name]:.1f} s, loss of step {args.check_steps} {loss[name]:.4f}",
              flush=True)
    seconds = interleaved_rounds(steps, device, warmup=args.warmup, rounds=args.rounds, steps=args.steps)

    report(args, template, precision, device, seconds, first, peak, loss)


def report(args, template, precision: str, device: torch.device, seconds: dict, first: dict, peak: dict, loss: dict):
    """The table (a row per contender; each craft row's speed-up over every reference and the best one)
    and the best craft row against the best reference."""
    params = sum(p.numel() for p in template.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(
        f"\nResNet-18 layout ({params / 1e6:.1f}M params), {args.image_size} px, batch {args.batch}, channels-last, "
        f"{precision}, AdamW + clip_norm; {name}; torch {torch.__version__}; per round the median of {args.steps} "
        f"steps, {args.rounds} interleaved rounds; cells: median (min-max) over rounds"
    )
    median = {n: statistics.median(s) for n, s in seconds.items()}
    refs = [n for n in seconds if not n.startswith("craft")]
    best = min(refs, key=median.get)
    print_table(
        ["contender", "images/s", "ms/step", "first call s", "peak MiB", f"loss@{args.check_steps}",
         *(f"vs {r.split(',')[0]}" for r in refs), f"vs best {best.split(' ')[0]}"],
        [
            [n, f"{args.batch / median[n]:,.0f}", spread(seconds[n], 1e3), f"{first[n]:.1f}",
             f"{peak[n] / 2**20:,.0f}", f"{loss[n]:.4f}",
             *("" if n in refs else ratio(seconds[r], seconds[n]) for r in [*refs, best])]
            for n in seconds
        ],
    )
    craft = min((n for n in seconds if n.startswith("craft")), key=median.get)
    print(f"\nbest craft ({craft}) vs best reference ({best}): {ratio(seconds[best], seconds[craft])}, "
          f"{args.batch / median[craft]:,.0f} images/s; loss@{args.check_steps} difference "
          f"{loss[craft] - loss[best]:+.4f}; peak memory {peak[craft] / peak[best]:.2f}x")


if __name__ == "__main__":
    main()
