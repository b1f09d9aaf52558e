"""Muon: momentum, then the nearest orthogonal matrix of each 2-D update (Jordan et al. 2024).

    tx = muon(0.02)          # hidden matrices by Muon; embeddings, head and scalars by AdamW

``scale_by_muon`` is the transform: Nesterov momentum, then a quintic
Newton-Schulz iteration that maps each 2-D update ``G = U S V^T`` to about
``U V^T`` (singular values near 1; the iteration is tuned for speed, not
convergence: they land in roughly [0.7, 1.2]), then a shape-aware scale.
Same-shape matrices are stacked and orthogonalised in one batched call. It
runs in bfloat16, as modded-nanogpt does (float64 updates stay float64, so
gradient checks through the optimizer stay exact).

Scale rules (``scale_rule``):

- ``"match_adamw"`` (the default, Moonlight's rule, Liu et al. 2025):
  ``0.2 * sqrt(max(rows, cols))``, which makes the update's RMS about 0.2,
  AdamW's typical RMS: AdamW's learning rate and weight decay carry over, and
  the AdamW half of ``muon`` (embeddings, head, scalars) shares them.
- ``"keller"`` (Keller Jordan's ``muon.py``): ``max(1, rows / cols) ** 0.5``;
  the update's RMS is then about ``1 / sqrt(cols)``, so use Muon's own learning
  rates (about 0.02) and ``adamw_lr_scale`` to bring AdamW's down.

``muon(...)`` (``[optim] kind = "muon"``) trains a parameter with Muon when it
is 2-D and its name matches none of the globs ``adamw_match`` (embeddings and
output heads, whose rows are tokens rather than features, are not matrices in
Muon's sense), and every other parameter with AdamW. Arithmetic goes through
``craft.optim.foreach``, so the whole optimizer works under ``vmap`` and ``grad``.
"""

from __future__ import annotations

import fnmatch
import re
from collections import defaultdict
from typing import NamedTuple

import torch
from torch import Tensor

