"""Training as a pure function: ``state, batch -> state, metrics``.

``make_train_step`` builds the step from a plain ``nn.Module``, a loss
function and an optimizer ``Transform``::

    state = init_state(model, tx, seed=0)
    train_step = make_train_step(model, loss_fn, tx)
    state, metrics = train_step(state, batch)      # metrics: dict of 0-d tensors

The model only provides the computation: parameters, buffers (BatchNorm
statistics) and optimizer state all live in ``TrainState`` and are threaded
through ``torch.func.functional_call``. The step never calls ``.item()``, so it
never waits on the device; the loop decides when to read metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value
from torch.utils import _pytree as pytree

from craft.accumulate import Batch, Metrics, accumulate
from craft.compiling import autocast_for, device_type, maybe_compile, set_mode, uses_cuda_graphs
from craft.contracts import batch_input, check_initialized, host_seed, loss_and_metrics, moved_in_part, state_checker
from craft.optim import STATE_TYPES, Transform, apply_updates
from craft.tree import Params, with_global_norm

__all__ = [
    "Batch", "LossFn", "Metrics", "TrainState", "default_inputs", "init_state", "make_eval_step", "make_loss",
    "make_pure_step", "make_train_step", "next_seed", "register_state_types", "with_rng",
]

LossFn = Callable[[Any, Batch], "Tensor | tuple[Tensor, Metrics]"]
"""``loss_fn(outputs, batch) -> loss`` or ``(loss, metrics)``; loss is a 0-d mean."""

_MASK63 = (1 << 63) - 1


class TrainState(NamedTuple):
    """Everything a step reads and writes. A pytree: no hidden state.

    ``rng`` is a 0-d int64 CPU tensor seeding the step's randomness (dropout):
    kept on the CPU so that reading it never waits on an accelerator.
    """

    params: Params  # trainable: requires_grad parameters
    buffers: Params  # BatchNorm statistics and frozen parameters
    opt_state: Any
    step: Tensor  # 0-d int64, on the params' device
    rng: Tensor  # 0-d int64, CPU


# torch.save(state) then torch.load(path, weights_only=True) round-trips a TrainState.
torch.serialization.add_safe_globals([TrainState, *STATE_TYPES])


def register_state_types(*types_: type) -> None:
    """Allow your own optimizer-state NamedTuples in ``torch.load(..., weights_only=True)``."""
    torch.serialization.add_safe_globals(list(types_))


def init_state(model: nn.Module, transform: Transform, *, seed: int = 0) -> TrainState:
    """The initial state of ``model`` trained with ``transform``.

    The tensors are the module's own (no copy): a step with ``donate=True``
    keeps the module up to date; otherwise the module holds the initial values.
    """
    check_initialized(model)
    params, buffers = {}, {}
    for name, p in model.named_parameters():
        (params if p.requires_grad else buffers)[name] = p.detach()
    buffers.update({name: b.detach() for name, b in model.named_buffers()})
    device = next(iter(params.values())).device if params else torch.device("cpu")
    return TrainState(
        params=params,
        buffers=buffers,
        opt_state=transform.init(params),
        step=torch.zeros((), dtype=torch.int64, device=device),
        rng=torch.tensor(seed & _MASK63, dtype=torch.int64),
    )


def default_inputs(batch: Batch) -> tuple:
    """The model's positional inputs from a batch: ``(batch["input"],)``."""
    return (batch_input(batch),)


