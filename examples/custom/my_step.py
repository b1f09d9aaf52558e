"""A custom step around ``make_train_step``, in your own loop: weight averaging (EMA).

The step is craft's pure update followed by an exponential moving average of
the parameters, carried beside the state: ``state, ema, batch -> state, ema,
metrics``. The experiment's parts are built from the same TOML as ``craft
train`` builds them (its ``imports`` included); at the end, the last
parameters and their average are evaluated on the val split::

    python my_step.py cnn.toml [--decay 0.95] [--section.key=value ...]
"""

from __future__ import annotations

import argparse

import torch

from craft.config import load, parse_override
from craft.parts import build_data, build_parts, evaluate_batches, fit_to_data, to_device
from craft.step import init_state, make_eval_step, make_train_step

Params = dict[str, torch.Tensor]


def make_ema_step(train_step, decay: float):
    """``(state, ema, batch) -> (state, ema, metrics)``: ``ema <- decay * ema + (1 - decay) * params``."""

    def step(state, ema: Params, batch):
        state, metrics = train_step(state, batch)
        ema = {name: average.lerp(state.params[name], 1 - decay) for name, average in ema.items()}
        return state, ema, metrics

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--decay", type=float, default=0.95)
    args, rest = parser.parse_known_args()
    overrides = dict(arg.removeprefix("--").partition("=")[::2] for arg in rest)  # --train.steps=50, as craft train
    exp = load(args.config, {key: parse_override(value) for key, value in overrides.items()})

    train_data, val_data = build_data(exp, "train"), build_data(exp, "val")
    exp = fit_to_data(exp, train_data)  # e.g. a text model's vocab_size from the data
    model, task, tx, device = build_parts(exp)
    state = init_state(model, tx, seed=exp.seed)
    ema = {name: p.clone() for name, p in state.params.items()}
    train_step = make_train_step(model, task.loss, tx, inputs=task.inputs, compile=exp.train.compile)
    step = make_ema_step(train_step, args.decay)

    for i in range(1, exp.train.steps + 1):
        state, ema, metrics = step(state, ema, to_device(next(train_data), device))
        if i % exp.train.log_every == 0:
            print(f"step {i}: loss {metrics['loss'].item():.4f}")

    eval_step = make_eval_step(model, task.loss, inputs=task.inputs, compile=False)
    for name, params in (("last", state.params), ("ema", ema)):
        means = evaluate_batches(eval_step, state._replace(params=params), val_data, device, task)
        print(f"val {name}: " + "  ".join(f"{k} {v:.4f}" for k, v in means.items()))


if __name__ == "__main__":
    main()