from craft.optim import foreach
from craft.optim.alias import OPTIMIZERS, adamw
from craft.optim.base import (
    Schedule,
    Transform,
    Updates,
    chain,
    expect_state,
    flat,
    matching,
    scale_by_learning_rate,
)
from craft.optim.combine import partition
from craft.optim.decay import DecayMask, add_decayed_weights
from craft.optim.transforms import clip_by_global_norm
from craft.tree import Params, zeros_like

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""The quintic's ``(a, b, c)`` from Keller Jordan's muon: ``X <- a X + b (X X^T) X + c (X X^T)^2 X``."""
SCALE_RULES = ("match_adamw", "keller")
ADAMW_MATCH = ["*wte*", "*wpe*", "*emb*", "*head*"]
"""Default names ``muon`` trains with AdamW whatever their shape: embeddings and output heads."""


def newton_schulz(g: Tensor, steps: int = 5, bf16: bool = True) -> Tensor:
    """About ``U V^T`` for ``g = U S V^T``, ``g`` of shape ``(..., rows, cols)`` (a stack of matrices).

    The quintic iteration on ``g / |g|_F`` (so every singular value starts
    <= 1). It works on the wide orientation (``rows <= cols``), where ``X X^T``
    is the smaller Gram matrix. ``bf16``: iterate in bfloat16 unless ``g`` is
    float64. Returns ``g``'s dtype.
    """
    a, b, c = NS_COEFFICIENTS
    x = g.to(torch.bfloat16) if bf16 and g.dtype != torch.float64 else g
    tall = g.shape[-2] > g.shape[-1]
    if tall:
        x = x.mT
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT  # (..., rows, rows)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(g.dtype)


def shape_scale(rows: int, cols: int, rule: str) -> float:
    """The factor of an orthogonalised ``(rows, cols)`` update under ``rule`` (see the module doc)."""
    if rule == "match_adamw":
        return 0.2 * max(rows, cols) ** 0.5
    if rule == "keller":
        return max(1.0, rows / cols) ** 0.5
    raise ValueError(f"muon: unknown scale_rule {rule!r}; choose one of {', '.join(map(repr, SCALE_RULES))}")


def orthogonalize(u: Updates, steps: int = 5, bf16: bool = True, rule: str = "match_adamw") -> Updates:
    """Every 2-D leaf of ``u`` orthogonalised and scaled; same shapes in one batched call. Leaves must be 2-D."""
    by_shape: dict[tuple[int, ...], list[str]] = defaultdict(list)
    for name, g in u.items():
        if g.ndim != 2:
            raise ValueError(f"muon orthogonalises matrices; {name!r} has shape {tuple(g.shape)}")
        by_shape[tuple(g.shape)].append(name)
    out = {}
    for (rows, cols), names in by_shape.items():
        stacked = torch.stack([u[k] for k in names])  # (n, rows, cols)
        ortho = newton_schulz(stacked, steps, bf16) * shape_scale(rows, cols, rule)
        out.update(zip(names, ortho.unbind()))
    return {k: out[k] for k in u}


class MuonState(NamedTuple):
    momentum: Params


def scale_by_muon(
    momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5, bf16: bool = True, scale_rule: str = "match_adamw"
) -> Transform:
    """Muon's direction for 2-D leaves: ``buf = lerp(buf, g, 1 - momentum)``; Nesterov's
    ``lerp(g, buf, momentum)`` (else ``buf``), orthogonalised by ``orthogonalize``."""
    shape_scale(1, 1, scale_rule)  # an unknown rule fails here, not at the first step
    if not 0 <= momentum < 1:
        raise ValueError(f"muon: momentum must be in [0, 1), got {momentum}")

    def init(params: Params) -> MuonState:
        return MuonState(zeros_like(flat(params)))

    def update(u: Updates, state: MuonState, params: Params | None = None):
        expect_state(state, MuonState, "scale_by_muon")
        names, g = list(u), list(u.values())
        buf = foreach.lerp(matching(state.momentum, u, "the optimizer state", "scale_by_muon"), g, 1 - momentum)
        direction = foreach.lerp(g, buf, momentum) if nesterov else buf
        return orthogonalize(dict(zip(names, direction)), ns_steps, bf16, scale_rule), MuonState(dict(zip(names, buf)))

    return Transform(init, update)


def muon_labels(tree: Params, adamw_match: list[str] | re.Pattern) -> dict[str, str]:
    """``{name: "muon" | "adamw"}``: Muon for 2-D leaves whose name matches no glob of ``adamw_match``
    (or the ``globs_pattern`` of them)."""
    adamw_names = adamw_match if isinstance(adamw_match, re.Pattern) else globs_pattern(adamw_match)
    return {name: "muon" if t.ndim == 2 and not adamw_names.match(name) else "adamw" for name, t in tree.items()}


def globs_pattern(globs: list[str]) -> re.Pattern:
    """One regex matching a name that any of the fnmatch ``globs`` matches (none: no name).

    Built once, outside the compiled step: dynamo traces ``re.Pattern.match``,
    but not ``fnmatch.translate`` (torch 2.11) nor fnmatch's ``lru_cache``.
    """
    return re.compile("|".join(fnmatch.translate(m) for m in globs) or "(?!)")


def _scaled(learning_rate: float | Tensor | Schedule, factor: float):
    if factor == 1:
        return learning_rate
    if callable(learning_rate):
        return lambda count: learning_rate(count) * factor
    return learning_rate * factor


@OPTIMIZERS.register("muon")
def muon(
    learning_rate: float | Schedule,
    *,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    bf16: bool = True,
    scale_rule: str = "match_adamw",
    weight_decay: float = 0.0,
    adamw_match: list[str] = ADAMW_MATCH,
    adamw_lr_scale: float = 1.0,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    mask: DecayMask | None = None,
    clip_norm: float | None = None,
) -> Transform:
    """Muon for hidden matrices, AdamW (``b1``, ``b2``, ``eps``, at ``adamw_lr_scale`` times
    the learning rate) for the rest (see ``muon_labels``). Decoupled ``weight_decay``
    on both halves (AdamW's masked by ``mask``, as ``adamw``'s); ``clip_norm`` clips
    the global gradient norm first."""
    muon_tx = chain(
        scale_by_muon(momentum, nesterov, ns_steps, bf16, scale_rule),
        # a tensor (a sweep's, inject_hyperparams) may be 0 for some members only: always decay
        *([add_decayed_weights(weight_decay, lambda p: dict.fromkeys(p, True))]
          if isinstance(weight_decay, Tensor) or weight_decay else []),
        scale_by_learning_rate(learning_rate),
    )
    adamw_tx = adamw(_scaled(learning_rate, adamw_lr_scale), b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)
    txs = {"muon": muon_tx, "adamw": adamw_tx}
    adamw_names = globs_pattern(list(adamw_match))

    def split(tree: Params) -> Transform:  # only the halves that have leaves: foreach ops reject empty lists
        labels = muon_labels(tree, adamw_names)
        return partition({k: tx for k, tx in txs.items() if k in labels.values()}, labels)

    def init(params: Params):
        return split(flat(params)).init(params)

    def update(u: Updates, state, params: Params | None = None):
        return split(u).update(u, state, params)

    tx = Transform(init, update)
    return chain(clip_by_global_norm(clip_norm), tx) if clip_norm is not None else tx
