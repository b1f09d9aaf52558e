"""Each optimizer against its ``torch.optim`` counterpart, on the same gradients."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from craft.optim import (
    adagrad,
    adam,
    adamw,
    apply_updates,
    clip_by_global_norm,
    decay_mask_from_module,
    default_decay_mask,
    rmsprop,
    sgd,
    warmup_cosine,
)

STEPS = 25
ATOL, RTOL = 1e-6, 1e-5  # float32, 25 steps: only rounding differs


def _params(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layer.weight": torch.randn(6, 5, generator=g),
        "layer.bias": torch.randn(6, generator=g),
        "norm.weight": torch.randn(6, generator=g),
        "tok_emb.weight": torch.randn(10, 6, generator=g),
    }


def _grads(step: int) -> dict[str, torch.Tensor]:
    return {k: 3 * v for k, v in _params(seed=1000 + step).items()}


def _run_ours(tx, params):
    state = tx.init(params)
    for i in range(STEPS):
        updates, state = tx.update(_grads(i), state, params)
        params = apply_updates(params, updates)
    return params


def _run_torch(make_opt, params, *, decay_names=None, clip=None, scheduler=None):
    tensors = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    if decay_names is None:
        opt = make_opt([{"params": list(tensors.values())}])
    else:
        opt = make_opt(
            [
                {"params": [v for k, v in tensors.items() if k in decay_names]},
                {"params": [v for k, v in tensors.items() if k not in decay_names], "weight_decay": 0.0},
            ]
        )
    sched = scheduler(opt) if scheduler else None
    for i in range(STEPS):
        for k, v in tensors.items():
            v.grad = _grads(i)[k].clone()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(tensors.values()), clip)
        opt.step()
        if sched:
            sched.step()
    return {k: v.detach() for k, v in tensors.items()}


def _assert_close(ours, ref):
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], atol=ATOL, rtol=RTOL, msg=lambda m, k=k: f"{k}: {m}")


ALL = lambda p: {k: True for k in p}  # noqa: E731


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_sgd_matches_torch(momentum, nesterov, weight_decay):
    params = _params()
    ours = _run_ours(sgd(0.05, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, mask=ALL), params)
    ref = _run_torch(
        lambda g: torch.optim.SGD(g, lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay),
        params,
    )
    _assert_close(ours, ref)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_torch(weight_decay):
    params = _params()
    ours = _run_ours(adam(1e-2, b1=0.8, b2=0.99, eps=1e-7, weight_decay=weight_decay, mask=ALL), params)
    ref = _run_torch(
        lambda g: torch.optim.Adam(g, lr=1e-2, betas=(0.8, 0.99), eps=1e-7, weight_decay=weight_decay), params
    )
    _assert_close(ours, ref)


def test_adamw_default_mask_matches_torch_param_groups():
    """The default mask decays the matrix only: not the bias, norm or embedding."""
    params = _params()
    assert default_decay_mask(params) == {
        "layer.weight": True,
        "layer.bias": False,
        "norm.weight": False,
        "tok_emb.weight": False,
    }
    ours = _run_ours(adamw(1e-2, weight_decay=0.3, clip_norm=1.0), params)
    ref = _run_torch(
        lambda g: torch.optim.AdamW(g, lr=1e-2, weight_decay=0.3), params, decay_names={"layer.weight"}, clip=1.0
    )
    _assert_close(ours, ref)


RECIPE = "mask=lambda p: dict.fromkeys(p, True)"
L2 = {
    "sgd": (lambda **kw: sgd(0.05, momentum=0.9, weight_decay=0.05, **kw),
            lambda g: torch.optim.SGD(g, lr=0.05, momentum=0.9, weight_decay=0.05)),
    "adam": (lambda **kw: adam(1e-2, weight_decay=0.1, **kw), lambda g: torch.optim.Adam(g, lr=1e-2, weight_decay=0.1)),
    "rmsprop": (lambda **kw: rmsprop(1e-2, momentum=0.9, weight_decay=0.1, **kw),
                lambda g: torch.optim.RMSprop(g, lr=1e-2, momentum=0.9, weight_decay=0.1)),
    "adagrad": (lambda **kw: adagrad(0.1, weight_decay=0.1, **kw),
                lambda g: torch.optim.Adagrad(g, lr=0.1, weight_decay=0.1)),
}


@pytest.mark.parametrize("name", sorted(L2))
def test_the_docstrings_torch_parity_holds_with_and_without_their_mask(name):
    """Each says it is its torch.optim counterpart: by default with decay on the matrix only (torch's
    parameter groups), and with the docstring's mask, decay on every parameter as plain torch."""
    ours, theirs = L2[name]
    doc = " ".join(globals()[name].__doc__.split())
    assert "torch.optim." in doc and "spares biases" in doc and RECIPE in doc, doc
    params = _params()
    _assert_close(_run_ours(ours(), params), _run_torch(theirs, params, decay_names={"layer.weight"}))
    _assert_close(_run_ours(ours(mask=lambda p: dict.fromkeys(p, True)), params), _run_torch(theirs, params))


