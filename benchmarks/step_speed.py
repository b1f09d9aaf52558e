"""craft's compiled train step against the strongest imperative PyTorch loop.

The seed's small CNN on 32x32x3 inputs, AdamW with global-norm clipping, the
same initial weights and batch for every variant. craft: its compiled
functional step (plain; donated buffers; inductor's C++ wrapper). The
reference, ``common.imperative_step``: ``zero_grad``, forward, backward,
``clip_grad_norm_(foreach=True)``, ``AdamW(fused=True)``, run (b) eager,
(c) with ``torch.compile(model)``, and (d) as one ``torch.compile``'d step
(forward, backward, clipping and a foreach AdamW, the compiled-optimizer
recipe). Each precision (fp32, bf16 autocast) is compared with the reference
loops of the same precision. Contenders alternate in one process over
``--rounds`` rounds; prints ms/step as median (min-max) over rounds,
first-call time (compilation included), peak memory of one step (tensors
live between steps + the step's own peak), and speed-ups over (b), (c) and
(d), each as the median (min-max) of the per-round ratios.

    python benchmarks/step_speed.py [--batch 128] [--rounds 8] [--steps 10] [--precisions fp32,bf16]
        [--device cpu] [--profile]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
import torch.nn.functional as F
from common import (
    COMPILED_MODEL,
    COMPILED_STEP,
    EAGER,
    MODES,
    imperative_step,
    interleaved_rounds,
    peak_bytes_during,
    print_table,
    ratio,
    spread,
    timed,
)

from craft.models import SmallCNN
from craft.optim import adamw
from craft.step import init_state, make_train_step
from craft.tree import nbytes

LR, WEIGHT_DECAY, CLIP = 1e-3, 0.01, 1.0
LETTER = {EAGER: "(b)", COMPILED_MODEL: "(c)", COMPILED_STEP: "(d)"}
CUDA_GRAPHS = "craft step, mode=reduce-overhead"  # memory lives in a pool made at recording: not measured


def loss_fn(logits, batch):
    return F.cross_entropy(logits, batch["target"])


def reference_name(mode: str, precision: str) -> str:
    return f"{LETTER[mode]} imperative, {mode}, {precision}"


def imperative(model: torch.nn.Module, mode: str, precision: str = "fp32"):
    """The reference loop; returns (step(batch), bytes held between steps)."""
    return imperative_step(
        model, loss_fn, mode=mode, clip=CLIP, bf16=precision == "bf16", lr=LR, weight_decay=WEIGHT_DECAY
    )


def functional(model: torch.nn.Module, **options):
    """craft's step (decay on every tensor, as torch's AdamW); returns (step(batch), bytes held)."""
    tx = adamw(LR, weight_decay=WEIGHT_DECAY, clip_norm=CLIP, mask=lambda p: {k: True for k in p})
    train_step = make_train_step(model, loss_fn, tx, **options)
    box = [init_state(model, tx)]

    def step(batch):
        box[0], _ = train_step(box[0], batch)

    return step, lambda: nbytes(box[0])


def param_heavy_memory(device: torch.device) -> None:
    """Where parameters outweigh activations, donation is what keeps memory flat."""
    torch.manual_seed(0)
    template = torch.nn.Sequential(
        torch.nn.Linear(1024, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048), torch.nn.ReLU(),
        torch.nn.Linear(2048, 10),
    ).to(device)
    batch = {"input": torch.randn(8, 1024, device=device), "target": torch.randint(0, 10, (8,), device=device)}
    eager = reference_name(EAGER, "fp32")
    variants = {
        "craft step": lambda m: functional(m),
        "craft step, donate=True": lambda m: functional(m, donate=True),
        eager: lambda m: imperative(m, EAGER),
    }
    peak = {}
    for name, build in variants.items():
        step, held = build(copy.deepcopy(template))
        step(batch), step(batch)
        peak[name] = held() + peak_bytes_during(lambda: step(batch), device)
    params = nbytes(list(template.parameters()))
    print(f"\nparameter-heavy MLP (1024-2048-2048-10, batch 8), AdamW: params {params / 2**20:.1f} MiB")
    print_table(
        ["variant", "peak MiB", "peak / params", "within (b) + params"],
        [
            [name, f"{p / 2**20:.1f}", f"{p / params:.1f}", "yes" if p <= peak[eager] + params else "NO"]
            for name, p in peak.items()
        ],
    )


def builders(precisions: list[str], device: torch.device) -> dict[str, tuple[str, object]]:
    """name -> (precision, build(model) -> (step(batch), held())), craft rows first."""
    out = {}
    for precision in precisions:
        suffix = "" if precision == "fp32" else f", {precision}"
        out[f"craft step{suffix}"] = (precision, lambda m, p=precision: functional(m, precision=p))
        if precision == "fp32":
            out["craft step, donate=True"] = (precision, lambda m: functional(m, donate=True))
            out["craft step, cpp_wrapper"] = (
                precision, lambda m: functional(m, compile={"options": {"cpp_wrapper": True}})
            )
            if device.type == "cuda":  # CUDA graphs: the whole step as one replay
                out[CUDA_GRAPHS] = (precision, lambda m: functional(m, compile={"mode": "reduce-overhead"}))
    for precision in precisions:
        for mode in MODES:
            out[reference_name(mode, precision)] = (precision, lambda m, mo=mode, p=precision: imperative(m, mo, p))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=8, help="alternating timing rounds")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", action="store_true", help="print the top ops of craft's step")
    args = parser.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(0)
    template = SmallCNN(num_classes=10).to(device)
    batch = {
        "input": torch.randn(args.batch, 3, 32, 32, device=device),
        "target": torch.randint(0, 10, (args.batch,), device=device),
    }
    variants = builders(args.precisions.split(","), device)
    steps, first, peak = {}, {}, {}
    for name, (_, build) in variants.items():
        step, held = build(copy.deepcopy(template))
        steps[name] = lambda step=step: step(batch)
        first[name] = timed(steps[name], device)
        print(f"built {name}: first call {first[name]:.1f} s", flush=True)
        steps[name]()  # a second step: grads and optimizer state now exist in every variant
        peak[name] = held() + peak_bytes_during(steps[name], device)
    seconds = interleaved_rounds(steps, device, warmup=args.warmup, rounds=args.rounds, steps=args.steps)

    print(
        f"\nSmallCNN, batch {args.batch}, AdamW + clip_norm, {device}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; per round the median of {args.steps} steps, {args.rounds} interleaved rounds; "
        "cells: median (min-max) over rounds; each row against the references of its own precision"
    )
    rows = []
    for name, (precision, _) in variants.items():
        refs = [seconds[reference_name(mode, precision)] for mode in MODES]
        rows.append([
            name, precision, spread(seconds[name], 1e3), f"{first[name]:.1f}",
            "n/a" if name == CUDA_GRAPHS else f"{peak[name] / 2**20:.2f}",
            f"{args.batch / statistics.median(seconds[name]):,.0f}", *(ratio(r, seconds[name]) for r in refs),
        ])
    print_table(
        ["variant", "precision", "ms/step", "first call s", "peak MiB", "samples/s", "vs (b) eager",
         "vs (c) compile(model)", "vs (d) compile(step)"],
        rows,
    )
    param_bytes = nbytes(list(template.parameters()))
    for precision in args.precisions.split(","):
        budget = peak[reference_name(EAGER, precision)] + param_bytes
        print(f"\n{precision} memory budget for craft: (b)'s peak + one copy of the params = {budget / 2**20:.2f} MiB")
        for name, (p, _) in variants.items():
            if p == precision and name.startswith("craft") and name != CUDA_GRAPHS:
                verdict = "within" if peak[name] <= budget else "OVER"
                print(f"  {name}: {peak[name] / 2**20:.2f} MiB, {verdict} budget")

    param_heavy_memory(device)

    if args.profile:
        for _ in range(3):
            steps["craft step"]()
        with torch.profiler.profile() as prof:
            for _ in range(10):
                steps["craft step"]()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