def make_train_step(
    model: nn.Module,
    loss_fn: LossFn,
    transform: Transform,
    *,
    inputs: Callable[[Batch], tuple] = default_inputs,
    accum_steps: int = 1,
    weight: Callable[[Batch], Tensor | int] | None = None,
    precision: str = "fp32",
    compile: bool | Mapping[str, Any] = True,
    donate: bool = False,
    skip_nonfinite: bool = False,
    cross_replica_mean: Callable[[Params], Params] | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Build the pure train step ``state, batch -> state, metrics``.

    - ``inputs(batch)`` gives the model's positional arguments.
    - ``accum_steps`` splits the batch into that many equal micro-batches and
      averages their gradients, each weighted by ``weight(micro_batch)``: what
      its mean loss averages over (examples by default; scored tokens for a
      padded language-model batch, ``Task.weight``). The result is the gradient
      of the whole batch's mean loss, computed with a fraction of the
      activation memory. Not with BatchNorm in training mode: it normalises
      each micro-batch by its own statistics.
    - ``precision="bf16"`` runs forward and loss under autocast; params,
      gradients and optimizer state stay float32.
    - ``compile`` is ``True`` (``torch.compile`` with static shapes: one graph
      per batch shape, see ``maybe_compile``), ``False`` (eager), or a dict of
      ``torch.compile`` keyword arguments overriding those defaults.
    - ``donate=True`` writes the new state into the input state's tensors
      (like JAX's buffer donation): one copy of params and optimizer state
      instead of two, but the input state must not be used afterwards; not with CUDA graphs.
    - ``skip_nonfinite=True``: when the loss or the gradient norm is NaN or
      Inf, the step keeps the old params, buffers and optimizer state (only
      the step count advances). Chosen on device with ``torch.where``: no sync.
    - ``cross_replica_mean`` (data parallel, see ``craft.distributed``)
      averages the gradients, the metrics and the floating-point buffers
      across replicas inside the step: every replica applies the same update
      and reports the metrics of the global batch.

    Metrics: ``loss``, ``grad_norm`` (before clipping) and whatever ``loss_fn``
    returns, averaged over micro-batches; all 0-d float32 tensors on device.
    """
    step = make_pure_step(
        model, loss_fn, transform, inputs=inputs, accum_steps=accum_steps, weight=weight, precision=precision,
        donate=donate,
        skip_nonfinite=skip_nonfinite, cross_replica_mean=cross_replica_mean,
    )
    return with_rng(model, maybe_compile(step, compile), cuda_graphs=uses_cuda_graphs(compile), donate=donate)


def with_rng(
    model: nn.Module, step: Callable, *, cuda_graphs: bool = False, donate: bool = False
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """``state, batch -> state, metrics`` around a pure ``step`` (see ``make_pure_step``): torch's
    generator seeded from ``state.rng`` (dropout), ``model`` in train mode, the next ``rng``."""
    if cuda_graphs and donate:
        raise ValueError("CUDA graphs (mode='reduce-overhead') cannot replay a donated step; use donate=False")
    check = state_checker(model)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        check(state.params, state.buffers)
        seed = host_seed(state.rng)
        torch.manual_seed(seed)  # dropout masks are a function of state.rng
        set_mode(model, training=True)
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        try:
            out = step(state.params, state.buffers, state.opt_state, state.step, batch)
        except RuntimeError as e:  # a state moved to another dtype or device in part says which part
            raise moved_in_part(state.params, state.opt_state, e) or e
        if cuda_graphs:
            # A replay overwrites the memory of the last replay's outputs, which
            # are this state: keep a copy the next replay cannot touch.
            out = pytree.tree_map(torch.clone, out)
        (params, buffers, opt_state, count), metrics = out
        rng = torch.tensor(next_seed(seed), dtype=torch.int64)
        return TrainState(params, buffers, opt_state, count, rng), metrics

    return train_step


def make_pure_step(
    model: nn.Module,
    loss_fn: LossFn,
    transform: Transform,
    *,
    inputs: Callable[[Batch], tuple] = default_inputs,
    accum_steps: int = 1,
    weight: Callable[[Batch], Tensor | int] | None = None,
    precision: str = "fp32",
    donate: bool = False,
    skip_nonfinite: bool = False,
    cross_replica_mean: Callable[[Params], Params] | None = None,
) -> Callable[..., tuple[tuple[Params, Params, Any, Tensor], Metrics]]:
    """The uncompiled step on a state's tensors, for composing with ``torch.func``.

    ``step(params, buffers, opt_state, count, batch) -> ((params, buffers, opt_state, count), metrics)``:
    what ``make_train_step`` compiles, without the ``rng`` bookkeeping. The
    caller puts ``model`` in train mode and seeds torch's generator (dropout).
    Arguments as in ``make_train_step``.
    """
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
    grad_fn = grad_and_value(
        make_loss(model, loss_fn, inputs=inputs, precision=precision, copy_buffers=False), has_aux=True
    )

    def step(params: Params, buffers: Params, opt_state: Any, count: Tensor, batch: Batch):
        # BatchNorm updates its running statistics in place; work on copies so
        # the caller's state is untouched, unless it was donated (and a skipped
        # step needs the old statistics back).
        old_buffers = buffers
        buffers = buffers if donate and not skip_nonfinite else {k: b.clone() for k, b in buffers.items()}
        grads, metrics, buffers = accumulate(grad_fn, params, buffers, batch, accum_steps, weight, count.device)
        if cross_replica_mean is not None:  # one update for all replicas; metrics of the global batch
            grads, metrics = cross_replica_mean(grads), cross_replica_mean(metrics)
            buffers = cross_replica_mean(buffers) if buffers else buffers
        grads, metrics["grad_norm"] = with_global_norm(grads)  # clip_by_global_norm reads it, not a second norm
        updates, new_opt_state = transform.update(grads, opt_state, params)
        new = (apply_updates(params, updates), buffers, new_opt_state, count + 1)
        if skip_nonfinite:
            finite = torch.isfinite(metrics["loss"]) & torch.isfinite(metrics["grad_norm"])
            kept = _where(finite, new[:3], (params, old_buffers, opt_state))
            new = (*kept, count + 1)
        if donate:
            old = (params, old_buffers, opt_state, count)
            # per tensor: inductor fuses one _foreach_copy_ into CUDA kernels that still read it (docs/gpu.md)
            for dst, src in zip(pytree.tree_leaves(old), pytree.tree_leaves(new), strict=True):
                dst.copy_(src)
            new = old
        return new, metrics

    return step


def make_loss(
    model: nn.Module,
    loss_fn: LossFn,
    *,
    inputs: Callable[[Batch], tuple] = default_inputs,
    precision: str = "fp32",
    copy_buffers: bool = True,
) -> Callable[[Params, Params, Batch], tuple[Tensor, dict[str, Any]]]:
    """The step's loss as a pure function: ``loss(params, buffers, batch) -> (loss, aux)``.

    ``loss`` is the 0-d mean; ``aux = {"metrics": {name: 0-d}, "buffers": new_buffers}``
    (BatchNorm's updated statistics). The model runs as it is set (call
    ``model.train()`` or ``.eval()`` first). Ready for ``torch.func``:
    ``grad_and_value(loss, has_aux=True)``, Hessian-vector products with
    ``jvp(grad(...))``, ``vmap`` over stacked params. ``copy_buffers=True``
    runs the model on copies of ``buffers``, so the in-place statistics updates
    of BatchNorm never touch the caller's tensors.
    """
    autocast = autocast_for(precision)

    def loss(params: Params, buffers: Params, batch: Batch) -> tuple[Tensor, dict[str, Any]]:
        if copy_buffers:
            buffers = {k: b.clone() for k, b in buffers.items()}
        with autocast(device_type(params)):
            value, metrics = loss_and_metrics(loss_fn(functional_call(model, (params, buffers), inputs(batch)), batch))
        return value, {"metrics": metrics, "buffers": buffers}

    return loss


def make_eval_step(
    model: nn.Module,
    loss_fn: LossFn,
    *,
    inputs: Callable[[Batch], tuple] = default_inputs,
    precision: str = "fp32",
    compile: bool | Mapping[str, Any] = True,
) -> Callable[[TrainState, Batch], Metrics]:
    """Build ``state, batch -> metrics``: the model in eval mode, no gradients.

    Metrics: ``loss`` and whatever ``loss_fn`` returns, 0-d float32 tensors.
    """
    autocast = autocast_for(precision)

    def evaluate(params: Params, buffers: Params, batch: Batch) -> Metrics:
        with torch.no_grad(), autocast(device_type(params)):
            outputs = functional_call(model, (params, buffers), inputs(batch))
            loss, metrics = loss_and_metrics(loss_fn(outputs, batch))
        return {k: v.float() for k, v in {"loss": loss, **metrics}.items()}

    compiled = maybe_compile(evaluate, compile)
    check = state_checker(model)

    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        check(state.params, state.buffers)
        set_mode(model, training=False)
        return compiled(state.params, state.buffers, batch)

    return eval_step


def _where(condition: Tensor, new: Any, old: Any) -> Any:
    """Leaf by leaf, ``new`` where ``condition`` (a 0-d bool tensor) holds, else ``old``."""
    return pytree.tree_map(lambda a, b: torch.where(condition, a, b) if isinstance(a, Tensor) else a, new, old)


def next_seed(seed: int) -> int:
    """SplitMix64: the next 63-bit seed, a pure function of the last."""
    z = (seed + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & _MASK63