def test_the_default_mask_reads_embedding_names_by_words():
    """``members.0.weight`` (a ModuleList of Linear layers named members) was taken for an embedding,
    as the name holds 'emb': no weight of that model decayed."""
    shapes = {"members.0.weight": (3, 3), "remember.proj.weight": (3, 3), "tok_emb.weight": (9, 3),
              "encoder.embed_tokens.weight": (9, 3), "embeddings.0.weight": (9, 3), "transformer.wpe.weight": (4, 3),
              "members.0.bias": (3,)}
    mask = default_decay_mask({k: torch.zeros(s) for k, s in shapes.items()})
    assert {k for k, v in mask.items() if v} == {"members.0.weight", "remember.proj.weight"}


def test_adamw_with_warmup_cosine_matches_torch_lambda_lr():
    params = _params()
    sched = warmup_cosine(1e-2, total_steps=STEPS, warmup_steps=5, min_lr=1e-3)
    ours = _run_ours(adamw(sched, weight_decay=0.1, mask=ALL), params)
    ref = _run_torch(
        lambda g: torch.optim.AdamW(g, lr=1e-2, weight_decay=0.1),
        params,
        scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: float(sched(torch.tensor(s))) / 1e-2),
    )
    _assert_close(ours, ref)


def test_clip_by_global_norm_matches_clip_grad_norm():
    grads = _grads(0)
    clipped, _ = clip_by_global_norm(0.5).update(grads, (), None)
    tensors = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(tensors, 0.5)
    for t, k in zip(tensors, grads):
        torch.testing.assert_close(clipped[k], t.grad, atol=0, rtol=1e-6)


def test_clip_leaves_small_gradients_alone():
    grads = {"w": torch.full((4,), 0.1)}
    clipped, _ = clip_by_global_norm(10.0).update(grads, (), None)
    torch.testing.assert_close(clipped["w"], grads["w"], atol=0, rtol=1e-6)


def test_decay_mask_from_module_uses_module_types():
    model = torch.nn.Sequential(
        torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Conv1d(4, 4, 1)
    )
    assert decay_mask_from_module(model) == {
        "0.weight": False,
        "1.weight": True,
        "1.bias": False,
        "2.weight": False,
        "2.bias": False,
        "3.weight": True,
        "3.bias": False,
    }


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def _kernels_per_update(n_tensors: int) -> int:
    params = {f"l{i}.weight": torch.randn(3, 3) for i in range(n_tensors)}
    tx = adamw(1e-3, weight_decay=0.1, clip_norm=1.0)
    state = tx.init(params)
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    with _CountOps() as counter:
        tx.update(grads, state, params)
    return counter.calls


def test_update_is_multi_tensor():
    """An AdamW update costs the same number of kernels for 4 or 64 tensors."""
    assert _kernels_per_update(64) == _kernels_per_update(4)


def test_add_decayed_weights_needs_params():
    with pytest.raises(ValueError, match="needs params"):
        adamw(1e-3).update(_grads(0), adamw(1e-3).init(_params()), None)
