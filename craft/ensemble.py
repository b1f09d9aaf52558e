"""Many models, one step: stacked states, vmapped train steps, per-example gradients.

A step is a pure function of its state, so K independent training runs can
share one call. Stack K ``TrainState``s (every leaf gains a leading ``K``
dim), and ``make_ensemble_step`` trains all members at once::

    model, state = init_ensemble(SmallCNN, tx, seeds=range(8))   # leaves (8, ...)
    step = make_ensemble_step(model, loss_fn, tx)
    state, metrics = step(state, batch)                           # metrics: (8,) each
    member = unstack_state(state, 3)                              # an ordinary TrainState

Members may differ in anything that lives in the state: initial weights
(seeds), and optimizer hyperparameters held as tensors in the optimizer state
(``craft.optim.inject_hyperparams``). Shapes must agree.

How the members run (``strategy``):

- ``"vmap"``: ``torch.func.vmap`` of the pure step (``craft.step.make_pure_step``),
  traced once and compiled as one graph: every op runs on all members at once.
  On the CPU, a convolution with per-member weights becomes a grouped
  convolution, about 2x slower than K ordinary ones.
- ``"sequential"``: one compiled member step, called on each member's slice
  of the stacked state: the speed of training the members one by one, and
  compiled once.
- ``"side_by_side"``: one compiled graph running the K members' steps one
  after another, so inductor sees K ordinary convolutions. As fast as
  ``sequential`` on the CPU, but its graph is K steps long and takes about
  K times as long to compile.
- ``"auto"`` (default): ``sequential`` for models with convolutions on the
  CPU, ``vmap`` otherwise (``benchmarks/ensemble_speed.py``: K = 8, vmap is
  3.7x sequential for an MLP on the CPU and ~6x for the CNN on a GPU, 0.45x
  for the CNN on the CPU).

Randomness (dropout): the step seeds torch's generator from all members'
``rng`` and advances each as ``make_train_step`` does, so a stacked state and
batch give the same result every time; members draw different masks, which are
not the masks the member would draw when trained alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree

from craft.optim import Transform, foreach, set_hyperparams
from craft.compiling import compile_options, maybe_compile, set_mode
from craft.step import Batch, LossFn, Metrics, TrainState, default_inputs, init_state, make_pure_step, next_seed
from craft.tree import Params

STRATEGIES = ("auto", "vmap", "sequential", "side_by_side")


# --- Stacking -------------------------------------------------------------------


def stack_states(states: Sequence[TrainState]) -> TrainState:
    """One state whose leaves are the members' leaves stacked on a new dim 0: ``(K, ...)``."""
    if not states:
        raise ValueError("stack_states needs at least one state")
    flat = [pytree.tree_flatten(s) for s in states]
    spec = flat[0][1]
    for i, (leaves, other) in enumerate(flat[1:], 1):
        if other != spec:
            raise ValueError(f"member {i} has a different state structure than member 0; members must share one optimizer")
        for name, a, b in zip(_leaf_names(states[0]), flat[0][0], leaves):
            if a.shape != b.shape or a.dtype != b.dtype:
                raise ValueError(
                    f"member {i} differs from member 0 in {name}: {tuple(b.shape)} vs {tuple(a.shape)}; "
                    "members of one vmapped step must share shapes"
                )
    return pytree.tree_unflatten([torch.stack(xs) for xs in zip(*(leaves for leaves, _ in flat))], spec)


def ensemble_size(stacked: TrainState) -> int:
    """K, the number of members of a stacked state."""
    return stacked.rng.shape[0]


def unstack_state(stacked: TrainState, member: int) -> TrainState:
    """Member ``member`` as an ordinary ``TrainState`` (copies: it shares no memory with ``stacked``)."""
    size = ensemble_size(stacked)
    if not -size <= member < size:
        raise IndexError(f"member {member} out of range for an ensemble of {size}")
    return pytree.tree_map(lambda x: x[member].clone(), stacked)


def unstack_states(stacked: TrainState) -> list[TrainState]:
    """Every member as an ordinary ``TrainState``."""
    return [unstack_state(stacked, i) for i in range(ensemble_size(stacked))]


def init_ensemble(
    make_model: Callable[[], nn.Module],
    transform: Transform,
    *,
    seeds: Iterable[int],
    hyperparams: Sequence[Mapping[str, float]] | None = None,
) -> tuple[nn.Module, TrainState]:
    """A template model and the stacked state of one member per seed.

    Member ``i`` is ``make_model()`` built after ``torch.manual_seed(seeds[i])``,
    with ``init_state(model, transform, seed=seeds[i])``, and, when given, its
    injected hyperparameters set to ``hyperparams[i]`` (see ``set_hyperparams``).
    The template (member 0's module) only provides the computation.
    """
    seeds = list(seeds)
    if hyperparams is not None and len(hyperparams) != len(seeds):
        raise ValueError(f"got {len(hyperparams)} hyperparameter sets for {len(seeds)} seeds; give one per member")
    states, template = [], None
    for i, seed in enumerate(seeds):
        torch.manual_seed(seed)
        model = make_model()
        state = init_state(model, transform, seed=seed)
        if hyperparams is not None:
            state = state._replace(opt_state=set_hyperparams(state.opt_state, **hyperparams[i]))
        states.append(state)
        template = template or model
    return template, stack_states(states)


def _leaf_names(state: TrainState) -> list[str]:
    paths, _ = pytree.tree_flatten_with_path(state)
    return [pytree.keystr(path) for path, _ in paths]


# --- The ensemble step -------------------------------------------------------------


def choose_strategy(model: nn.Module, device: torch.device | str) -> str:
    """``sequential`` for convolutions on the CPU (vmap makes them grouped, and slow), else ``vmap``."""
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    return "sequential" if has_conv and torch.device(device).type == "cpu" else "vmap"


