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

import contextlib
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value
from torch.utils import _pytree as pytree

from craft.optim import STATE_TYPES, Transform, apply_updates, foreach
from craft.tree import Params, global_norm

Batch = Any  # a pytree of tensors, usually a dict; dim 0 is the batch
Metrics = dict[str, Tensor]
LossFn = Callable[[Any, Batch], "Tensor | tuple[Tensor, Metrics]"]
"""``loss_fn(outputs, batch) -> loss`` or ``(loss, metrics)``; loss is a 0-d mean."""

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
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
    return (batch["input"],)


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
      instead of two, but the input state must not be used afterwards.
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
    compiled = maybe_compile(step, compile)
    cuda_graphs = _uses_cuda_graphs(compile)
    if cuda_graphs and donate:
        raise ValueError("CUDA graphs (mode='reduce-overhead') cannot replay a donated step; use donate=False")

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        seed = int(state.rng)
        torch.manual_seed(seed)  # dropout masks are a function of state.rng
        set_mode(model, training=True)
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        out = compiled(state.params, state.buffers, state.opt_state, state.step, batch)
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
        micros = _split(batch, accum_steps)
        shares = _shares(micros, weight, count.device)
        grads, logged = None, []
        for micro, share in zip(micros, shares):
            g, (loss, aux) = grad_fn(params, buffers, micro)
            metrics, buffers = aux["metrics"], aux["buffers"]
            g = list(g.values()) if share is None else foreach.mul(list(g.values()), share)
            grads = g if grads is None else foreach.add(grads, g)
            logged.append({"loss": loss, **metrics})
        if shares[0] is None and accum_steps > 1:
            grads = foreach.div(grads, float(accum_steps))
        grads = dict(zip(params, grads))
        metrics = _mean_metrics(logged, shares)
        if cross_replica_mean is not None:  # one update for all replicas; metrics of the global batch
            grads, metrics = cross_replica_mean(grads), cross_replica_mean(metrics)
            buffers = cross_replica_mean(buffers) if buffers else buffers
        metrics["grad_norm"] = global_norm(grads)
        updates, new_opt_state = transform.update(grads, opt_state, params)
        new = (apply_updates(params, updates), buffers, new_opt_state, count + 1)
        if skip_nonfinite:
            finite = torch.isfinite(metrics["loss"]) & torch.isfinite(metrics["grad_norm"])
            kept = _where(finite, new[:3], (params, old_buffers, opt_state))
            new = (*kept, count + 1)
        if donate:
            old = (params, old_buffers, opt_state, count)
            foreach.copy_(pytree.tree_leaves(old), pytree.tree_leaves(new))
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
    autocast = _autocast_for(precision)

    def loss(params: Params, buffers: Params, batch: Batch) -> tuple[Tensor, dict[str, Any]]:
        if copy_buffers:
            buffers = {k: b.clone() for k, b in buffers.items()}
        with autocast(_device_type(params)):
            value, metrics = _loss_and_metrics(loss_fn, functional_call(model, (params, buffers), inputs(batch)), batch)
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
    autocast = _autocast_for(precision)

    def evaluate(params: Params, buffers: Params, batch: Batch) -> Metrics:
        with torch.no_grad(), autocast(_device_type(params)):
            outputs = functional_call(model, (params, buffers), inputs(batch))
            loss, metrics = _loss_and_metrics(loss_fn, outputs, batch)
        return {k: v.float() for k, v in {"loss": loss, **metrics}.items()}

    compiled = maybe_compile(evaluate, compile)

    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        set_mode(model, training=False)
        return compiled(state.params, state.buffers, batch)

    return eval_step


def _where(condition: Tensor, new: Any, old: Any) -> Any:
    """Leaf by leaf, ``new`` where ``condition`` (a 0-d bool tensor) holds, else ``old``."""
    return pytree.tree_map(lambda a, b: torch.where(condition, a, b) if isinstance(a, Tensor) else a, new, old)


