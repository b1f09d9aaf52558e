"""craft's compiled train step against the usual imperative PyTorch loop.

The seed's small CNN on 32x32x3 inputs, AdamW with global-norm clipping:
craft's compiled functional step (pure; with donated buffers; with inductor's
C++ wrapper), (b) the imperative loop in eager mode (zero_grad, forward,
backward, clip_grad_norm_, step), and (c) the same loop with
``torch.compile(model)``; then craft and (b) again under bf16 autocast. Prints ms/step (median over alternating rounds
after warm-up), first-call time (compilation included), peak memory of one
step (tensors live between steps + the step's own peak), and speed-ups
relative to (b) and (c).

    python benchmarks/step_speed.py [--batch 128] [--rounds 8] [--device cpu] [--profile]
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from common import interleaved_medians, peak_bytes_during, print_table, tensor_bytes, timed

from craft.models import SmallCNN
from craft.optim import adamw
from craft.step import init_state, make_train_step
from craft.tree import nbytes

LR, WEIGHT_DECAY, CLIP = 1e-3, 0.01, 1.0
EAGER, COMPILED_MODEL = "(b) imperative, eager", "(c) imperative, torch.compile(model)"
CUDA_GRAPHS = "craft step, mode=reduce-overhead"  # memory lives in a pool made at recording: not measured


def loss_fn(logits, batch):
    return F.cross_entropy(logits, batch["target"])


def imperative(model: torch.nn.Module, batch: dict, compiled: bool, bf16: bool = False):
    """The seed-style loop; returns (one step, bytes held between steps)."""
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    device_type = next(model.parameters()).device.type

    def step():
        opt.zero_grad()
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(forward(batch["input"]), batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()

    def held() -> int:  # params, grads and optimizer state
        states = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        params = list(model.parameters())
        return tensor_bytes(params) + tensor_bytes(p.grad for p in params) + tensor_bytes(states)

    return step, held


def functional(model: torch.nn.Module, batch: dict, **options):
    """craft's step (decay on every tensor, as torch's AdamW); returns (one step, bytes held)."""
    tx = adamw(LR, weight_decay=WEIGHT_DECAY, clip_norm=CLIP, mask=lambda p: {k: True for k in p})
    train_step = make_train_step(model, loss_fn, tx, **options)
    box = [init_state(model, tx)]

    def step():
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
    variants = {
        "craft step": lambda m: functional(m, batch),
        "craft step, donate=True": lambda m: functional(m, batch, donate=True),
        EAGER: lambda m: imperative(m, batch, compiled=False),
    }
    peak = {}
    for name, build in variants.items():
        step, held = build(copy.deepcopy(template))
        step(), step()
        peak[name] = held() + peak_bytes_during(step, device)
    params = nbytes(list(template.parameters()))
    print(f"\nparameter-heavy MLP (1024-2048-2048-10, batch 8), AdamW: params {params / 2**20:.1f} MiB")
    print_table(
        ["variant", "peak MiB", "peak / params", "within (b) + params"],
        [
            [name, f"{p / 2**20:.1f}", f"{p / params:.1f}", "yes" if p <= peak[EAGER] + params else "NO"]
            for name, p in peak.items()
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=8, help="alternating timing rounds")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=5)
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
    builders = {
        "craft step": lambda m: functional(m, batch),
        "craft step, donate=True": lambda m: functional(m, batch, donate=True),
        "craft step, cpp_wrapper": lambda m: functional(m, batch, compile={"options": {"cpp_wrapper": True}}),
        EAGER: lambda m: imperative(m, batch, compiled=False),
        COMPILED_MODEL: lambda m: imperative(m, batch, compiled=True),
        # bf16 autocast, both sides: a different precision, so not part of the targets above
        "craft step, bf16": lambda m: functional(m, batch, precision="bf16"),
        "(b) imperative, eager, bf16 autocast": lambda m: imperative(m, batch, compiled=False, bf16=True),
    }
    if device.type == "cuda":  # CUDA graphs: the whole step as one replay
        builders[CUDA_GRAPHS] = lambda m: functional(m, batch, compile={"mode": "reduce-overhead"})
    steps, first, peak = {}, {}, {}
    for name, build in builders.items():
        steps[name], held = build(copy.deepcopy(template))
        first[name] = timed(steps[name], device)
        print(f"built {name}: first call {first[name]:.1f} s", flush=True)
        steps[name]()  # a second step: grads and optimizer state now exist in every variant
        peak[name] = held() + peak_bytes_during(steps[name], device)
    median = interleaved_medians(steps, device, warmup=args.warmup, rounds=args.rounds, steps=args.steps)

    print(
        f"\nSmallCNN, batch {args.batch}, AdamW + clip_norm, {device}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; median of {args.rounds} x {args.steps} steps per variant, interleaved"
    )
    print_table(
        ["variant", "ms/step", "first call s", "peak MiB", "samples/s", "vs (b)", "vs (c)"],
        [
            [
                name,
                f"{median[name] * 1e3:.2f}",
                f"{first[name]:.1f}",
                "n/a" if name == CUDA_GRAPHS else f"{peak[name] / 2**20:.2f}",
                f"{args.batch / median[name]:,.0f}",
                f"{median[EAGER] / median[name]:.2f}x",
                f"{median[COMPILED_MODEL] / median[name]:.2f}x",
            ]
            for name in steps
        ],
    )
    param_bytes = nbytes(list(template.parameters()))
    budget = peak[EAGER] + param_bytes
    print(f"\nmemory budget for craft: (b)'s peak + one copy of the params = {budget / 2**20:.2f} MiB")
    for name in steps:
        if name.startswith("craft") and name != CUDA_GRAPHS:
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