def make_ensemble_step(
    model: nn.Module,
    loss_fn: LossFn,
    transform: Transform,
    *,
    inputs: Callable[[Batch], tuple] = default_inputs,
    accum_steps: int = 1,
    weight: Callable[[Batch], Tensor | int] | None = None,
    precision: str = "fp32",
    compile: bool | Mapping[str, Any] = True,
    per_member_batches: bool = False,
    strategy: str = "auto",
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Build ``stacked_state, batch -> stacked_state, metrics`` training every member at once.

    ``batch`` is shared by all members, or, with ``per_member_batches=True``,
    holds one batch per member (every leaf ``(K, B, ...)``). Metrics are those
    of ``make_train_step``, each of shape ``(K,)``. The other arguments are as
    in ``make_train_step``; ``strategy`` is described in the module docstring.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown ensemble strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    step = make_pure_step(
        model, loss_fn, transform, inputs=inputs, accum_steps=accum_steps, weight=weight, precision=precision
    )
    batch_dim = 0 if per_member_batches else None
    chosen: dict[str, Callable] = {}  # built on the first call, when the device is known

    def build(device: torch.device) -> Callable:
        name = strategy if strategy != "auto" else choose_strategy(model, device)
        if name == "side_by_side":
            return maybe_compile(_member_by_member(step, batch_dim), compile)
        if name == "sequential":
            return _member_by_member(maybe_compile(step, compile), batch_dim)
        return _compiled_vmap(_vmapped(step, batch_dim), compile)

    def ensemble_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        if "fn" not in chosen:
            chosen["fn"] = build(state.step.device)
        seeds = state.rng.tolist()
        torch.manual_seed(functools.reduce(lambda acc, s: next_seed(acc ^ s), seeds, 0))
        set_mode(model, training=True)
        (params, buffers, opt_state, count), metrics = chosen["fn"](*state[:4], batch)
        rng = torch.tensor([next_seed(s) for s in seeds], dtype=torch.int64)
        return TrainState(params, buffers, opt_state, count, rng), metrics

    return ensemble_step


def _vmapped(step: Callable, batch_dim: int | None) -> Callable:
    vmapped = vmap(step, in_dims=(0, 0, 0, 0, batch_dim), randomness="different")

    def run(params, buffers, opt_state, count, batch):
        with foreach.per_tensor():  # a user's transform may call torch._foreach_* directly
            return vmapped(params, buffers, opt_state, count, batch)

    return run


def _member_by_member(step: Callable, batch_dim: int | None) -> Callable:
    """Run ``step`` on each member's slice of the stacked state; stack the results."""

    def run(params, buffers, opt_state, count, batch):
        outs = []
        for i in range(count.shape[0]):
            member = pytree.tree_map(lambda x: x[i], (params, buffers, opt_state, count))
            outs.append(step(*member, batch if batch_dim is None else pytree.tree_map(lambda x: x[i], batch)))
        return pytree.tree_map(lambda *xs: torch.stack(xs), *outs)

    return run


def _compiled_vmap(fn: Callable, compile: bool | Mapping[str, Any]) -> Callable:
    """Eager, or traced to one aten graph (per input shapes) and compiled.

    Dynamo cannot query the functorch level or apply ``foreach.per_tensor``
    inside a vmap it traces, so the vmapped step is first traced eagerly with
    ``make_fx`` (where both work) and the resulting graph is compiled.
    """
    if compile is False:
        return fn
    graphs: dict[tuple, Callable] = {}

    def run(*args):
        key = tuple((tuple(x.shape), x.dtype, x.device) for x in pytree.tree_leaves(args))
        if key not in graphs:
            rng = torch.get_rng_state()  # tracing runs the step once: leave the generator as it was
            graphs[key] = torch.compile(make_fx(fn)(*args), **compile_options(compile))
            torch.set_rng_state(rng)
        return graphs[key](*args)

    return run


# --- Reading members ----------------------------------------------------------------


def member_outputs(model: nn.Module, stacked: TrainState, *args: Any) -> Any:
    """Every member's outputs on the same inputs, in eval mode: each output leaf ``(K, ...)``."""
    set_mode(model, training=False)

    def forward(params: Params, buffers: Params) -> Any:
        return functional_call(model, (params, buffers), args)

    with torch.no_grad():
        return vmap(forward)(stacked.params, stacked.buffers)


def per_example_grads(loss_fn: Callable[[Params, Batch], Tensor], params: Params, batch: Batch) -> Params:
    """The gradient of ``loss_fn`` on each example of ``batch``: leaves ``(B, *param.shape)``.

    ``loss_fn(params, batch) -> 0-d loss`` (or ``(loss, aux)``) is the ordinary
    batch loss: it is called on batches of one example. For a mean loss, the
    mean of the per-example gradients is the batch gradient. Models that mix
    examples (BatchNorm in training mode) have no per-example gradients.
    """

    def one(p: Params, example: Batch) -> Tensor:
        out = loss_fn(p, pytree.tree_map(lambda x: x.unsqueeze(0), example))
        return out if isinstance(out, Tensor) else out[0]

    try:
        return vmap(grad(one), in_dims=(None, 0))(params, batch)
    except RuntimeError as e:  # functorch's words name running_mean or a captured tensor, not the fix
        if "Batch norm got a batched tensor" not in str(e) and "mutate a captured Tensor" not in str(e):
            raise
        raise ValueError(
            "per_example_grads: the model updates a tensor in place, as BatchNorm in training mode does: it "
            "normalises each example by its batch's statistics, so there are no per-example gradients; "
            "use GroupNorm or LayerNorm instead of BatchNorm"
        ) from None
