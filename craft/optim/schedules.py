"""Learning-rate schedules: pure functions of a 0-d step tensor.

Every entry of ``SCHEDULES`` is a factory ``f(lr, *, total_steps=None, **options)``
returning a ``Schedule``: ``step (0-d int tensor) -> lr (0-d float64 tensor)``.
Schedules are branch-free tensor arithmetic, evaluated inside the compiled
step, so the learning rate changes without recompiling. They compute in
float64, as ``torch.optim`` does with Python floats: multiplying float32
updates by a 0-d float64 tensor keeps them float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from craft.optim.base import Schedule, in_range
from craft.registry import Registry
from craft.words import plural

SCHEDULES: Registry = Registry("schedule")


def _float(step: Tensor | int) -> Tensor:
    return torch.as_tensor(step).to(torch.float64)


def _need_total(name: str, total_steps: int | None) -> int:
    if total_steps is None or total_steps <= 0:
        raise ValueError(f"{name} schedule needs total_steps > 0, got {total_steps}")
    return int(total_steps)


def _rates(name: str, **rates: float) -> None:
    """Every rate >= 0 and min_lr <= lr, else a ValueError naming it: either would climb the loss without a word."""
    for key, value in rates.items():
        in_range(name, key, value)
    low, high = rates.get("min_lr", 0.0), rates["lr"]
    if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low > high:  # not run-time tensors
        raise ValueError(f"{name}: min_lr={low} is above lr={high}; the cosine decays from lr "
                         "to min_lr, so set min_lr <= lr")


def warmup_length(total_steps: int | None, warmup_steps: int | None, warmup_ratio: float | None) -> int:
    """Warmup steps from either ``warmup_steps`` or ``warmup_ratio * total_steps``."""
    if warmup_steps is not None and warmup_ratio is not None:
        raise ValueError("give warmup_steps or warmup_ratio, not both")
    if warmup_ratio is not None:
        if not 0 <= warmup_ratio <= 1:
            raise ValueError(f"warmup_ratio must be in [0, 1], got {warmup_ratio}")
        return round(warmup_ratio * _need_total("warmup_ratio", total_steps))
    steps = warmup_steps or 0
    if steps < 0 or (total_steps is not None and steps > total_steps):
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {steps}")
    return steps


@SCHEDULES.register("constant")
def constant(lr: float, *, total_steps: int | None = None) -> Schedule:
    """``lr`` at every step."""
    _rates("constant", lr=lr)
    return lambda step: torch.zeros_like(_float(step)) + lr  # lr may be a 0-d tensor (inject_hyperparams)


@SCHEDULES.register("linear_warmup")
def linear_warmup(
    lr: float,
    *,
    total_steps: int | None = None,
    warmup_steps: int | None = None,
    warmup_ratio: float | None = None,
    init_lr: float = 0.0,
) -> Schedule:
    """Linear from ``init_lr`` at step 0 to ``lr`` at the end of warmup, then ``lr``."""
    _rates("linear_warmup", lr=lr, init_lr=init_lr)
    warm = warmup_length(total_steps, warmup_steps, warmup_ratio)

    def schedule(step: Tensor) -> Tensor:
        frac = torch.clamp(_float(step) / max(warm, 1), max=1.0) if warm else torch.ones_like(_float(step))
        return init_lr + (lr - init_lr) * frac

    return schedule


@SCHEDULES.register("cosine")
def cosine_decay(lr: float, *, total_steps: int | None = None, min_lr: float = 0.0) -> Schedule:
    """Half a cosine from ``lr`` at step 0 to ``min_lr`` at ``total_steps``, then ``min_lr``."""
    _rates("cosine", lr=lr, min_lr=min_lr)
    total = _need_total("cosine", total_steps)
    return lambda step: _cosine(_float(step) / total, lr, min_lr)


@SCHEDULES.register("warmup_cosine")
def warmup_cosine(
    lr: float,
    *,
    total_steps: int | None = None,
    warmup_steps: int | None = None,
    warmup_ratio: float | None = None,
    min_lr: float = 0.0,
    init_lr: float = 0.0,
) -> Schedule:
    """Linear warmup ``init_lr -> lr``, then cosine ``lr -> min_lr`` at ``total_steps``.

    Continuous: both pieces give ``lr`` at the end of warmup.
    """
    _rates("warmup_cosine", lr=lr, min_lr=min_lr, init_lr=init_lr)
    total = _need_total("warmup_cosine", total_steps)
    warm = warmup_length(total, warmup_steps, warmup_ratio)
    if warm >= total:
        raise ValueError(
            f"warmup_cosine: warmup ({plural(warm, 'step')}) must be shorter than total_steps={total}; "
            "use linear_warmup for a warmup with no decay"
        )

    def schedule(step: Tensor) -> Tensor:
        s = _float(step)
        up = init_lr + (lr - init_lr) * s / max(warm, 1)
        down = _cosine((s - warm) / max(total - warm, 1), lr, min_lr)
        return torch.where(s < warm, up, down)

    return schedule


@SCHEDULES.register("step")
def step_decay(
    lr: float, *, total_steps: int | None = None, step_size: int = 1000, gamma: float = 0.1
) -> Schedule:
    """``lr * gamma ** (step // step_size)``, as ``torch.optim.lr_scheduler.StepLR``, up to ``total_steps``.

    Past ``total_steps`` (a resumed run that trains longer) the rate stays at
    its value there, as every schedule's does; without it, it decays on.
    """
    if step_size <= 0:
        raise ValueError(f"step schedule needs step_size > 0, got {step_size}")
    _rates("step", lr=lr, gamma=gamma)
    end = float("inf") if total_steps is None else int(total_steps)
    return lambda step: lr * gamma ** torch.floor(torch.clamp(_float(step), max=end) / step_size)


def _cosine(frac: Tensor, lr: float, min_lr: float) -> Tensor:
    frac = torch.clamp(frac, 0.0, 1.0)
    return min_lr + (lr - min_lr) * 0.5 * (1 + torch.cos(math.pi * frac))
