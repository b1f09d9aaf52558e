"""Two checkouts of craft side by side: did a change make the step, the ensemble or the loop slower?

    python benchmarks/versions.py BEFORE_DIR AFTER_DIR [--rounds 3] [--steps 30]

BEFORE_DIR and AFTER_DIR are repository roots (``git worktree add /tmp/before
<commit>``). Each contender runs in its own process with that checkout first
on ``PYTHONPATH``, and the two checkouts alternate, round after round, so a
shared machine's drift falls on both. Only APIs both versions have are used:

- ``step``: the seed CNN (batch 128), AdamW + clipping, compiled and donated
  as ``python -m craft`` runs it on the CPU: ms/step;
- ``ensemble``: K = 8 members through ``make_ensemble_step`` (an MLP vmapped,
  the CNN member by member): ms/step;
- ``loop``: ``python -m craft experiments/custom_cnn.toml`` on a prepared
  folder, everything included (data, hooks, logging): the images/s its own
  ``metrics.jsonl`` reports after the first (compiling) window.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

STEP = """
import time, torch, torch.nn.functional as F
from craft.models import SmallCNN
from craft.optim import adamw
from craft.step import init_state, make_train_step
torch.manual_seed(0)
model = SmallCNN(num_classes=10)
tx = adamw(1e-3, weight_decay=0.01, clip_norm=1.0)
step = make_train_step(model, lambda o, b: F.cross_entropy(o, b["target"]), tx, donate=True)
state = init_state(model, tx)
batch = {"input": torch.randn(128, 3, 32, 32), "target": torch.randint(0, 10, (128,))}
for _ in range(5):
    state, m = step(state, batch)
start = time.perf_counter()
for _ in range(STEPS):
    state, m = step(state, batch)
m["loss"].item()
print((time.perf_counter() - start) / STEPS * 1e3)
"""

ENSEMBLE = """
import time, torch, torch.nn.functional as F
from torch import nn
from craft.ensemble import init_ensemble, make_ensemble_step
from craft.models import SmallCNN
from craft.optim import adamw
tx = adamw(1e-3)
loss = lambda o, b: F.cross_entropy(o, b["target"])
total = 0.0
for make, shape in ((lambda: nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)), (64, 64)),
                    (lambda: SmallCNN(num_classes=10), (64, 3, 32, 32))):
    model, state = init_ensemble(make, tx, seeds=range(8))
    step = make_ensemble_step(model, loss, tx)
    batch = {"input": torch.randn(*shape), "target": torch.randint(0, 10, (shape[0],))}
    for _ in range(3):
        state, m = step(state, batch)
    start = time.perf_counter()
    for _ in range(STEPS):
        state, m = step(state, batch)
    m["loss"].sum().item()
    total += (time.perf_counter() - start) / STEPS * 1e3
print(total)
"""


def run(code: str, checkout: Path, steps: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    out = subprocess.run([sys.executable, "-c", code.replace("STEPS", str(steps))], env=env, capture_output=True,
                         text=True, check=True, timeout=900)
    return float(out.stdout.strip().splitlines()[-1])


def loop(checkout: Path, data: Path, steps: int, out: Path) -> float:
    """images/s of ``python -m craft experiments/custom_cnn.toml`` after its first (compiling) log window."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    args = [sys.executable, "-m", "craft", str(checkout / "experiments" / "custom_cnn.toml"), f"--data.path={data}",
            f"--train.steps={steps}", "--train.log_every=25", f"--train.eval_every={steps}", "--train.eval_batches=1",
            f"--out_dir={out}", "--overwrite"]
    subprocess.run(args, env=env, capture_output=True, text=True, check=True, timeout=900, cwd=out)
    events = [json.loads(line) for line in (out / "custom_cnn" / "metrics.jsonl").read_text().splitlines()]
    rates = [e["samples_per_s"] for e in events if e["split"] == "train"][1:]
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per step/ensemble measurement")
    parser.add_argument("--loop_steps", type=int, default=200)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--only", default="step,ensemble,loop")
    args = parser.parse_args()
    checkouts = {"before": args.before.resolve(), "after": args.after.resolve()}
    which = args.only.split(",")
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "loop" in which:
            sys.path.insert(0, str(checkouts["after"]))
            from craft.data import write_shapes_folder

            data = write_shapes_folder(tmp / "shapes", num_train=args.images, num_val=200, image_size=32, seed=0)
        for r in range(args.rounds):
            order = list(checkouts.items()) if r % 2 == 0 else list(reversed(checkouts.items()))
            for name, checkout in order:
                if "step" in which:
                    results.setdefault(("step", name), []).append(run(STEP, checkout, args.steps))
                if "ensemble" in which:
                    results.setdefault(("ensemble", name), []).append(run(ENSEMBLE, checkout, args.steps))
                if "loop" in which:
                    (tmp / name).mkdir(exist_ok=True)
                    results.setdefault(("loop", name), []).append(loop(checkout, data, args.loop_steps, tmp / name))
    units = {"step": "ms/step", "ensemble": "ms/step (MLP + CNN, K=8)", "loop": "images/s"}
    print(f"\n{args.rounds} alternating rounds; cells: median (min-max); after/before < 1 is faster for ms, > 1 for images/s")
    print(f"{'benchmark':<10} {'unit':<26} {'before':>22} {'after':>22} {'after/before':>13}")
    for bench in [b for b in ("step", "ensemble", "loop") if b in which]:
        cells = []
        for name in checkouts:
            xs = results[(bench, name)]
            cells.append(f"{statistics.median(xs):,.1f} ({min(xs):,.1f}-{max(xs):,.1f})")
        ratio = statistics.median(results[(bench, "after")]) / statistics.median(results[(bench, "before")])
        print(f"{bench:<10} {units[bench]:<26} {cells[0]:>22} {cells[1]:>22} {ratio:>13.3f}")


if __name__ == "__main__":
    main()
