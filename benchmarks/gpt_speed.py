"""craft's GPT training against the usual imperative PyTorch loop; generation with and without the KV cache.

The model, data and optimizer of ``experiments/gpt_char.toml`` (4 layers,
4 heads, 128 embedding, block 64, batch 12, AdamW lr 1e-3 b2 0.99 weight decay
0.1 on matrices, clip 1.0, warmup + cosine), on the default corpus. Variants,
all from the same initial weights, on the same batches:

- craft: the compiled step ``python -m craft`` runs (donated on the CPU);
- the strongest imperative loop (``common.imperative_step``): ``zero_grad``,
  forward, ``cross_entropy``, ``backward``, ``clip_grad_norm_(foreach=True)``,
  the learning rate set through ``param_groups``, ``AdamW(fused=True)``, run
  (b) eager, (c) with ``torch.compile(model)``, (d) as one compiled step
  (foreach AdamW with a tensor learning rate, the compiled-optimizer recipe).

Both sides run at ``--precision`` (fp32, or bf16 autocast). The variants train
in alternating chunks of steps (machine drift is spread over all of them);
each step is timed on its own, and a chunk's median is one round. Prints
ms/iter as median (min-max) over chunks, speed-ups as median (min-max) of the
per-chunk ratios, peak memory of a step, validation loss after the same
number of steps (the whole validation split), and, on CUDA, model FLOPs
utilisation. Then generation: tokens/s for new tokens with and without the
KV cache.

    python benchmarks/gpt_speed.py [--steps 500] [--chunk 50] [--precision fp32|bf16] [--device cpu] [--peak_tflops 989]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from common import (
    COMPILED_MODEL, COMPILED_STEP, EAGER, imperative_step, peak_bytes_during, print_table, ratio, spread, sync,
)
from torch.func import functional_call

from craft.data.text import TextConfig
from craft.generate import generate
from craft.models.gpt import GPTConfig
from craft.optim import SCHEDULES, adamw, default_decay_mask
from craft.step import init_state, make_train_step
from craft.tasks import language_model_loss, scored_tokens
from craft.tree import nbytes

BLOCK, BATCH, LR, B2, WEIGHT_DECAY, CLIP, WARMUP, MIN_LR = 64, 12, 1e-3, 0.99, 0.1, 1.0, 100, 1e-4
CRAFT = "craft step"
REFERENCES = {
    "(b) imperative, eager": EAGER, "(c) imperative, compile(model)": COMPILED_MODEL,
    "(d) imperative, compile(step)": COMPILED_STEP,
}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks


def loss_fn(logits, batch):
    return language_model_loss(logits, batch)[0]


def imperative(model: torch.nn.Module, schedule, mode: str, precision: str):
    """The nanoGPT-style loop; returns (step(batch), bytes held between steps, params)."""
    params = dict(model.named_parameters())
    mask = default_decay_mask(params)  # the same tensors decayed as craft's adamw
    groups = [
        {"params": [p for k, p in params.items() if mask[k]], "weight_decay": WEIGHT_DECAY},
        {"params": [p for k, p in params.items() if not mask[k]], "weight_decay": 0.0},
    ]
    step, held = imperative_step(
        model, loss_fn, mode=mode, clip=CLIP, param_groups=groups, bf16=precision == "bf16",
        schedule=lambda count: float(schedule(torch.tensor(count))), lr=LR, betas=(0.9, B2),
    )
    return step, held, lambda: dict(model.named_parameters())


def functional(model: torch.nn.Module, schedule, precision: str):
    """craft's step as ``python -m craft`` builds it; returns (step(batch), bytes held, params)."""
    tx = adamw(schedule, b2=B2, weight_decay=WEIGHT_DECAY, clip_norm=CLIP)
    # As the run: donated on the CPU only (see the CUDA note in craft/run.py).
    donate = next(model.parameters()).device.type == "cpu"
    train_step = make_train_step(model, loss_fn, tx, donate=donate, precision=precision)
    box = [init_state(model, tx)]

    def step(batch):
        box[0], _ = train_step(box[0], batch)

    return step, lambda: nbytes(box[0]), lambda: box[0].params


@torch.no_grad()
def val_loss(model: torch.nn.Module, params: dict, batches, device: torch.device) -> float:
    """Mean next-token loss over every token of the validation split."""
    model.eval()
    total = count = 0.0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = functional_call(model, params, (batch["input"],))
        loss, _ = language_model_loss(logits, batch)
        n = scored_tokens(batch)
        total, count = total + float(loss) * int(n), count + int(n)
    model.train()
    return total / count


