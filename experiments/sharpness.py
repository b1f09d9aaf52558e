"""Track sharpness: the top Hessian eigenvalue of the training loss, during training.

Power iteration on Hessian-vector products, each ``jvp`` of the gradient of
the step's own loss (``craft.step.make_loss``): no Hessian is ever formed.
Trains a small MLP with SGD on synthetic classification and prints the top
eigenvalue every few steps, next to ``2 / lr`` (the edge of stability,
Cohen et al. 2021).

    python experiments/sharpness.py [--steps 300] [--lr 0.1] [--tiny]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn
from torch.func import grad, jvp

from craft.step import init_state, make_loss, make_train_step
from craft.optim import sgd
from craft.tasks import classification_loss

Params = dict[str, torch.Tensor]


def top_eigenvalue(loss: Callable[[Params], torch.Tensor], params: Params, iterations: int = 20, seed: int = 0) -> torch.Tensor:
    """The largest-magnitude eigenvalue of the Hessian of ``loss`` at ``params``, by power iteration."""
    g = torch.Generator().manual_seed(seed)
    v = {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in params.items()}
    value = torch.zeros(())
    for _ in range(iterations):
        norm = torch.sqrt(sum((x**2).sum() for x in v.values()))
        v = {k: x / norm for k, x in v.items()}
        _, hv = jvp(grad(loss), (params,), (v,))  # H v
        value = sum((hv[k] * v[k]).sum() for k in v)  # Rayleigh quotient
        v = hv
    return value


def main(argv: list[str] | None = None) -> list[tuple[int, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--tiny", action="store_true", help="a few steps (the test suite's run)")
    args = parser.parse_args(argv)
    steps, every = (6, 3) if args.tiny else (args.steps, args.every)

    torch.manual_seed(0)
    x = torch.randn(512, 10)
    batch = {"image": x, "label": (x[:, 0] * x[:, 1] > 0).long()}
    model = nn.Sequential(nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 2))
    tx = sgd(args.lr)
    step = make_train_step(model, classification_loss, tx, inputs=lambda b: (b["image"],), compile=False)
    loss = make_loss(model, classification_loss, inputs=lambda b: (b["image"],))
    state, history = init_state(model, tx), []
    for i in range(1, steps + 1):
        state, metrics = step(state, batch)
        if i % every == 0:
            sharpness = top_eigenvalue(lambda p: loss(p, state.buffers, batch)[0], state.params).item()
            history.append((i, sharpness))
            print(f"step {i:4d}  loss {metrics['loss'].item():.4f}  top eigenvalue {sharpness:8.3f}  (2/lr = {2 / args.lr:.1f})")
    return history


if __name__ == "__main__":
    main()
