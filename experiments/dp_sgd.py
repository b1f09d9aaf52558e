"""Differentially private SGD in a dozen lines: per-example gradients, clipped and noised.

A small MLP on 16x16 greyscale synthetic shapes. The step takes the gradient
of every example (``per_example_grads``, a ``vmap`` of ``grad``), and
``dp_aggregate`` clips each to norm C, sums them, adds Gaussian noise of
standard deviation sigma * C and averages: a ``Transform`` at the head of an
ordinary optimizer chain. Compares with the same run without noise.

    python experiments/dp_sgd.py [--steps 300] [--noise 1.0] [--clip 1.0] [--tiny]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.func import functional_call

from craft.data import ShapesConfig
from craft.ensemble import per_example_grads
from craft.optim import apply_updates, chain, dp_aggregate, scale_by_learning_rate, trace
from craft.tasks import classification_loss


def train(data: ShapesConfig, steps: int, *, clip: float, noise: float, compile: bool) -> float:
    """Validation accuracy after ``steps`` of DP-SGD (momentum 0.9, lr 0.1)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 128), nn.ReLU(), nn.Linear(128, len(data.classes)))
    params = {k: p.detach() for k, p in model.named_parameters()}
    tx = chain(dp_aggregate(clip_norm=clip, noise_multiplier=noise), trace(0.9), scale_by_learning_rate(0.1))

    def loss(params, batch):
        return classification_loss(functional_call(model, params, (batch["image"],)), batch)[0]

    def step(params, opt_state, batch):
        updates, opt_state = tx.update(per_example_grads(loss, params, batch), opt_state, params)
        return apply_updates(params, updates), opt_state

    step = torch.compile(step) if compile else step
    opt_state, train_batches = tx.init(params), data.build("train", seed=0)
    for i in range(steps):
        torch.manual_seed(i)  # the noise of step i
        params, opt_state = step(params, opt_state, next(train_batches))
    hits = total = 0
    for batch in data.build("val", seed=0):
        hits += int((functional_call(model, params, (batch["image"],)).argmax(-1) == batch["label"]).sum())
        total += len(batch["label"])
    return hits / total


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--noise", type=float, default=1.0, help="noise multiplier sigma")
    parser.add_argument("--clip", type=float, default=1.0, help="per-example clip norm C")
    parser.add_argument("--tiny", action="store_true", help="a few steps on a few images (the test suite's run)")
    args = parser.parse_args(argv)
    steps, images = (3, 64) if args.tiny else (args.steps, 6000)
    data = ShapesConfig(num_train=images, num_val=images // 4, batch_size=64, image_size=16, channels=1)
    results = {
        "private": train(data, steps, clip=args.clip, noise=args.noise, compile=not args.tiny),
        "no noise": train(data, steps, clip=args.clip, noise=0.0, compile=not args.tiny),
    }
    for name, accuracy in results.items():
        print(f"{name:12s}  val accuracy {accuracy:.1%}")
    return results


if __name__ == "__main__":
    main()