def train_all(steps: dict, batches: list, device: torch.device, chunk: int, warmup: int) -> tuple[dict, dict]:
    """Run every variant over ``batches`` in alternating chunks.

    Returns (name -> per-chunk median seconds per step, leaving out the first
    ``warmup`` steps; name -> seconds of the first step).
    """
    rounds, first = {name: [] for name in steps}, {}
    for start in range(0, len(batches), chunk):
        names = list(steps)[:: 1 if (start // chunk) % 2 == 0 else -1]  # alternate who goes first
        for name in names:
            times = []
            for i, batch in enumerate(batches[start : start + chunk], start):
                sync(device)
                t = time.perf_counter()
                steps[name](batch)
                sync(device)
                first.setdefault(name, time.perf_counter() - t)
                if i >= warmup:
                    times.append(time.perf_counter() - t)
            if times:
                rounds[name].append(statistics.median(times))
    return rounds, first


def generation_speed(device: torch.device, new_tokens: int) -> list[list[str]]:
    torch.manual_seed(0)
    model = GPTConfig(vocab_size=103, block_size=256).build().to(device)
    params = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    prompt = torch.randint(0, 103, (16,)).tolist()
    rows, rate = [], {}
    for cache in (True, False):
        run = lambda: list(generate(model, params, prompt, max_new_tokens=new_tokens, temperature=1.0, seed=0, use_cache=cache))  # noqa: E731
        run()  # warm-up
        sync(device)
        start = time.perf_counter()
        tokens = run()
        sync(device)
        rate[cache] = len(tokens) / (time.perf_counter() - start)
    for cache in (True, False):
        rows.append(["with KV cache" if cache else "without cache", f"{rate[cache]:,.0f}", f"{rate[cache] / rate[False]:.2f}x"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="train steps per variant (gpt_char.toml runs 2000)")
    parser.add_argument("--warmup", type=int, default=20, help="first steps left out of the timing")
    parser.add_argument("--chunk", type=int, default=50, help="steps per variant before switching (one round)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="both sides")
    parser.add_argument("--new_tokens", type=int, default=500)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak_tflops", type=float, default=None, help="device peak for MFU (default: by GPU name)")
    parser.add_argument("--skip", default="", help="comma-separated variant letters to leave out, e.g. b")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.warmup >= args.steps:
        parser.error("--warmup must be smaller than --steps")

    data = TextConfig(block_size=BLOCK, batch_size=BATCH)
    train = data.build("train", seed=0)
    batches = [{k: v.to(device) for k, v in next(train).items()} for _ in range(args.steps)]
    torch.manual_seed(0)
    template = GPTConfig(vocab_size=train.vocab_size, block_size=BLOCK).build().to(device)
    schedule = SCHEDULES["warmup_cosine"](LR, total_steps=args.steps, warmup_steps=min(WARMUP, args.steps // 5), min_lr=MIN_LR)
    makers = {CRAFT: lambda m: functional(m, schedule, args.precision)}
    for name, mode in REFERENCES.items():
        makers[name] = lambda m, mode=mode: imperative(m, schedule, mode, args.precision)
    skip = {f"({c.strip()})" for c in args.skip.split(",") if c.strip()}
    makers = {k: v for k, v in makers.items() if not any(k.startswith(s) for s in skip)}
    models = {name: copy.deepcopy(template) for name in makers}  # the same initial weights
    built = {name: make(models[name]) for name, make in makers.items()}

    rounds, first = train_all({name: b[0] for name, b in built.items()}, batches, device, args.chunk, args.warmup)
    median = {name: statistics.median(r) for name, r in rounds.items()}
    # Peak memory of one more step on a spare copy (the trained variants are done).
    peak = {}
    for name, make in makers.items():
        step, held, _ = make(copy.deepcopy(template))
        step(batches[0]), step(batches[1])
        peak[name] = held() + peak_bytes_during(lambda: step(batches[2]), device)
    val = data.build("val", seed=0)
    losses = {name: val_loss(models[name], built[name][2](), val, device) for name in makers}

    tokens = BATCH * BLOCK
    flops = template.flops_per_token(BLOCK) * tokens
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak_tflops = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    references = [n for n in makers if n != CRAFT]
    print(
        f"\nGPT {template.n_layer}L {template.n_head}H {template.n_embd}E, block {BLOCK}, batch {BATCH}, "
        f"{template.num_params() / 1e6:.2f}M params, {args.precision}, {name}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; {args.steps} steps each in alternating chunks of {args.chunk}; "
        f"cells: median (min-max) over {len(rounds[CRAFT if CRAFT in rounds else references[0]])} chunks, "
        f"first {args.warmup} steps left out"
    )
    header = ["variant", "ms/iter", "first step s", "peak MiB", "tokens/s", "val loss"]
    header += [f"craft vs {n[:3]}" for n in references] if CRAFT in makers else []
    if peak_tflops:
        header.insert(5, "MFU")
    rows = []
    for n in makers:
        row = [n, spread(rounds[n], 1e3), f"{first[n]:.1f}", f"{peak[n] / 2**20:.1f}",
               f"{tokens / median[n]:,.0f}", f"{losses[n]:.4f}"]
        if CRAFT in makers:
            row += [ratio(rounds[r], rounds[CRAFT]) if n == CRAFT else "" for r in references]
        if peak_tflops:
            row.insert(5, f"{flops / median[n] / (peak_tflops * 1e12):.1%}")
        rows.append(row)
    print_table(header, rows)
    if references and CRAFT in makers:
        best = min(references, key=median.get)
        print(
            f"\ncraft vs best reference ({best}): {ratio(rounds[best], rounds[CRAFT])} per iteration; "
            f"val loss difference {losses[CRAFT] - losses[best]:+.4f} (target within 0.03)"
        )

    print(f"\ngeneration: GPT defaults with block_size 256, {args.new_tokens} new tokens, sampled, {name}")
    print_table(["variant", "tokens/s", "vs without cache"], generation_speed(device, args.new_tokens))


if __name__ == "__main__":
    main()
