"""Validation loss against tokens seen for several optimizers on the same data: one run per variant.

Each variant is ``NAME=EXPERIMENT.toml[,--key=value...]``, trained with
``python -m craft`` into a folder of its own (the same seed, data order,
schedule and steps unless a variant overrides them), then every ``val``
event of its ``metrics.jsonl`` is read back. Prints one row per evaluation:
the step, the tokens seen by then (``step x batch_size x block_size`` of the
resolved config) and each variant's validation loss, then each run's wall
time. The default compares AdamW with Muon on the tiny GPT-2 over the
standard library's BPE tokens (``craft prepare tokens @stdlib data/stdlib
--tokenizer=bpe --vocab_size=8192`` first)::

    python benchmarks/optimizer_curves.py [--steps 600] [--eval_every 100] [--out /tmp/curves]
    python benchmarks/optimizer_curves.py adamw=experiments/gpt2_small.toml \\
        muon=experiments/gpt2_small_muon.toml --steps 200 --eval_every 50     # on a GPU
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import print_table

from craft.config import load
from craft.logging import read_metrics

ROOT = Path(__file__).resolve().parent.parent
MUON_TINY = (
    "--optim.kind=muon,--optim.momentum=0.95,--optim.ns_steps=5,"
    "--optim.adamw_match=['wte.*','wpe.*','lm_head.*']"
)
DEFAULT = [f"adamw={ROOT}/experiments/gpt2_tiny.toml", f"muon={ROOT}/experiments/gpt2_tiny.toml,{MUON_TINY}"]


def parse_variant(text: str) -> tuple[str, str, list[str]]:
    """``NAME=EXPERIMENT[,--key=value...]`` -> (name, experiment path, overrides)."""
    name, _, rest = text.partition("=")
    if not name or not rest:
        raise SystemExit(f"error: a variant is NAME=EXPERIMENT.toml[,--key=value...], got {text!r}")
    path, *overrides = split_overrides(rest)
    return name, path, overrides


def split_overrides(text: str) -> list[str]:
    """Split at the commas that start a new ``--key``; a list value keeps its own commas."""
    parts: list[str] = []
    for piece in text.split(","):
        if parts and not piece.startswith("--") and parts[-1].startswith("--"):
            parts[-1] += "," + piece
        else:
            parts.append(piece)
    return parts


def train(name: str, experiment: str, overrides: list[str], out: Path, args) -> tuple[Path, float]:
    """Run one variant to the end; returns (its run folder, wall seconds)."""
    command = [
        sys.executable, "-m", "craft", experiment, f"--name={name}", f"--out_dir={out}", "--overwrite",
        f"--train.steps={args.steps}", f"--train.eval_every={args.eval_every}", *overrides,
    ]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"error: variant {name!r} failed:\n{result.stderr.strip()[-2000:]}")
    return out / name, time.perf_counter() - start


def val_losses(run_dir: Path) -> dict[int, float]:
    return {e["step"]: e["metrics"]["loss"] for e in read_metrics(run_dir) if e["split"] == "val"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", default=DEFAULT, help="NAME=EXPERIMENT.toml[,--key=value...]")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval_every", type=int, default=100)
    parser.add_argument("--out", help="where the runs go (default: a temporary folder)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="craft-curves-"))
    runs, walls = {}, {}
    for text in args.variants:
        name, experiment, overrides = parse_variant(text)
        runs[name], walls[name] = train(name, experiment, overrides, out, args)
        print(f"{name}: {walls[name]:.0f} s, {runs[name]}", flush=True)
    curves = {name: val_losses(run) for name, run in runs.items()}
    config = load(next(iter(runs.values())) / "config.toml")
    tokens_per_step = config.data.config.batch_size * config.data.config.block_size
    steps = sorted(set().union(*curves.values()))
    rows = [[str(s), f"{s * tokens_per_step:,}", *(f"{curves[n][s]:.4f}" if s in curves[n] else "-" for n in runs)]
            for s in steps]
    print(f"\nvalidation loss against tokens seen ({tokens_per_step:,} tokens a step); runs in {out}")
    print_table(["step", "tokens seen", *runs], rows)
    print("wall time: " + ", ".join(f"{n} {w:.0f} s" for n, w in walls.items()))


if __name__ == "__main__":
    main()
