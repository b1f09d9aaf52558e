"""How a step runs on the device: ``torch.compile`` with craft's defaults, autocast
precision, and the module's train/eval mode.

Shared by the single step (``craft.step``) and the ensemble step
(``craft.ensemble``), so both compile, cast and switch modes the same way.
"""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from craft.contracts import check_compile
from craft.tree import Params

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
"""``train.precision`` -> the autocast dtype (None: no autocast)."""


def autocast_for(precision: str) -> Callable[[str], contextlib.AbstractContextManager]:
    """``device_type -> context``: autocast to ``precision``'s dtype, or nothing for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return lambda device_type: contextlib.nullcontext()
    return lambda device_type: torch.autocast(device_type, dtype=dtype)


def device_type(params: Params) -> str:
    """The device type (``"cuda"``, ``"cpu"``) the params live on; ``"cpu"`` for none."""
    return next(iter(params.values())).device.type if params else "cpu"


def maybe_compile(fn: Callable, compile: bool | Mapping[str, Any]) -> Callable:
    """``torch.compile(fn)`` with craft's defaults, or ``fn`` itself for ``compile=False``.

    ``compile`` is ``True`` or a dict of ``torch.compile`` options that
    override the defaults. Shapes are static by default (``dynamic=False``):
    one graph per batch shape. A dynamic-shape recompile of a step with
    dropout under ``grad`` fails fake-tensor tracing, and dynamo then runs
    the step eager without a warning, with other numerics. For the same
    reason, ``torch._dynamo.config.suppress_errors`` must be False.
    """
    if compile is False:
        return fn
    if torch._dynamo.config.suppress_errors:
        raise RuntimeError(
            "torch._dynamo.config.suppress_errors is True: a craft step that failed to compile would silently "
            "run eager; set it to False, or build the step with compile=False"
        )
    options = compile_options(compile)
    backport_inductor_fixes()
    logging.getLogger("torch.utils.cpp_extension").addFilter(_no_cuda_runtime_note)
    # Dynamo caches compiled code per code object, at most `recompile_limit`
    # variants. Every step built here gets its own code object, so a process
    # that builds many steps (tests, sweeps) never falls back to eager.
    own_code = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return torch.compile(own_code, **options)


def _no_cuda_runtime_note(record: logging.LogRecord) -> bool:
    """Drops "No CUDA runtime is found": a CUDA build of torch on a machine without a GPU says it when
    inductor first loads its C++ builder, into the middle of a CPU run's progress bar."""
    return not record.getMessage().startswith("No CUDA runtime is found")


def backport_inductor_fixes() -> None:
    """Give torch < 2.12's inductor the fix of pytorch/pytorch#176849; nothing on a newer torch.

    Without it, inductor 2.11 fails a bare ``assert`` in
    ``FusedSchedulerNode.reorder_loops_by_dep_pair`` on CUDA code that fuses
    multi-tensor (foreach) ops with reductions over tensors of other shapes
    (pytorch#176591): the compiled steps of experiments/gpt_char.toml and
    gpt2_small.toml, with or without clipping, and Muon's. Idempotent.
    """
    if torch.torch_version.TorchVersion(torch.__version__) >= (2, 12):
        return
    from torch._inductor import scheduler

    fused = scheduler.FusedSchedulerNode
    original = getattr(fused, "reorder_loops_by_dep_pair", None)
    if original is not None and not getattr(original, "craft_backport", False):
        fused.reorder_loops_by_dep_pair = declining_multi_tensor_nodes(original, scheduler.SchedulerNode)


def declining_multi_tensor_nodes(reorder: Callable, single: type) -> Callable:
    """``reorder`` (a fused node's loop reordering) that declines, as torch 2.12 does, when the
    fused node holds a node that is not a ``single`` one (a multi-tensor node has no loops to reorder)."""

    def reorder_loops_by_dep_pair(self, *args, **kwargs):
        if not all(isinstance(node, single) for node in self.snodes):
            return False
        return reorder(self, *args, **kwargs)

    reorder_loops_by_dep_pair.craft_backport = True
    return reorder_loops_by_dep_pair


def compile_options(compile: bool | Mapping[str, Any]) -> dict[str, Any]:
    """The ``torch.compile`` keyword arguments for ``compile`` (``True`` or a dict): static shapes unless overridden."""
    check_compile(compile)
    return {"dynamic": False, **({} if compile is True else dict(compile))}


def uses_cuda_graphs(compile: bool | Mapping[str, Any]) -> bool:
    """Whether the compile options replay CUDA graphs (whose outputs the next replay overwrites)."""
    return isinstance(compile, Mapping) and compile.get("mode") in ("reduce-overhead", "max-autotune")


def set_mode(model: nn.Module, training: bool) -> None:
    """``model.train(training)``, only when the mode changes."""
    # Compiled code guards on each module's `training` flag; switching only
    # when needed keeps eager overhead off the hot path.
    if model.training != training:
        model.train(training)
