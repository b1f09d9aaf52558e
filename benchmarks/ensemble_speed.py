"""Training K models at once against training them one after another.

K = 8 members, AdamW with clipping, each member with its own seed and learning
rate (held in the optimizer state). References: one compiled
``make_train_step`` called on each of the K states in turn; and the
imperative loop a PyTorch user writes, K models each with its own
``AdamW(fused=True)`` and ``clip_grad_norm_(foreach=True)``, eager, one after
another, from the same initial weights. Contenders:
``make_ensemble_step`` with each strategy (``vmap``: one compiled
``torch.func.vmap`` of the step; ``sequential``: one compiled member step
called K times from Python; ``side_by_side``: one compiled graph running the
members one after another, left out by default as it compiles for minutes
here). The header names the strategy ``auto`` picks. Contenders alternate in
one process; cells are median (min-max) over rounds, ratios median (min-max)
of the per-round ratios.

    python benchmarks/ensemble_speed.py [--members 8] [--rounds 5] [--models mlp,cnn]
        [--strategies vmap,sequential,side_by_side] [--threads 2] [--device cpu] [--profile]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
import torch.nn.functional as F
from common import EAGER, imperative_step, interleaved_rounds, print_table, ratio, spread, timed
from torch import nn

from craft.ensemble import choose_strategy, init_ensemble, make_ensemble_step, unstack_states
from craft.models import SmallCNN
from craft.optim import adamw, inject_hyperparams
from craft.step import make_train_step

REFERENCE = "K compiled steps, one after another"
IMPERATIVE = "K imperative steps (fused AdamW, eager)"
MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)),
            (64,), 64, 1.5),
    "cnn": (lambda: SmallCNN(num_classes=10), (3, 32, 32), 128, 1.0),
}
"""name -> (make_model, input shape, batch size, target speed-up over the reference)."""


def loss_fn(logits, batch):
    return F.cross_entropy(logits, batch["target"])


def contenders(name: str, members: int, strategies: list[str], device: torch.device) -> dict:
    make_model, shape, size, _ = MODELS[name]
    batch = {"input": torch.randn(size, *shape, device=device), "target": torch.randint(0, 10, (size,), device=device)}
    tx = inject_hyperparams(functools.partial(adamw, clip_norm=1.0), learning_rate=1e-3)
    hyperparams = [{"learning_rate": 1e-3 * 1.5**i} for i in range(members)]
    model, stacked = init_ensemble(lambda: make_model().to(device), tx, seeds=range(members), hyperparams=hyperparams)

    single = make_train_step(model, loss_fn, tx)
    states = unstack_states(stacked)

    def sequential_reference():
        for i, s in enumerate(states):
            states[i], _ = single(s, batch)

    imperative = []
    for i, member in enumerate(states):  # the same initial weights as craft's members
        twin = make_model().to(device)
        twin.load_state_dict({**member.params, **member.buffers})
        lr = hyperparams[i]["learning_rate"]
        imperative.append(imperative_step(twin, loss_fn, mode=EAGER, clip=1.0, lr=lr, weight_decay=0.01)[0])

    fns = {REFERENCE: sequential_reference, IMPERATIVE: lambda: [step(batch) for step in imperative]}
    for strategy in strategies:
        step = make_ensemble_step(model, loss_fn, tx, strategy=strategy)
        box = [stacked]

        def run(step=step, box=box):
            box[0], _ = step(box[0], batch)

        label = f"auto ({choose_strategy(model, device)})" if strategy == "auto" else strategy
        fns[label] = run
    return fns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--strategies", default="vmap,sequential")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--profile", action="store_true", help="print the top ops of each contender")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    for name in args.models.split(","):
        fns = contenders(name, args.members, args.strategies.split(","), device)
        first = {}
        for label, fn in fns.items():
            start = time.perf_counter()
            fn()
            first[label] = time.perf_counter() - start
            print(f"{name}: built {label}: first call {first[label]:.1f} s", flush=True)
        seconds = interleaved_rounds(fns, device, warmup=args.warmup, rounds=args.rounds, steps=args.steps)
        _, _, size, target = MODELS[name]
        median = {label: statistics.median(s) for label, s in seconds.items()}
        auto = choose_strategy(MODELS[name][0](), device)
        print(
            f"\n{name}, K = {args.members}, batch {size}, AdamW + clip, {device}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}; per round the median of {args.steps} calls (all K members), {args.rounds} "
            f"interleaved rounds; cells: median (min-max) over rounds; auto picks {auto}"
        )
        print_table(
            ["variant", "ms / K steps", "first call s", "member-steps/s", "vs compiled reference", "vs imperative",
             f"target >= {target}x (3% noise)"],
            [
                [
                    label,
                    spread(seconds[label], 1e3),
                    f"{first[label]:.1f}",
                    f"{args.members / median[label]:,.0f}",
                    ratio(seconds[REFERENCE], seconds[label]),
                    ratio(seconds[IMPERATIVE], seconds[label]),
                    "" if label in (REFERENCE, IMPERATIVE)
                    else ("yes" if median[REFERENCE] / median[label] >= 0.97 * target else "NO"),
                ]
                for label in fns
            ],
        )
        print(flush=True)
        if args.profile:
            for label, fn in fns.items():
                with torch.profiler.profile() as prof:
                    for _ in range(3):
                        timed(fn, device)
                print(f"--- {name}: {label}")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
