"""craft's GPT training against the usual imperative PyTorch loop; generation with and without the KV cache.

The model, data and optimizer of ``experiments/gpt_char.toml`` (4 layers,
4 heads, 128 embedding, block 64, batch 12, AdamW lr 1e-3 b2 0.99 weight decay
0.1 on matrices, clip 1.0, warmup + cosine), on the default corpus. Variants,
all from the same initial weights, on the same batches:

- craft: the compiled, donated step ``python -m craft`` runs;
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

``--preset gpt2_small`` (for a GPU: ``--device cuda``) is GPT-2 small as
nanoGPT trains it (12 layers, 12 heads, 768 wide, context 1024, vocabulary
50,304, no biases, AdamW 6e-4 with betas 0.9/0.95, weight decay 0.1 on every
matrix, clip 1.0, bf16, batch 16 x 1024 tokens, 200 steps) against
nanoGPT's own loop written afresh (``nanogpt_reference.py``: its model under
``torch.compile``, fused AdamW, bf16 autocast), on the same character batches
of the default corpus: tokens/s, MFU, peak memory, loss after the steps.
``--preset tiny`` is the same with toy sizes: it checks the script on a CPU.
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

from nanogpt_reference import NanoGPT

from craft import cuda, mfu
from craft.data.text import TextConfig
from craft.generate import generate
from craft.models.gpt import GPTConfig
from craft.optim import SCHEDULES, adamw, default_decay_mask
from craft.step import init_state, make_train_step
from craft.tasks import language_model_loss, scored_tokens
from craft.tree import nbytes

CLIP = 1.0
CRAFT = "craft step"
REFERENCES = {
    "(b) imperative, eager": EAGER, "(c) imperative, compile(model)": COMPILED_MODEL,
    "(d) imperative, compile(step)": COMPILED_STEP,
}
NANOGPT = "(n) nanoGPT: compile(model), fused AdamW"
GPT2 = dict(block_size=1024, n_layer=12, n_head=12, n_embd=768, bias=False, vocab_size=50304)
PRESETS = {
    # experiments/gpt_char.toml: decay as craft's adamw (matrices, not embeddings)
    "baby": dict(model=dict(block_size=64), batch=12, lr=1e-3, b2=0.99, wd=0.1, warmup=100, min_lr=1e-4,
                 decay_embeddings=False, references=REFERENCES, precision="fp32", steps=500, chunk=50, val_batches=None),
    # nanoGPT's GPT-2 small (train_gpt2 config), one micro-batch of 16 sequences per step
    "gpt2_small": dict(model=GPT2, batch=16, lr=6e-4, b2=0.95, wd=0.1, warmup=20, min_lr=6e-5, decay_embeddings=True,
                       references={NANOGPT: COMPILED_MODEL}, precision="bf16", steps=200, chunk=25, val_batches=20),
    "tiny": dict(model=dict(GPT2, block_size=32, n_layer=1, n_head=2, n_embd=32, vocab_size=512), batch=4, lr=1e-3,
                 b2=0.95, wd=0.1, warmup=2, min_lr=1e-4, decay_embeddings=True, references={NANOGPT: COMPILED_MODEL},
                 precision="fp32", steps=6, chunk=3, val_batches=2),
}


def loss_fn(logits, batch):
    return language_model_loss(logits, batch)[0]


def decay_mask(params: dict, preset: dict) -> dict:
    """The matrices decayed: every 2-D tensor (nanoGPT), or craft's adamw default (not embeddings)."""
    return {k: p.ndim >= 2 for k, p in params.items()} if preset["decay_embeddings"] else default_decay_mask(params)


def imperative(model: torch.nn.Module, schedule, mode: str, precision: str, preset: dict, backend: str):
    """The nanoGPT-style loop; returns (step(batch), bytes held between steps, params)."""
    params = dict(model.named_parameters())
    mask = decay_mask(params, preset)  # the same tensors decayed as craft's adamw
    groups = [
        {"params": [p for k, p in params.items() if mask[k]], "weight_decay": preset["wd"]},
        {"params": [p for k, p in params.items() if not mask[k]], "weight_decay": 0.0},
    ]
    step, held = imperative_step(
        model, loss_fn, mode=mode, clip=CLIP, param_groups=groups, bf16=precision == "bf16",
        schedule=lambda count: float(schedule(torch.tensor(count))), lr=preset["lr"], betas=(0.9, preset["b2"]),
        backend=backend,
    )
    return step, held, lambda: dict(model.named_parameters())


def functional(model: torch.nn.Module, schedule, precision: str, preset: dict, backend: str):
    """craft's step as ``python -m craft`` builds it; returns (step(batch), bytes held, params)."""
    tx = adamw(schedule, b2=preset["b2"], weight_decay=preset["wd"], clip_norm=CLIP,
               mask=lambda params: decay_mask(params, preset))
    options = True if backend == "inductor" else {"backend": backend}  # True: as a run compiles (craft/run.py)
    train_step = make_train_step(model, loss_fn, tx, donate=True, precision=precision, compile=options)
    box = [init_state(model, tx)]

    def step(batch):
        box[0], _ = train_step(box[0], batch)

    return step, lambda: nbytes(box[0]), lambda: box[0].params


