"""Multi-tensor arithmetic that works under ``torch.func`` transforms.

Every function here takes lists of tensors (and scalars, 0-d tensors or
lists as the second operand, as ``torch._foreach_*`` does) and returns a new
list. It picks one of two implementations on each call:

- the fast path, ``torch._foreach_*``: one multi-tensor kernel per op. Taken
  in the plain step (eager or compiled), where no functorch transform is
  active and nothing requires grad.
- the per-tensor path, ``[op(x, ...) for x in xs]``: taken when a functorch
  transform is active (``torch.func.vmap``, ``grad``, ``jacrev``, ``jvp``...)
  or when grad mode is on and an input requires grad. vmap has no batching
  rule for most ``_foreach_*`` ops, and the backward of
  ``_foreach_mul(list, tensor)`` with respect to the 0-d tensor is broken
  (pytorch/pytorch#144580); one op per tensor has neither problem.

Each result has the dtype of its tensor in the first operand (``own_dtypes``),
as an in-place op would leave it: torch alone promotes a 0-d float32 update
times a 0-d float64 factor to float64.

While ``torch.compile`` traces, the fast path is always taken (dynamo
cannot query the functorch level): compile a function that vmaps or
differentiates an optimizer by tracing it with ``make_fx`` first, as
``craft.ensemble`` does.

A transform written with raw ``torch._foreach_*`` calls gets the same
treatment inside ``per_tensor()``, a context manager that reroutes those
calls one tensor at a time. ``chain`` enters it by itself on the per-tensor
path (``per_tensor_when_needed``), so a user's transform inside a chain
needs nothing; called on its own under ``vmap``, torch's error names the op
(``Batching rule not implemented for aten::_foreach_norm.Scalar``) and
``with per_tensor():`` around the call is the fix.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

Tensors = Sequence[Tensor]


def per_tensor_path(*args: Any) -> bool:
    """Whether a multi-tensor op on ``args`` must run one tensor at a time (see the module doc)."""
    if torch.compiler.is_compiling():
        return False
    if torch._C._functorch.maybe_current_level() is not None:
        return True
    if not torch.is_grad_enabled():
        return False
    for a in args:
        if isinstance(a, Tensor) and a.requires_grad:
            return True
        if isinstance(a, (list, tuple)) and any(isinstance(x, Tensor) and x.requires_grad for x in a):
            return True
    return False


def per_tensor_when_needed(*trees: Any) -> contextlib.AbstractContextManager:
    """``per_tensor()`` when ops on the leaves of ``trees`` (dicts or lists of tensors) must run
    one tensor at a time, else a no-op context: what ``chain`` wraps its transforms in."""
    leaves = [x for t in trees if t is not None for x in (t.values() if isinstance(t, dict) else t)]
    return per_tensor() if per_tensor_path(leaves) else contextlib.nullcontext()


def _columns(args: tuple) -> Any:
    """Zip list arguments element-wise; repeat scalars and single tensors."""
    return zip(*(a if isinstance(a, (list, tuple)) else itertools.repeat(a) for a in args))


def _dispatch(fast: Callable, slow: Callable, *args: Any, **kwargs: Any) -> list[Tensor]:
    if not args[0]:  # an empty group (a label or mask that selects no leaf): torch's foreach ops refuse []
        return []
    if per_tensor_path(*args):
        return own_dtypes([slow(*xs, **kwargs) for xs in _columns(args)], args)
    if torch.compiler.is_compiling():
        args = tuple(computed_once(a) for a in args)
    return own_dtypes(list(fast(*args, **kwargs)), args)


def own_dtypes(out: list[Tensor], args: tuple) -> list[Tensor]:
    """Each result in the dtype of its tensor in ``args[0]``, as an in-place op would leave it.

    torch promotes a 0-d tensor times a 0-d float64 one (a schedule's value,
    Adam's bias correction) to float64, and any tensor with a list of wider
    ones: a 0-d float32 parameter would become float64 after one step. A
    check of dtypes is static: it costs a compiled step nothing.
    """
    if all(isinstance(a, (int, float)) for a in args[1:]):  # a Python scalar never promotes a float tensor
        return out
    return [o if o.dtype == x.dtype else o.to(x.dtype) for o, x in zip(out, args[0])]


def computed_once(x: Any) -> Any:
    """A 0-d floating-point tensor as a buffer that compiled kernels read, else ``x`` itself.

    Inductor inlines the computation of a 0-d operand into the loop of every
    tensor it scales: the schedule's cosine, Adam's bias corrections in
    float64 and the clipping factor were recomputed for every 16 elements of
    every parameter on the CPU (a 2M-element ``_foreach_mul`` by a cosine:
    2.05 ms inlined, 0.24 ms read). A reduction is always computed into a
    buffer first, and adding a zero is exact, so ``[x, 0].sum()`` is ``x``
    computed once.
    """
    if isinstance(x, Tensor) and x.ndim == 0 and x.is_floating_point():
        return torch.stack([x, torch.zeros_like(x)]).sum(0)
    return x


def add(xs: Tensors, other: Any, *, alpha: float = 1) -> list[Tensor]:
    """``x + alpha * other`` per tensor."""
    if alpha == 1:  # a scalar `other` takes no alpha
        return _dispatch(torch._foreach_add, torch.add, xs, other)
    return _dispatch(torch._foreach_add, torch.add, xs, other, alpha=alpha)


def sub(xs: Tensors, other: Any, *, alpha: float = 1) -> list[Tensor]:
    """``x - alpha * other`` per tensor."""
    if alpha == 1:
        return _dispatch(torch._foreach_sub, torch.sub, xs, other)
    return _dispatch(torch._foreach_sub, torch.sub, xs, other, alpha=alpha)


def mul(xs: Tensors, other: Any) -> list[Tensor]:
    return _dispatch(torch._foreach_mul, torch.mul, xs, other)


def div(xs: Tensors, other: Any) -> list[Tensor]:
    return _dispatch(torch._foreach_div, torch.div, xs, other)


def lerp(xs: Tensors, ends: Tensors, weight: Any) -> list[Tensor]:
    """``x + weight * (end - x)`` per tensor."""
    return _dispatch(torch._foreach_lerp, torch.lerp, xs, ends, weight)


def addcmul(xs: Tensors, t1: Tensors, t2: Tensors, *, value: float = 1) -> list[Tensor]:
    """``x + value * t1 * t2`` per tensor."""
    return _dispatch(torch._foreach_addcmul, torch.addcmul, xs, t1, t2, value=value)


def addcdiv(xs: Tensors, t1: Tensors, t2: Tensors, *, value: float = 1) -> list[Tensor]:
    """``x + value * t1 / t2`` per tensor."""
    return _dispatch(torch._foreach_addcdiv, torch.addcdiv, xs, t1, t2, value=value)


def pow(xs: Tensors, exponent: Any) -> list[Tensor]:  # noqa: A001 - torch's name
    return _dispatch(torch._foreach_pow, torch.pow, xs, exponent)


def maximum(xs: Tensors, other: Any) -> list[Tensor]:
    """Element-wise maximum with a list of tensors or a scalar."""
    slow = torch.maximum if isinstance(other, (list, tuple)) else torch.clamp_min
    return _dispatch(torch._foreach_maximum, slow, xs, other)


def minimum(xs: Tensors, other: Any) -> list[Tensor]:
    """Element-wise minimum with a list of tensors or a scalar."""
    slow = torch.minimum if isinstance(other, (list, tuple)) else torch.clamp_max
    return _dispatch(torch._foreach_minimum, slow, xs, other)


def clamp_min(xs: Tensors, other: Any) -> list[Tensor]:
    return _dispatch(torch._foreach_clamp_min, torch.clamp_min, xs, other)


def clamp_max(xs: Tensors, other: Any) -> list[Tensor]:
    return _dispatch(torch._foreach_clamp_max, torch.clamp_max, xs, other)


def sqrt(xs: Tensors) -> list[Tensor]:
    return _dispatch(torch._foreach_sqrt, torch.sqrt, xs)


def neg(xs: Tensors) -> list[Tensor]:
    return _dispatch(torch._foreach_neg, torch.neg, xs)


def abs(xs: Tensors) -> list[Tensor]:  # noqa: A001 - torch's name
    return _dispatch(torch._foreach_abs, torch.abs, xs)


def exp(xs: Tensors) -> list[Tensor]:
    return _dispatch(torch._foreach_exp, torch.exp, xs)


def sign(xs: Tensors) -> list[Tensor]:
    return _dispatch(torch._foreach_sign, torch.sign, xs)


def reciprocal(xs: Tensors) -> list[Tensor]:
    return _dispatch(torch._foreach_reciprocal, torch.reciprocal, xs)


def norm(xs: Tensors, ord: float = 2) -> list[Tensor]:  # noqa: A002 - torch's name
    """The L-``ord`` norm of each tensor: a list of 0-d tensors."""
    return _dispatch(torch._foreach_norm, torch.linalg.vector_norm, xs, ord)


def copy_(dst: Tensors, src: Tensors) -> None:
    """Copy ``src`` into ``dst`` in place, tensor by tensor.

    Not for writing a compiled CUDA step's result into its own inputs: inductor
    fuses ``torch._foreach_copy_`` into kernels that still read them, a race
    (docs/gpu.md); ``craft.step`` copies those with one ``copy_`` per tensor.
    """
    if per_tensor_path(dst, src):
        for d, s in zip(dst, src, strict=True):
            d.copy_(s)
    else:
        torch._foreach_copy_(list(dst), list(src))


# --- Raw torch._foreach_* calls in user code --------------------------------------------


class per_tensor(TorchFunctionMode):  # noqa: N801 - used as a context manager, like torch.no_grad
    """Inside ``with per_tensor():``, raw ``torch._foreach_*`` calls run one tensor at a time.

    For a transform written with ``torch._foreach_*`` directly, vmapped or
    differentiated by hand: ``with per_tensor(): torch.func.vmap(tx.update)(...)``.
    craft's own transforms need no context manager. An op without a per-tensor
    equivalent in the table raises ``NotImplementedError`` naming it.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if not name.startswith("_foreach_"):
            return func(*args, **kwargs)
        op = _PER_TENSOR.get(func)
        if op is None:
            raise NotImplementedError(f"craft.optim.foreach.per_tensor has no per-tensor version of torch.{name}")
        out = [op(*xs, **kwargs) for xs in _columns(tuple(args))]
        return None if name.endswith("_") else out


def _per_tensor_table() -> dict[Callable, Callable]:
    table = {torch._foreach_norm: torch.linalg.vector_norm, torch._foreach_copy_: Tensor.copy_}
    for name in ("add", "sub", "mul", "div", "lerp", "addcmul", "addcdiv", "sqrt", "maximum", "minimum",
                 "neg", "abs", "exp", "log", "sign", "pow", "clamp_min", "clamp_max", "reciprocal",
                 "rsqrt", "sigmoid", "tanh", "zero"):
        if hasattr(torch, f"_foreach_{name}") and hasattr(torch, name):
            table[getattr(torch, f"_foreach_{name}")] = getattr(torch, name)
        if hasattr(torch, f"_foreach_{name}_") and hasattr(Tensor, f"{name}_"):
            table[getattr(torch, f"_foreach_{name}_")] = getattr(Tensor, f"{name}_")
    return table


_PER_TENSOR = _per_tensor_table()
