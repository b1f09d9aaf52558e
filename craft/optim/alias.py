"""The usual optimizers, each a short ``chain`` of transforms.

Every entry of ``OPTIMIZERS`` is a factory ``f(learning_rate, **options)``
returning a ``Transform``; ``learning_rate`` is a float or a ``Schedule``.
``clip_norm`` clips the global gradient norm first, as ``clip_grad_norm_``
before ``optimizer.step()`` does. ``weight_decay`` falls on the parameters
``mask`` selects: by default matrices and convolution kernels only
(``default_decay_mask``), where a ``torch.optim`` optimizer decays all it
holds. Options left at their neutral value add no transform (and no state)
to the chain.
"""

from __future__ import annotations

from torch import Tensor

from craft.optim.base import Schedule, Transform, chain, scale_by_learning_rate
from craft.optim.decay import DecayMask, add_decayed_weights
from craft.optim.transforms import (
    clip_by_global_norm,
    scale_by_adam,
    scale_by_lion,
    scale_by_rms,
    scale_by_rss,
    trace,
)
from craft.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")


def _clip(clip_norm: float | None) -> list[Transform]:
    return [clip_by_global_norm(clip_norm)] if clip_norm is not None else []


def _decay(weight_decay: float | Tensor, mask: DecayMask | None) -> list[Transform]:
    # A tensor (inject_hyperparams) may be zero for some members and not others: always decay.
    return [add_decayed_weights(weight_decay, mask)] if isinstance(weight_decay, Tensor) or weight_decay else []


@OPTIMIZERS.register("sgd")
def sgd(
    learning_rate: float | Schedule,
    *,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    mask: DecayMask | None = None,
    clip_norm: float | None = None,
) -> Transform:
    """``torch.optim.SGD``: L2 weight decay (masked) folded into the gradient, then momentum.

    Unlike torch's, its ``weight_decay`` spares biases, norm scales, embeddings and every
    other parameter under 2-D (``default_decay_mask``); to decay all, as torch does, pass
    ``mask=lambda p: dict.fromkeys(p, True)``.
    """
    if nesterov and momentum <= 0:
        raise ValueError("sgd: nesterov needs momentum > 0")
    return chain(
        *_clip(clip_norm),
        *_decay(weight_decay, mask),
        *([trace(momentum, nesterov)] if momentum else []),
        scale_by_learning_rate(learning_rate),
    )


@OPTIMIZERS.register("adam")
def adam(
    learning_rate: float | Schedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mask: DecayMask | None = None,
    clip_norm: float | None = None,
) -> Transform:
    """``torch.optim.Adam``: L2 weight decay (masked) enters the moments.

    Unlike torch's, its ``weight_decay`` spares biases, norm scales, embeddings and every
    other parameter under 2-D (``default_decay_mask``); to decay all, as torch does, pass
    ``mask=lambda p: dict.fromkeys(p, True)``.
    """
    return chain(
        *_clip(clip_norm),
        *_decay(weight_decay, mask),
        scale_by_adam(b1, b2, eps),
        scale_by_learning_rate(learning_rate),
    )


@OPTIMIZERS.register("adamw")
def adamw(
    learning_rate: float | Schedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    mask: DecayMask | None = None,
    clip_norm: float | None = None,
) -> Transform:
    """``torch.optim.AdamW``: decoupled weight decay, scaled by the learning rate.

    Unlike torch's, its ``weight_decay`` spares biases, norm scales, embeddings and every
    other parameter under 2-D (``default_decay_mask``); to decay all, as torch does, pass
    ``mask=lambda p: dict.fromkeys(p, True)``.
    """
    return chain(
        *_clip(clip_norm),
        scale_by_adam(b1, b2, eps),
        *_decay(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@OPTIMIZERS.register("lion")
def lion(
    learning_rate: float | Schedule,
    *,
    b1: float = 0.9,
    b2: float = 0.99,
    weight_decay: float = 1e-3,
    mask: DecayMask | None = None,
    clip_norm: float | None = None,
) -> Transform:
    """Lion (Chen et al. 2023): the sign of interpolated momentum, decoupled weight decay.

    Its updates are +-1 per element: use a learning rate 3-10x smaller than AdamW's.
    """
    return chain(
        *_clip(clip_norm),
        scale_by_lion(b1, b2),
        *_decay(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@OPTIMIZERS.register("rmsprop")
def rmsprop(
    learning_rate: float | Schedule,
    *,
    decay: float = 0.99,
    eps: float = 1e-8,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    mask: DecayMask | None = None,
    clip_norm: float | None = None,
) -> Transform:
    """``torch.optim.RMSprop`` (``alpha`` is ``decay``; not centered): L2 decay, RMS scaling, momentum.

    Unlike torch's, its ``weight_decay`` spares biases, norm scales, embeddings and every
    other parameter under 2-D (``default_decay_mask``); to decay all, as torch does, pass
    ``mask=lambda p: dict.fromkeys(p, True)``.
    """
    return chain(
        *_clip(clip_norm),
        *_decay(weight_decay, mask),
        scale_by_rms(decay, eps),
        *([trace(momentum)] if momentum else []),
        scale_by_learning_rate(learning_rate),
    )


@OPTIMIZERS.register("adagrad")
def adagrad(
    learning_rate: float | Schedule,
    *,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    weight_decay: float = 0.0,
    mask: DecayMask | None = None,
    clip_norm: float | None = None,
) -> Transform:
    """``torch.optim.Adagrad`` (without ``lr_decay``; use a schedule): L2 decay, then RSS scaling.

    Unlike torch's, its ``weight_decay`` spares biases, norm scales, embeddings and every
    other parameter under 2-D (``default_decay_mask``); to decay all, as torch does, pass
    ``mask=lambda p: dict.fromkeys(p, True)``.
    """
    return chain(
        *_clip(clip_norm),
        *_decay(weight_decay, mask),
        scale_by_rss(initial_accumulator_value, eps),
        scale_by_learning_rate(learning_rate),
    )