@torch.no_grad()
def val_loss(model: torch.nn.Module, params: dict, batches, device: torch.device, limit: int | None = None) -> float:
    """Mean next-token loss over every token of the validation split (its first ``limit`` batches)."""
    model.eval()
    total = count = 0.0
    for i, batch in enumerate(batches):
        if limit is not None and i >= limit:
            break
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="baby", help="model and optimizer sizes")
    parser.add_argument("--steps", type=int, default=None, help="train steps per variant (default: the preset's)")
    parser.add_argument("--warmup", type=int, default=None, help="first steps left out of the timing")
    parser.add_argument("--chunk", type=int, default=None, help="steps per variant before switching (one round)")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default: the preset's)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="both sides (default: the preset's)")
    parser.add_argument("--new_tokens", type=int, default=500, help="generation benchmark (baby preset; 0: skip)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak_tflops", type=float, default=None, help="device peak for MFU (default: craft.mfu's table)")
    parser.add_argument("--skip", default="", help="comma-separated variant letters to leave out, e.g. b")
    parser.add_argument("--backend", default="inductor",
                        help="torch.compile backend of every compiled variant (aot_eager: a quick check, no speed figure)")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    for key in ("steps", "chunk", "batch", "precision"):
        setattr(args, key, getattr(args, key) or preset[key])
    args.warmup = min(20, args.steps // 4) if args.warmup is None else args.warmup
    if args.warmup >= args.steps:
        parser.error("--warmup must be smaller than --steps")
    return args


def build_variants(args, preset: dict, device: torch.device):
    """The batches, the template model and ``name -> (step, held, params)``, all from the same weights."""
    block = preset["model"]["block_size"]
    data = TextConfig(block_size=block, batch_size=args.batch)
    train = data.build("train", seed=0)
    batches = [{k: v.to(device) for k, v in next(train).items()} for _ in range(args.steps + 1)]
    torch.manual_seed(0)
    vocab = max(preset["model"].get("vocab_size", 0), train.vocab_size)
    template = GPTConfig(**{**preset["model"], "vocab_size": vocab}).build().to(device)
    schedule = SCHEDULES["warmup_cosine"](preset["lr"], total_steps=args.steps,
                                          warmup_steps=min(preset["warmup"], args.steps // 5), min_lr=preset["min_lr"])
    skip = {f"({c.strip()})" for c in args.skip.split(",") if c.strip()}
    names = [n for n in [CRAFT, *preset["references"]] if not any(n.startswith(s) for s in skip)]
    built, models = {}, {}
    for name in names:
        if name == CRAFT:
            models[name] = copy.deepcopy(template)
            built[name] = functional(models[name], schedule, args.precision, preset, args.backend)
            continue
        if name == NANOGPT:
            config = {k: v for k, v in {**preset["model"], "vocab_size": vocab}.items() if k != "dropout"}
            models[name] = NanoGPT(**config).to(device)
            models[name].load_state_dict(template.state_dict())
        else:
            models[name] = copy.deepcopy(template)
        built[name] = imperative(models[name], schedule, preset["references"][name], args.precision, preset, args.backend)
    return data, batches, template, models, built


def main() -> None:
    args = parse_args()
    preset, device = PRESETS[args.preset], torch.device(args.device)
    cuda.fast_matmuls(device)  # TF32 on CUDA for both sides, as a craft run sets it
    data, batches, template, models, built = build_variants(args, preset, device)
    block = preset["model"]["block_size"]
    rounds, first = train_all({name: b[0] for name, b in built.items()}, batches[:-1], device, args.chunk, args.warmup)
    median = {name: statistics.median(r) for name, r in rounds.items()}
    # Peak memory of one more step of each trained variant (no second compile).
    peak = {name: b[1]() + peak_bytes_during(lambda b=b: b[0](batches[-1]), device) for name, b in built.items()}
    val = data.build("val", seed=0)
    losses = {name: val_loss(models[name], built[name][2](), val, device, preset["val_batches"]) for name in built}

    tokens = args.batch * block
    flops = template.flops_per_token(block) * tokens
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak_flops = mfu.peak_flops(device, args.peak_tflops * 1e12 if args.peak_tflops else None)
    references = [n for n in built if n != CRAFT]
    print(
        f"\nGPT {template.n_layer}L {template.n_head}H {template.n_embd}E ({args.preset}), block {block}, batch {args.batch}, "
        f"{template.num_params() / 1e6:.2f}M params, {args.precision}, {name}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {args.backend} backend; {args.steps} steps each in alternating chunks of {args.chunk}; "
        f"cells: median (min-max) over {len(rounds[CRAFT if CRAFT in rounds else references[0]])} chunks, "
        f"first {args.warmup} steps left out; loss after {args.steps + 1} steps"
    )
    header = ["variant", "ms/iter", "first step s", "peak MiB", "tokens/s", "MFU", "val loss"]
    header += [f"craft vs {n[:3]}" for n in references] if CRAFT in built else []
    rows = []
    for n in built:
        share = mfu.mfu(1 / median[n], flops, peak_flops)
        row = [n, spread(rounds[n], 1e3), f"{first[n]:.1f}", f"{peak[n] / 2**20:.1f}",
               f"{tokens / median[n]:,.0f}", "n/a" if share is None else f"{share:.1%}", f"{losses[n]:.4f}"]
        if CRAFT in built:
            row += [ratio(rounds[r], rounds[CRAFT]) if n == CRAFT else "" for r in references]
        rows.append(row)
    print_table(header, rows)
    if references and CRAFT in built:
        best = min(references, key=median.get)
        print(
            f"\ncraft vs best reference ({best}): {ratio(rounds[best], rounds[CRAFT])} per iteration; "
            f"val loss difference {losses[CRAFT] - losses[best]:+.4f}; peak memory {peak[CRAFT] / peak[best]:.2f}x"
        )
    if args.preset == "baby" and args.new_tokens:
        print(f"\ngeneration: GPT defaults with block_size 256, {args.new_tokens} new tokens, sampled, {name}")
        print_table(["variant", "tokens/s", "vs without cache"], generation_speed(device, args.new_tokens))


if __name__ == "__main__":
    main()
