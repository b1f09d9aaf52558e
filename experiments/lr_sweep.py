"""Sweep the learning rate: one model per value, all trained by one vmapped step.

The learning rate lives in each member's optimizer state
(``inject_hyperparams``), so the members share one compiled step and train
side by side on the same batches. A small MLP on flattened 16x16 greyscale
synthetic shapes; prints the final validation loss per learning rate.

    python experiments/lr_sweep.py [--steps 400] [--tiny]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from craft.data import ShapesConfig
from craft.ensemble import init_ensemble, make_ensemble_step, member_outputs
from craft.optim import adamw, inject_hyperparams
from craft.tasks import classification_loss

LEARNING_RATES = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]


def mlp(classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 128), nn.ReLU(), nn.Linear(128, classes))


def main(argv: list[str] | None = None) -> dict[float, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--tiny", action="store_true", help="a few steps on a few images (the test suite's run)")
    args = parser.parse_args(argv)
    steps, images = (3, 64) if args.tiny else (args.steps, 6000)

    data = ShapesConfig(num_train=images, num_val=images // 4, batch_size=64, image_size=16, channels=1)
    train, val = data.build("train", seed=0), data.build("val", seed=0)
    tx = inject_hyperparams(adamw, learning_rate=LEARNING_RATES[0])
    model, state = init_ensemble(
        lambda: mlp(len(data.classes)), tx, seeds=[0] * len(LEARNING_RATES),  # the same start for every rate
        hyperparams=[{"learning_rate": lr} for lr in LEARNING_RATES],
    )
    step = make_ensemble_step(model, classification_loss, tx, inputs=lambda b: (b["image"],), compile=not args.tiny)
    for _ in range(steps):
        state, _ = step(state, next(train))

    losses, sizes = [], []
    for batch in val:
        logits = member_outputs(model, state, batch["image"])  # (K, B, classes)
        losses.append(torch.stack([classification_loss(out, batch)[0] for out in logits]))
        sizes.append(len(batch["label"]))
    final = (torch.stack(losses) * torch.tensor(sizes)[:, None]).sum(0) / sum(sizes)
    results = dict(zip(LEARNING_RATES, final.tolist()))
    for lr, loss in results.items():
        print(f"lr {lr:7.0e}  val loss {loss:.4f}" + ("  <- best" if loss == min(results.values()) else ""))
    return results


if __name__ == "__main__":
    main()
