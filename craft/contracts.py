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

from torch import Tensor, nn

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
    return loss, {k: v.detach() for k, v in metrics.items()}


def _is_pair(out: Any) -> bool:
    return isinstance(out, tuple | list) and len(out) == 2
