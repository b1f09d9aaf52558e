"""Every exported transform keeps each leaf's dtype: a 0-d float32 and a bf16 parameter stay so.

torch promotes a 0-d float32 tensor times a 0-d float64 one (a schedule's
value, Adam's bias correction, an injected hyperparameter) to float64; one
step then turned a 0-d parameter (a temperature) into float64, and the next
compiled step refused the state as moved. ``TRANSFORMS`` lists a builder for
every exported function returning a ``Transform``; a new export must join it.
"""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
from torch.utils import _pytree as pytree

import craft.optim as optim
from craft.optim import OPTIMIZERS, apply_updates, chain, cosine_decay, inject_hyperparams, sgd

SCHEDULE = cosine_decay(0.1, total_steps=10)
LR = torch.tensor(0.1, dtype=torch.float64)  # a 0-d float64 hyperparameter, as inject_hyperparams holds them


def _all(p):
    return dict.fromkeys(p, True)


TRANSFORMS = {
    "adagrad": lambda: optim.adagrad(SCHEDULE, weight_decay=0.1, mask=_all),
    "adam": lambda: optim.adam(SCHEDULE, weight_decay=0.1, mask=_all, clip_norm=1.0),
    "adamw": lambda: optim.adamw(SCHEDULE, mask=_all),
    "add_decayed_weights": lambda: optim.add_decayed_weights(LR, mask=_all),
    "add_noise": lambda: optim.add_noise(0.01, 0.55, seed=0),
    "apply_if_finite": lambda: optim.apply_if_finite(optim.adam(0.1), 2),
    "chain": lambda: chain(optim.scale_by_adam(), optim.scale_by_learning_rate(LR)),
    "clip": lambda: optim.clip(0.1),
    "clip_by_global_norm": lambda: optim.clip_by_global_norm(0.1),
    "clip_trained": lambda: optim.clip_trained(0.1, [{"match": "a", "freeze": True}], ["a", "h", "m", "v"]),
    "dp_aggregate": lambda: optim.dp_aggregate(clip_norm=0.1, noise_multiplier=1.0),
    "ema": lambda: chain(optim.adam(0.1), optim.ema(0.9)),
    "identity": optim.identity,
    "inject_hyperparams": lambda: inject_hyperparams(optim.adamw, learning_rate=0.1, weight_decay=0.1),
    "lion": lambda: optim.lion(SCHEDULE, mask=_all),
    "lookahead": lambda: optim.lookahead(optim.adam(0.1), sync_period=1, alpha=0.5),
    "masked": lambda: optim.masked(optim.adam(0.1), {"a": True, "m": True}),
    "multi_steps": lambda: optim.multi_steps(optim.adam(0.1), every_k=1),
    "muon": lambda: optim.muon(SCHEDULE, weight_decay=0.1),
    "param_groups": lambda: optim.param_groups(functools.partial(optim.adam, 0.1), [{"match": "m", "lr_scale": 2.0}],
                                               ["a", "h", "m", "v"]),
    "partition": lambda: optim.partition({"x": optim.adam(0.1), "y": sgd(SCHEDULE, momentum=0.9)},
                                         lambda name: "x" if name in ("a", "m") else "y"),
    "rmsprop": lambda: optim.rmsprop(SCHEDULE, momentum=0.9, weight_decay=0.1, mask=_all),
    "scale": lambda: optim.scale(0.5),
    "scale_by_adam": lambda: chain(optim.scale_by_adam(eps_root=1e-8), optim.scale_by_learning_rate(LR)),
    "scale_by_learning_rate": lambda: optim.scale_by_learning_rate(LR),
    "scale_by_lion": optim.scale_by_lion,
    "scale_by_muon": lambda: optim.masked(optim.scale_by_muon(), {"m": True}),  # it orthogonalises matrices only
    "scale_by_rms": optim.scale_by_rms,
    "scale_by_rss": optim.scale_by_rss,
    "scale_by_schedule": lambda: optim.scale_by_schedule(SCHEDULE),
    "scale_by_sign": optim.scale_by_sign,
    "set_to_zero": optim.set_to_zero,
    "sgd": lambda: sgd(SCHEDULE, momentum=0.9, nesterov=True, weight_decay=0.1, mask=_all),
    "stateless": lambda: optim.stateless(lambda u, params: optim.map_scale(u, LR)),
    "trace": lambda: optim.trace(0.9, nesterov=True),
}
PER_EXAMPLE = {"dp_aggregate"}  # takes per-example gradients, (B, ...) per leaf


def _params() -> dict[str, torch.Tensor]:
    return {"a": torch.tensor(1.0), "h": torch.tensor(1.0, dtype=torch.bfloat16),
            "m": torch.ones(3, 4, dtype=torch.bfloat16), "v": torch.ones(4)}


def _dtypes(tree) -> list[torch.dtype]:
    return [t.dtype for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


def test_the_table_holds_every_exported_transform():
    functions = {n: getattr(optim, n) for n in optim.__all__ if inspect.isfunction(getattr(optim, n))}
    exported = {n for n, f in functions.items() if inspect.signature(f).return_annotation.partition(" |")[0] == "Transform"}
    assert exported == TRANSFORMS.keys()
    assert set(OPTIMIZERS) <= TRANSFORMS.keys()


@pytest.mark.parametrize("vmapped", [False, True], ids=["multi_tensor", "per_tensor"])
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_updates_params_and_state_keep_their_dtypes(name, vmapped):
    """Two updates, on the multi-tensor path and on the per-tensor one (under vmap)."""
    tx = TRANSFORMS[name]()
    params = _params()
    wanted = {k: p.dtype for k, p in params.items()}

    def two_steps(params):
        state = tx.init(params)
        state_dtypes = _dtypes(state)
        for i in range(2):
            grads = {k: torch.full_like(p, 0.5 + i) for k, p in params.items()}
            if name in PER_EXAMPLE:
                grads = {k: torch.stack([g, -g]) for k, g in grads.items()}
            updates, state = tx.update(grads, state, params)
            assert {k: u.dtype for k, u in updates.items()} == wanted
            params = apply_updates(params, updates)
            assert _dtypes(state) == state_dtypes
        return params

    if vmapped:
        stacked = {k: p.unsqueeze(0) for k, p in params.items()}
        params = {k: p[0] for k, p in torch.func.vmap(two_steps, randomness="same")(stacked).items()}
    else:
        params = two_steps(params)
    assert {k: p.dtype for k, p in params.items()} == wanted


def test_apply_updates_keeps_the_params_dtype():
    params = {"a": torch.tensor(1.0), "m": torch.ones(2, dtype=torch.bfloat16)}
    wide = {k: torch.full(p.shape, 0.5, dtype=torch.float64) for k, p in params.items()}
    new = apply_updates(params, wide)
    assert {k: t.dtype for k, t in new.items()} == {"a": torch.float32, "m": torch.bfloat16}
    assert new["a"].item() == 1.5
