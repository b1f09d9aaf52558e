"""Second-order MAML (Finn et al. 2017) on few-shot sine regression.

Each task is a sine wave of random amplitude and phase; a model adapts to
it with one SGD step on ``shots`` points (craft's ``sgd`` transform), and
the meta-loss is its error on other points of the same wave. The
meta-gradient differentiates through the inner gradient (second order);
``vmap`` runs the tasks of a meta-batch at once. Prints the loss on
held-out tasks before and after adaptation.

    python experiments/maml.py [--iterations 2000] [--tiny]
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn
from torch.func import grad, vmap

from craft.optim import adam, apply_updates, sgd
from craft.step import make_loss


def tasks(n: int, shots: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """``n`` sine tasks: support and query ``(n, shots, 1)`` inputs and targets."""
    amplitude = torch.empty(n, 1, 1).uniform_(0.1, 5.0, generator=g)
    phase = torch.empty(n, 1, 1).uniform_(0, math.pi, generator=g)
    x = torch.empty(n, 2 * shots, 1).uniform_(-5, 5, generator=g)
    y = amplitude * torch.sin(x - phase)
    return {"input": x[:, :shots], "target": y[:, :shots], "q_input": x[:, shots:], "q_target": y[:, shots:]}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--inner-lr", type=float, default=0.01)
    parser.add_argument("--tiny", action="store_true", help="a few iterations (the test suite's run)")
    args = parser.parse_args(argv)
    iterations, meta_batch = (25, 5) if args.tiny else (args.iterations, 25)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    loss = make_loss(model, lambda out, b: ((out - b["target"]) ** 2).mean())
    inner = sgd(args.inner_lr)

    def adapt(params: dict, task: dict) -> dict:
        grads = grad(lambda p: loss(p, {}, task)[0])(params)
        updates, _ = inner.update(grads, inner.init(params), params)
        return apply_updates(params, updates)

    def query_loss(params: dict, task: dict) -> torch.Tensor:
        return loss(params, {}, {"input": task["q_input"], "target": task["q_target"]})[0]

    def meta_loss(params: dict, task: dict) -> torch.Tensor:
        return query_loss(adapt(params, task), task)  # grad of this is second order

    params = {k: p.detach() for k, p in model.named_parameters()}
    outer = adam(1e-3)
    state, g = outer.init(params), torch.Generator().manual_seed(1)
    for it in range(iterations):
        per_task = vmap(grad(meta_loss), in_dims=(None, 0))(params, tasks(meta_batch, args.shots, g))
        updates, state = outer.update({k: v.mean(0) for k, v in per_task.items()}, state, params)
        params = apply_updates(params, updates)

    held_out = tasks(100, args.shots, torch.Generator().manual_seed(2))
    before = vmap(query_loss, in_dims=(None, 0))(params, held_out).mean().item()
    after = vmap(meta_loss, in_dims=(None, 0))(params, held_out).mean().item()
    print(f"held-out query loss: {before:.3f} before adaptation, {after:.3f} after one step")
    return {"before": before, "after": after}


if __name__ == "__main__":
    main()
