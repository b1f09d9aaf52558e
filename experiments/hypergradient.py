"""Learn the learning rate by hypergradient descent through k unrolled AdamW steps.

The log learning rate is a 0-d tensor; ``torch.func.grad`` differentiates the
validation loss after ``k`` AdamW steps (with gradient clipping) with respect
to it, straight through craft's optimizer. A tiny MLP regresses a smooth
function of its inputs; prints the learning rate and the loss as they go.

    python experiments/hypergradient.py [--rounds 30] [--unroll 5] [--tiny]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.func import grad

from craft.optim import adamw, apply_updates
from craft.step import make_loss


def data(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return {"input": x, "target": torch.sin(x @ torch.tensor([1.0, -2.0, 0.5, 1.5], dtype=torch.float64))[:, None]}


def mse(outputs: torch.Tensor, batch: dict) -> torch.Tensor:
    return ((outputs - batch["target"]) ** 2).mean()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--unroll", type=int, default=5)
    parser.add_argument("--meta-lr", type=float, default=0.05)
    parser.add_argument("--tiny", action="store_true", help="a few rounds (the test suite's run)")
    args = parser.parse_args(argv)
    rounds = 6 if args.tiny else args.rounds

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1)).double()
    loss = make_loss(model, mse)
    params = {k: p.detach() for k, p in model.named_parameters()}
    train, val = data(256, seed=1), data(256, seed=2)

    def unrolled(log_lr: torch.Tensor, params: dict, opt_state):
        tx = adamw(torch.exp(log_lr), clip_norm=1.0)  # the same transform, a differentiable rate
        for _ in range(args.unroll):
            grads = grad(lambda p: loss(p, {}, train)[0])(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = apply_updates(params, updates)
        return loss(params, {}, val)[0], (params, opt_state)

    log_lr = torch.tensor(1e-3, dtype=torch.float64).log()
    opt_state = adamw(1.0, clip_norm=1.0).init(params)  # the state's shape does not depend on the rate
    start = loss(params, {}, val)[0].item()
    for r in range(rounds):
        hypergrad, (_, (params, opt_state)) = torch.func.grad_and_value(unrolled, has_aux=True)(log_lr, params, opt_state)
        used, log_lr = log_lr.exp().item(), log_lr - args.meta_lr * torch.sign(hypergrad)  # sign: robust to its scale
        print(f"round {r:3d}  lr {used:.2e}  val loss {loss(params, {}, val)[0].item():.4f}")  # the loss this lr gave
    final = loss(params, {}, val)[0].item()
    return {"start_loss": start, "final_loss": final, "start_lr": 1e-3, "final_lr": log_lr.exp().item()}


if __name__ == "__main__":
    main()
