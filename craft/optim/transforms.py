"""Gradient transforms: clipping, momentum, moment estimates, sign, noise.

Each returns a ``Transform``; ``craft.optim.alias`` composes them into the
usual optimizers. All arithmetic is multi-tensor (``craft.optim.foreach``:
``torch._foreach_*`` kernels, one op per tensor under ``torch.func``) and
branch-free, so a compiled step has no graph break and no host sync.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from craft.optim import foreach
from craft.optim.base import (
    Transform,
    Updates,
    device_of,
    expect_state,
    flat,
    in_range,
    map_scale,
    matching,
    stateless,
)
from craft.tree import Params, global_norm, zeros_like


def clip_by_global_norm(max_norm: float) -> Transform:
    """Scale updates so that their global L2 norm is at most ``max_norm``.

    Matches ``torch.nn.utils.clip_grad_norm_``: the factor is
    ``min(1, max_norm / (norm + 1e-6))``, applied unconditionally, so there is
    no data-dependent branch.
    """
    if max_norm <= 0:
        raise ValueError(f"clip_by_global_norm: max_norm must be > 0, got {max_norm}")

    def clip(u: Updates, params: Params | None) -> Updates:
        return map_scale(u, torch.clamp(max_norm / (global_norm(u) + 1e-6), max=1.0))

    return stateless(clip)


def clip(max_delta: float) -> Transform:
    """Clip every update element to ``[-max_delta, max_delta]`` (``torch.nn.utils.clip_grad_value_``)."""
    if max_delta <= 0:
        raise ValueError(f"clip: max_delta must be > 0, got {max_delta}")

    def clip_each(u: Updates, params: Params | None) -> Updates:
        return dict(zip(u, foreach.clamp_max(foreach.clamp_min(list(u.values()), -max_delta), max_delta)))

    return stateless(clip_each)


def scale_by_sign() -> Transform:
    """Replace every update element by its sign (signSGD)."""
    return stateless(lambda u, params: dict(zip(u, foreach.sign(list(u.values())))))


class TraceState(NamedTuple):
    momentum: Params


def trace(momentum: float, nesterov: bool = False) -> Transform:
    """Heavy-ball momentum as in ``torch.optim.SGD``: ``buf = momentum * buf + g``.

    Emits ``buf`` (or ``g + momentum * buf`` with ``nesterov``).
    """
    in_range("trace", "momentum", momentum)

    def init(params: Params) -> TraceState:
        return TraceState(zeros_like(flat(params)))

    def update(u: Updates, state: TraceState, params: Params | None = None):
        expect_state(state, TraceState, "trace")
        names, g = list(u), list(u.values())
        buf = foreach.add(foreach.mul(matching(state.momentum, u, "the optimizer state", "trace"), momentum), g)
        out = foreach.add(g, buf, alpha=momentum) if nesterov else buf
        return dict(zip(names, out)), TraceState(dict(zip(names, buf)))

    return Transform(init, update)


class AdamState(NamedTuple):
    count: Tensor  # 0-d int64
    mu: Params  # first moment
    nu: Params  # second moment


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0) -> Transform:
    """Adam's preconditioning: ``m_hat / (sqrt(v_hat + eps_root) + eps)`` with bias correction.

    ``eps_root`` (optax's) keeps the square root differentiable where ``v_hat``
    is zero, e.g. when meta-learning through the update; 0 is torch's Adam.
    """
    for name, beta in (("b1", b1), ("b2", b2)):
        in_range("scale_by_adam", name, beta, below=1.0)
    in_range("scale_by_adam", "eps", eps)

    def init(params: Params) -> AdamState:
        count = torch.zeros((), dtype=torch.int64, device=device_of(params))
        return AdamState(count, zeros_like(params), zeros_like(params))

    def update(u: Updates, state: AdamState, params: Params | None = None):
        expect_state(state, AdamState, "scale_by_adam")
        names, g = list(u), list(u.values())
        count = state.count + 1
        t = count.to(torch.float64)  # bias corrections in double, as torch.optim does
        mu = foreach.lerp(matching(state.mu, u, "the optimizer state", "scale_by_adam"), g, 1 - b1)
        nu = foreach.mul(matching(state.nu, u, "the optimizer state", "scale_by_adam"), b2)
        nu = foreach.addcmul(nu, g, g, value=1 - b2)
        if eps_root:
            root = foreach.sqrt(foreach.add(foreach.div(nu, 1 - b2**t), eps_root))
        else:  # torch's order of operations, bit for bit
            root = foreach.div(foreach.sqrt(nu), torch.sqrt(1 - b2**t))
        out = foreach.div(foreach.div(mu, foreach.add(root, eps)), 1 - b1**t)
        return dict(zip(names, out)), AdamState(count, dict(zip(names, mu)), dict(zip(names, nu)))

    return Transform(init, update)


class RmsState(NamedTuple):
    nu: Params  # running mean of squared gradients (rms) or their running sum (rss)


def scale_by_rms(decay: float = 0.99, eps: float = 1e-8, initial_scale: float = 0.0) -> Transform:
    """RMSprop's preconditioning: ``nu = decay * nu + (1 - decay) * g^2``, emits ``g / (sqrt(nu) + eps)``.

    ``eps`` is added after the square root, as ``torch.optim.RMSprop`` does
    (optax adds it inside); ``initial_scale`` is ``nu``'s starting value.
    """
    in_range("scale_by_rms", "decay", decay, below=1.0)
    in_range("scale_by_rms", "eps", eps)

    def init(params: Params) -> RmsState:
        return RmsState({k: torch.full_like(p, initial_scale) for k, p in flat(params).items()})

    def update(u: Updates, state: RmsState, params: Params | None = None):
        expect_state(state, RmsState, "scale_by_rms")
        names, g = list(u), list(u.values())
        nu = foreach.mul(matching(state.nu, u, "the optimizer state", "scale_by_rms"), decay)
        nu = foreach.addcmul(nu, g, g, value=1 - decay)
        out = foreach.div(g, foreach.add(foreach.sqrt(nu), eps))
        return dict(zip(names, out)), RmsState(dict(zip(names, nu)))

    return Transform(init, update)


def scale_by_rss(initial_accumulator_value: float = 0.0, eps: float = 1e-10) -> Transform:
    """Adagrad's preconditioning: ``nu += g^2``, emits ``g / (sqrt(nu) + eps)`` (``torch.optim.Adagrad``)."""
    in_range("scale_by_rss", "initial_accumulator_value", initial_accumulator_value)
    in_range("scale_by_rss", "eps", eps)

    def init(params: Params) -> RmsState:
        return RmsState({k: torch.full_like(p, initial_accumulator_value) for k, p in flat(params).items()})

    def update(u: Updates, state: RmsState, params: Params | None = None):
        expect_state(state, RmsState, "scale_by_rss")
        names, g = list(u), list(u.values())
        nu = foreach.addcmul(matching(state.nu, u, "the optimizer state", "scale_by_rss"), g, g)
        out = foreach.div(g, foreach.add(foreach.sqrt(nu), eps))
        return dict(zip(names, out)), RmsState(dict(zip(names, nu)))

    return Transform(init, update)


class LionState(NamedTuple):
    mu: Params  # momentum


def scale_by_lion(b1: float = 0.9, b2: float = 0.99) -> Transform:
    """Lion (Chen et al. 2023): emits ``sign(b1 * mu + (1 - b1) * g)``, then ``mu = b2 * mu + (1 - b2) * g``."""
    for name, beta in (("b1", b1), ("b2", b2)):
        in_range("scale_by_lion", name, beta, below=1.0)

    def init(params: Params) -> LionState:
        return LionState(zeros_like(flat(params)))

    def update(u: Updates, state: LionState, params: Params | None = None):
        expect_state(state, LionState, "scale_by_lion")
        names, g = list(u), list(u.values())
        mu = matching(state.mu, u, "the optimizer state", "scale_by_lion")
        out = foreach.sign(foreach.lerp(mu, g, 1 - b1))
        return dict(zip(names, out)), LionState(dict(zip(names, foreach.lerp(mu, g, 1 - b2))))

    return Transform(init, update)


class NoiseState(NamedTuple):
    count: Tensor  # 0-d int64
    seed: Tensor  # 0-d int64: with count, the whole source of the noise


def add_noise(eta: float, gamma: float, seed: int) -> Transform:
    """Add Gaussian noise of variance ``eta / (1 + t)^gamma`` at update ``t`` (Neelakantan et al. 2015).

    The noise is a pure function of ``(seed, t, leaf, element)`` (a counter-based
    integer hash and Box-Muller, no generator), so it is reproducible, the
    same eager and compiled, and each vmapped member with its own seed draws
    its own noise. ``seed`` is held in the state as a tensor.
    """
    in_range("add_noise", "eta", eta)  # a variance: below 0, every update would be NaN

    def init(params: Params) -> NoiseState:
        device = device_of(params)
        return NoiseState(torch.zeros((), dtype=torch.int64, device=device),
                          torch.tensor(seed & 0x7FFFFFFF, dtype=torch.int64, device=device))

    def update(u: Updates, state: NoiseState, params: Params | None = None):
        expect_state(state, NoiseState, "add_noise")
        count = state.count + 1
        std = torch.sqrt(eta / count.to(torch.float64) ** gamma)
        key = _hash32(state.seed ^ _hash32(count))
        out = {k: g + (std * hashed_normal(_hash32(key + i), g)).to(g.dtype) for i, (k, g) in enumerate(u.items())}
        return out, NoiseState(count, state.seed)

    return Transform(init, update)


_M32 = 0xFFFFFFFF


def _hash32(x: Tensor) -> Tensor:
    """A 32-bit integer mix (lowbias32-style) on int64 tensors; multipliers < 2^31, so nothing overflows."""
    x = x & _M32
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & _M32
    x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & _M32
    return x ^ (x >> 16)


def hashed_normal(key: Tensor, like: Tensor) -> Tensor:
    """Standard normal float64 noise shaped like ``like``: a pure function of the 0-d int64 ``key``."""
    index = torch.arange(like.numel(), dtype=torch.int64, device=like.device).view(like.shape)
    a = _hash32(key + 2 * index)
    b = _hash32(key + 2 * index + 1)
    u1 = (a.to(torch.float64) + 1) / (_M32 + 2)  # in (0, 1): log is finite
    u2 = b.to(torch.float64) / (_M32 + 1)
    return torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)