def _loss_and_metrics(loss_fn: LossFn, outputs: Any, batch: Batch) -> tuple[Tensor, Metrics]:
    out = loss_fn(outputs, batch)
    loss, metrics = (out, {}) if isinstance(out, Tensor) else out
    if not isinstance(loss, Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a 0-d loss tensor (a mean), got {shape}")
    return loss, {k: v.detach() for k, v in metrics.items()}


def _shares(micros: list[Batch], weight: Callable[[Batch], Tensor | int] | None, device: torch.device) -> list:
    """Each micro-batch's share of the whole batch's mean: ``w_i / sum(w)``, 0-d float32 tensors.

    ``[None] * n`` for equal shares (no ``weight``, or a single batch).
    """
    if weight is None or len(micros) == 1:
        return [None] * len(micros)
    w = torch.stack([torch.as_tensor(weight(m), device=device) for m in micros]).float()
    return list((w / w.sum().clamp(min=1)).unbind())


def _mean_metrics(logged: list[Metrics], shares: list) -> Metrics:
    """Per-micro-batch metrics averaged with the same shares as the gradients."""
    if shares[0] is None:
        return {k: torch.stack([m[k] for m in logged]).float().mean() for k in logged[0]}
    w = torch.stack(shares)
    return {k: (torch.stack([m[k] for m in logged]).float() * w).sum() for k in logged[0]}


def _split(batch: Batch, n: int) -> list[Batch]:
    """``n`` equal micro-batches along dim 0 of every leaf."""
    if n == 1:
        return [batch]
    leaves, spec = pytree.tree_flatten(batch)
    size = leaves[0].shape[0]
    if size % n:
        raise ValueError(f"batch size {size} is not divisible by accum_steps={n}; pick sizes that divide")
    chunks = [leaf.chunk(n) for leaf in leaves]
    return [pytree.tree_unflatten([c[i] for c in chunks], spec) for i in range(n)]


def _autocast_for(precision: str) -> Callable[[str], contextlib.AbstractContextManager]:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return lambda device_type: contextlib.nullcontext()
    return lambda device_type: torch.autocast(device_type, dtype=dtype)


def _device_type(params: Params) -> str:
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
    # Dynamo caches compiled code per code object, at most `recompile_limit`
    # variants. Every step built here gets its own code object, so a process
    # that builds many steps (tests, sweeps) never falls back to eager.
    own_code = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return torch.compile(own_code, **options)


def compile_options(compile: bool | Mapping[str, Any]) -> dict[str, Any]:
    """The ``torch.compile`` keyword arguments for ``compile`` (``True`` or a dict): static shapes unless overridden."""
    return {"dynamic": False, **({} if compile is True else dict(compile))}


def _uses_cuda_graphs(compile: bool | Mapping[str, Any]) -> bool:
    return isinstance(compile, Mapping) and compile.get("mode") in ("reduce-overhead", "max-autotune")


def set_mode(model: nn.Module, training: bool) -> None:
    """``model.train(training)``, only when the mode changes."""
    # Compiled code guards on each module's `training` flag; switching only
    # when needed keeps eager overhead off the hot path.
    if model.training != training:
        model.train(training)


def next_seed(seed: int) -> int:
    """SplitMix64: the next 63-bit seed, a pure function of the last."""
    z = (seed + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & _MASK63


# --- Freezing parts of a model ---------------------------------------------------------


def freeze(state: TrainState, transform: Transform, names: Iterable[str]) -> TrainState:
    """Move the named params to ``state.buffers``: they stop training and lose their optimizer state.

    ``transform`` is the one the state was built with; the other params keep
    their optimizer state (moments, counters), matched by their place in it.
    """
    names = _known(names, state.params, "trainable parameter")
    params = {k: v for k, v in state.params.items() if k not in names}
    buffers = {**state.buffers, **{k: state.params[k] for k in names}}
    return state._replace(params=params, buffers=buffers, opt_state=carry_opt_state(transform, state.opt_state, params))


def unfreeze(state: TrainState, transform: Transform, names: Iterable[str]) -> TrainState:
    """Move the named buffers back to ``state.params``, with fresh optimizer state; the rest keep theirs."""
    names = _known(names, state.buffers, "frozen parameter or buffer")
    params = {**state.params, **{k: state.buffers[k] for k in names}}
    buffers = {k: v for k, v in state.buffers.items() if k not in names}
    return state._replace(params=params, buffers=buffers, opt_state=carry_opt_state(transform, state.opt_state, params))


def carry_opt_state(transform: Transform, old: Any, params: Params) -> Any:
    """``transform.init(params)``, with every leaf that ``old`` holds at the same place (and shape) taken from it."""
    found = {pytree.keystr(path): leaf for path, leaf in pytree.tree_flatten_with_path(old)[0]}
    fresh, spec = pytree.tree_flatten_with_path(transform.init(params))
    kept = []
    for path, leaf in fresh:
        previous = found.get(pytree.keystr(path))
        same = isinstance(previous, Tensor) and isinstance(leaf, Tensor) and previous.shape == leaf.shape
        kept.append(previous if same else leaf)
    return pytree.tree_unflatten(kept, spec)


def _known(names: Iterable[str], tree: Params, what: str) -> list[str]:
    names = list(names)
    for name in names:
        if name not in tree:
            raise ValueError(f"{name!r} is not a {what} of this state (some that are: {sorted(tree)[:5]})")
    return names
