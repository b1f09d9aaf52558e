"""Gradient transforms: clipping, momentum, Adam moments, weight decay.

Each returns a ``Transform``; ``craft.optim.alias`` composes them into the
usual optimizers. All arithmetic is multi-tensor (``torch._foreach_*``) and
branch-free, so a compiled step has no graph break and no host sync.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from craft.optim.base import Transform, Updates, _device, _stateless
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
        coef = torch.clamp(max_norm / (global_norm(u) + 1e-6), max=1.0)
        return dict(zip(u, torch._foreach_mul(list(u.values()), coef)))

    return _stateless(clip)


class TraceState(NamedTuple):
    momentum: Params


def trace(momentum: float, nesterov: bool = False) -> Transform:
    """Heavy-ball momentum as in ``torch.optim.SGD``: ``buf = momentum * buf + g``.

    Emits ``buf`` (or ``g + momentum * buf`` with ``nesterov``).
    """

    def init(params: Params) -> TraceState:
        return TraceState(zeros_like(params))

    def update(u: Updates, state: TraceState, params: Params | None = None):
        names, g = list(u), list(u.values())
        buf = torch._foreach_add(torch._foreach_mul(list(state.momentum.values()), momentum), g)
        out = torch._foreach_add(g, buf, alpha=momentum) if nesterov else buf
        return dict(zip(names, out)), TraceState(dict(zip(names, buf)))

    return Transform(init, update)


class AdamState(NamedTuple):
    count: Tensor  # 0-d int64
    mu: Params  # first moment
    nu: Params  # second moment


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Transform:
    """Adam's preconditioning: ``m_hat / (sqrt(v_hat) + eps)`` with bias correction."""

    def init(params: Params) -> AdamState:
        count = torch.zeros((), dtype=torch.int64, device=_device(params))
        return AdamState(count, zeros_like(params), zeros_like(params))

    def update(u: Updates, state: AdamState, params: Params | None = None):
        names, g = list(u), list(u.values())
        count = state.count + 1
        t = count.to(torch.float64)  # bias corrections in double, as torch.optim does
        mu = torch._foreach_lerp(list(state.mu.values()), g, 1 - b1)
        nu = torch._foreach_addcmul(torch._foreach_mul(list(state.nu.values()), b2), g, g, value=1 - b2)
        bc1 = 1 - b1**t
        bc2_sqrt = torch.sqrt(1 - b2**t)
        denom = torch._foreach_add(torch._foreach_div(torch._foreach_sqrt(nu), bc2_sqrt), eps)
        out = torch._foreach_div(torch._foreach_div(mu, denom), bc1)
        return dict(zip(names, out)), AdamState(count, dict(zip(names, mu)), dict(zip(names, nu)))

    return Transform(init, update)


DecayMask = Mapping[str, bool] | Callable[[Params], Mapping[str, bool]]

_EMBEDDING_HINTS = ("emb", "wte", "wpe")


def default_decay_mask(params: Params) -> dict[str, bool]:
    """Decay matrices and conv kernels; not biases, norm scales or embeddings.

    Judged from the tree alone: a leaf decays if it has 2+ dims and its module
    name does not look like an embedding (``emb``, ``wte``, ``wpe``). Use
    ``decay_mask_from_module`` where module types should decide instead.
    """
    return {
        name: p.ndim >= 2 and not any(h in name.rpartition(".")[0].lower() for h in _EMBEDDING_HINTS)
        for name, p in params.items()
    }


def decay_mask_from_module(model: nn.Module) -> dict[str, bool]:
    """Decay the weights of ``Linear`` and convolution modules and nothing else."""
    decayed = (nn.Linear, nn.modules.conv._ConvNd)
    mask = {}
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            mask[full] = isinstance(module, decayed) and p_name == "weight"
    return mask


def add_decayed_weights(weight_decay: float | Tensor, mask: DecayMask | None = None) -> Transform:
    """Add ``weight_decay * param`` to the updates of the leaves ``mask`` selects.

    Placed after ``scale_by_adam`` and before the learning rate, this is
    AdamW's decoupled decay; placed before, it is classic L2 (``SGD``, ``Adam``).
    ``mask`` is a ``{name: bool}`` mapping or a function of the params giving one;
    the default is ``default_decay_mask``. ``weight_decay`` may be a 0-d tensor
    (a hyperparameter held in the state, see ``inject_hyperparams``).
    """
    mask_fn = mask if callable(mask) else (lambda params: mask) if mask is not None else default_decay_mask

    def decay(u: Updates, params: Params | None) -> Updates:
        if params is None:
            raise ValueError("add_decayed_weights needs params: call update(grads, state, params)")
        if not isinstance(weight_decay, Tensor) and weight_decay == 0:
            return u
        selected = mask_fn(params)
        names = [k for k in u if selected.get(k, False)]
        if not names:
            return u
        decaying = [params[k] for k in names]
        if isinstance(weight_decay, Tensor):  # `alpha` takes only Python numbers
            decaying, alpha = torch._foreach_mul(decaying, weight_decay), 1
        else:
            alpha = weight_decay
        decayed = torch._foreach_add([u[k] for k in names], decaying, alpha=alpha)
        return {**u, **dict(zip(names, decayed))}

    return _stateless(decay)
