"""Helpers over parameter trees.

A params tree is a flat ``dict[str, Tensor]`` keyed by the module's dotted
parameter names (``"conv1.weight"``), as ``nn.Module.named_parameters`` gives.
Optimizer states nest such dicts inside tuples and NamedTuples; the functions
taking "any pytree" accept those too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

Params = dict[str, Tensor]


def tree_map(fn: Callable[..., Tensor], tree: Params, *rest: Params) -> Params:
    """``{k: fn(tree[k], *(r[k] for r in rest))}``; every tree has the same keys."""
    for other in rest:
        if other.keys() != tree.keys():
            raise ValueError(
                f"trees have different keys: {sorted(tree.keys() ^ other.keys())}"
            )
    return {k: fn(v, *(r[k] for r in rest)) for k, v in tree.items()}


def zeros_like(tree: Params) -> Params:
    """A tree of zeros with the shapes, dtypes and devices of ``tree``."""
    return {k: torch.zeros_like(v) for k, v in tree.items()}


class Normed(dict):
    """A params tree that holds its own global norm (``with_global_norm``): ``global_norm`` of it is that
    tensor, not a second computation, while its leaves are the very tensors it was computed from, unchanged.

    Transforms never modify their inputs in place (``craft.optim.base``); in eager mode a leaf changed in
    place all the same (its ``_version`` moved on) has its norm computed again. A compiled step cannot read
    ``_version`` (dynamo does not trace it) and relies on the rule.
    """


def with_global_norm(tree: Params) -> tuple[Params, Tensor]:
    """``(tree, norm)``: ``tree`` as a ``Normed`` that remembers ``norm``, its ``global_norm``. A train step
    logs the gradients' norm and clips them by it (``clip_by_global_norm``) with one computation."""
    norm = global_norm(tree)
    normed = Normed(tree)
    normed.norm, normed.leaves = norm, tuple(tree.values())
    normed.versions = None if torch.compiler.is_compiling() else _versions(normed.leaves)
    return normed, norm


def _versions(leaves: Any) -> tuple[int, ...]:
    """The in-place modification counters of ``leaves`` (eager mode only: dynamo cannot trace them)."""
    return tuple(x._version for x in leaves)


def _norm_still_holds(tree: Normed, leaves: list[Tensor]) -> bool:
    """Whether ``tree.norm`` is the norm of ``leaves``: the very tensors it was computed from, none of them
    changed in place since (checked in eager mode)."""
    if len(leaves) != len(tree.leaves) or not all(a is b for a, b in zip(leaves, tree.leaves)):
        return False
    return torch.compiler.is_compiling() or tree.versions is None or _versions(leaves) == tree.versions


def global_norm(tree: Params) -> Tensor:
    """The L2 norm of all leaves taken as one vector: a 0-d tensor of their promoted dtype.

    Computed as the norm of per-tensor norms (one multi-tensor kernel), as
    ``torch.nn.utils.clip_grad_norm_`` does; one norm per tensor under
    ``torch.func`` transforms or when a leaf requires grad (the rule of
    ``craft.optim.foreach``: vmap has no batching rule for ``_foreach_norm``).
    """
    leaves = list(tree.values())
    if isinstance(tree, Normed) and _norm_still_holds(tree, leaves):
        return tree.norm  # computed once for these very tensors (a leaf replaced or changed since: computed again)
    if not leaves:
        return torch.zeros(())
    if _per_tensor(leaves):
        norms = [torch.linalg.vector_norm(x) for x in leaves]
    else:
        norms = torch._foreach_norm(leaves)
    dtypes = {n.dtype for n in norms}
    if len(dtypes) > 1:  # a mixed-precision tree: combine in the widest dtype
        dtype = functools.reduce(torch.promote_types, dtypes)
        norms = [n.to(dtype) for n in norms]
    return torch.linalg.vector_norm(torch.stack(norms))


def _per_tensor(leaves: list[Tensor]) -> bool:
    # craft.optim.foreach.per_tensor_path, restated: trees sit below optim and cannot import it.
    if torch.compiler.is_compiling():
        return False
    if torch._C._functorch.maybe_current_level() is not None:
        return True
    return torch.is_grad_enabled() and any(x.requires_grad for x in leaves)


class FlatSpec(NamedTuple):
    """What ``unflatten`` needs to rebuild a tree from one flat buffer."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    dtypes: tuple[torch.dtype, ...]

    @property
    def numels(self) -> list[int]:
        return [s.numel() for s in self.shapes]


def flatten(tree: Params, dtype: torch.dtype | None = None) -> tuple[Tensor, FlatSpec]:
    """Concatenate all leaves into one 1-d buffer, in key order.

    ``dtype`` defaults to the promoted dtype of the leaves. Returns the buffer
    of length ``sum(numel)`` and the spec that ``unflatten`` reverses.
    """
    leaves = list(tree.values())
    spec = FlatSpec(
        tuple(tree), tuple(t.shape for t in leaves), tuple(t.dtype for t in leaves)
    )
    if not leaves:
        return torch.zeros(0, dtype=dtype or torch.float32), spec
    if dtype is None:
        dtype = leaves[0].dtype
        for t in leaves[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
    return torch.cat([t.reshape(-1).to(dtype) for t in leaves]), spec


def unflatten(flat: Tensor, spec: FlatSpec) -> Params:
    """Split a buffer made by ``flatten`` back into a tree (original dtypes)."""
    if flat.ndim != 1 or flat.numel() != sum(spec.numels):
        raise ValueError(
            f"flat buffer of shape {tuple(flat.shape)} does not match the spec "
            f"({sum(spec.numels)} elements)"
        )
    parts = torch.split(flat, spec.numels)
    return {
        name: part.view(shape).to(dtype)
        for name, part, shape, dtype in zip(spec.names, parts, spec.shapes, spec.dtypes)
    }


def leaves(tree: Any) -> list[Tensor]:
    """All tensors of any pytree (dicts, tuples, NamedTuples), in a fixed order."""
    return [x for x in pytree.tree_leaves(tree) if isinstance(x, Tensor)]


def nbytes(tree: Any) -> int:
    """Total bytes of the tensors in any pytree."""
    return sum(t.numel() * t.element_size() for t in leaves(tree))
