"""What a step checks of what it is handed: the state against the model, the
batch's keys, the loss function's result, the ``compile`` option.

Each is a mistake of the Python API that would otherwise surface as a raw
error deep in ``torch.func``, or not at all: ``functional_call`` fills a name
the state lacks from the module's own tensor, so a state made before a layer
was added trains the old layers only, and the new one never moves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree
from torch.nn.parameter import is_lazy

from craft.tree import Params
from craft.words import listed

Metrics = dict[str, Tensor]


def check_compile(compile: Any) -> None:
    """``compile`` is ``True``, ``False`` or a mapping of ``torch.compile`` options."""
    if not isinstance(compile, bool | Mapping):
        raise TypeError(
            f"compile must be True, False or a dict of torch.compile options (e.g. {{'mode': 'max-autotune'}}), "
            f"got {compile!r}"
        )


def check_initialized(model: nn.Module) -> None:
    """A ``ValueError`` naming ``model``'s parameters and buffers that a lazy module (``nn.LazyLinear``) has not
    shaped yet: they have no values for a state to hold until the model has seen an input."""
    lazy = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if is_lazy(t)]
    if lazy:
        raise ValueError(
            f"the model's {listed(lazy, 3)} {'is' if len(lazy) == 1 else 'are'} not initialized yet: a lazy module "
            f"(nn.LazyLinear, nn.LazyConv2d) takes its shapes from its first input; call the model once on a "
            f"batch (model(batch['input'])) before init_state"
        )


def model_names(model: nn.Module) -> frozenset[str]:
    """The names ``init_state`` gives ``model``'s tensors: its parameters' and buffers'."""
    return frozenset(name for name, _ in model.named_parameters()) | {name for name, _ in model.named_buffers()}


def state_checker(model: nn.Module):
    """``check(params, buffers)``: a ``ValueError`` when the state's tensor names are not the model's.

    Names are compared in full on the first call and whenever the count
    changes; otherwise a count compare (a step keeps the state's names).
    """
    known: list[int] = []

    def check(params: Params, buffers: Params) -> None:
        count = len(params) + len(buffers)
        if known and known[0] == count:
            return
        expected = model_names(model)
        given = params.keys() | buffers.keys()
        if given != expected:
            raise ValueError(_mismatch(sorted(expected - given), sorted(given - expected)))
        known[:] = [count]

    return check


def _mismatch(missing: list[str], extra: list[str]) -> str:
    parts = ([f"the model has {listed(missing, 3)}, which the state lacks"] if missing else []) + (
        [f"the state has {listed(extra, 3)}, which the model lacks"] if extra else []
    )
    return (
        f"the state does not match the model: {'; '.join(parts)}. Was the state made before the model changed? "
        f"Make it again with init_state(model, transform), or load the checkpoint into the model it was saved from"
    )


def host_seed(rng: Tensor) -> int:
    """``int(rng)``: the step's seed, read on the host to seed torch's generator (dropout).

    Under ``vmap`` of a stacked state that read is impossible; the error says which step to transform instead.
    """
    try:
        return int(rng)
    except RuntimeError:
        if torch._C._functorch.maybe_current_level() is None:
            raise
        raise RuntimeError(
            "a step of make_train_step reads state.rng on the host to seed dropout, which it cannot do under "
            "vmap of stacked states: train them with craft.ensemble.make_ensemble_step, or vmap "
            "craft.step.make_pure_step (the step without the rng bookkeeping; seed torch's generator yourself)"
        ) from None


def moved_in_part(params: Params, opt_state: Any, error: Exception) -> TypeError | None:
    """For ``error``, a step's failure: a ``TypeError`` naming the first optimizer-state tensor whose dtype or
    device is not its parameter's (``state.params`` moved to float64 or a GPU, ``state.opt_state`` left behind), or None."""
    failed = (str(error).strip() or type(error).__name__).splitlines()[0]
    for path, t in pytree.tree_flatten_with_path(opt_state)[0]:
        name = getattr(path[-1], "key", None) if path else None  # a leaf of a {param name: tensor} table
        p = params.get(name) if isinstance(name, str) else None
        if isinstance(t, Tensor) and isinstance(p, Tensor) and (t.dtype, t.device) != (p.dtype, p.device):
            return TypeError(
                f"the optimizer state of {name!r} is {_where(t)} but the parameter is {_where(p)}: a state "
                f"moves whole; move every floating-point tensor of it, e.g. torch.utils._pytree.tree_map("
                f"lambda t: t.to(dtype) if t.is_floating_point() else t, state), or make it again with init_state "
                f"(the step failed with: {failed})"
            )
    return None


def _where(t: Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')} on {t.device}"


def batch_input(batch: Mapping[str, Any], key: str = "input") -> Any:
    """``batch[key]``, or a ``KeyError`` that says how to name another key."""
    if key not in batch:
        keys = ", ".join(map(repr, batch)) if isinstance(batch, Mapping) else type(batch).__name__
        raise KeyError(
            f"the batch has no {key!r} (it has {keys}): name the model's input {key!r}, or pass "
            f"inputs=lambda batch: (batch[...],) to say which of the batch's values the model takes"
        )
    return batch[key]


def loss_and_metrics(out: Any) -> tuple[Tensor, Metrics]:
    """A loss function's result, ``loss`` or ``(loss, metrics)``, as ``(loss, detached metrics)``."""
    loss, metrics = (out, {}) if isinstance(out, Tensor) else out if _is_pair(out) else (out, {})
    if not isinstance(loss, Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        hint = " (a Python number has no gradient: return the tensor, not .item())" if isinstance(loss, float) else ""
        raise ValueError(f"loss_fn must return a 0-d loss tensor (a mean) or (loss, metrics), got {shape}{hint}")
    if not isinstance(metrics, Mapping):
        raise ValueError(f"loss_fn's metrics must be a dict of 0-d tensors, got {type(metrics).__name__}")
    for name, value in metrics.items():  # a vector would be averaged into one number, differently in train and val
        if not isinstance(value, Tensor) or value.ndim != 0:
            got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"loss_fn's metric {name!r} must be a 0-d tensor (one number for the batch), got {got}; "
                f"log a vector as one metric per element ({name}_0, {name}_1, ...)"
            )
    return loss, {k: v.detach() for k, v in metrics.items()}


def _is_pair(out: Any) -> bool:
    return isinstance(out, tuple | list) and len(out) == 2
