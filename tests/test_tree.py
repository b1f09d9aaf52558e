"""Tests of craft.tree: flatten/unflatten, global_norm, tree_map and friends."""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from craft import tree as T

FLOATS = (torch.float32, torch.float64, torch.bfloat16)

NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,5}(\.[a-z0-9_]{1,5}){0,2}", fullmatch=True)
SHAPES = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)


def _tensor(shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, dtype=torch.float64, generator=g) * scale).to(dtype)


@st.composite
def trees(draw, dtypes=FLOATS, min_size=0, max_size=6):
    """A params dict of tensors of random shapes (0-d and empty dims included)."""
    specs = draw(
        st.dictionaries(
            NAMES,
            st.tuples(SHAPES, st.sampled_from(dtypes)),
            min_size=min_size,
            max_size=max_size,
        )
    )
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    return {
        name: _tensor(shape, dtype, seed + i, scale)
        for i, (name, (shape, dtype)) in enumerate(specs.items())
    }


def _promoted(tree):
    dtypes = [t.dtype for t in tree.values()]
    out = dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    return out


def _assert_same_tree(got, want):
    assert list(got) == list(want)
    for k in want:
        assert got[k].shape == want[k].shape, k
        assert got[k].dtype == want[k].dtype, k
        assert torch.equal(got[k], want[k]), k


# --------------------------------------------------------------------------
# flatten / unflatten


@settings(max_examples=60, deadline=None)
@given(trees())
def test_flatten_unflatten_round_trip(tree):
    flat, spec = T.flatten(tree)

    assert flat.ndim == 1
    assert flat.numel() == sum(t.numel() for t in tree.values())
    assert spec.names == tuple(tree)
    assert spec.shapes == tuple(t.shape for t in tree.values())
    assert spec.dtypes == tuple(t.dtype for t in tree.values())
    assert spec.numels == [t.numel() for t in tree.values()]
    if tree:
        assert flat.dtype == _promoted(tree)
        # the buffer is the leaves in key order
        want = torch.cat([t.reshape(-1).to(flat.dtype) for t in tree.values()])
        assert torch.equal(flat, want)

    _assert_same_tree(T.unflatten(flat, spec), tree)


@settings(max_examples=40, deadline=None)
@given(trees(), st.sampled_from(FLOATS))
def test_flatten_with_explicit_dtype(tree, dtype):
    flat, spec = T.flatten(tree, dtype=dtype)
    assert flat.dtype == dtype
    assert flat.numel() == sum(t.numel() for t in tree.values())
    back = T.unflatten(flat, spec)
    # leaves come back in their own dtype, holding the values seen through `dtype`
    want = {k: v.to(dtype).to(v.dtype) for k, v in tree.items()}
    _assert_same_tree(back, want)
    if dtype == torch.float64:  # every leaf dtype embeds exactly in float64
        _assert_same_tree(back, tree)


@pytest.mark.parametrize(
    "dtypes, promoted",
    [
        ((torch.float32, torch.bfloat16), torch.float32),
        ((torch.bfloat16, torch.bfloat16), torch.bfloat16),
        ((torch.bfloat16, torch.float64), torch.float64),
        ((torch.float32, torch.float64, torch.bfloat16), torch.float64),
    ],
)
def test_flatten_default_dtype_is_promoted(dtypes, promoted):
    tree = {f"p{i}": torch.ones(2, dtype=d) for i, d in enumerate(dtypes)}
    flat, _ = T.flatten(tree)
    assert flat.dtype == promoted


def test_flatten_empty_tree():
    flat, spec = T.flatten({})
    assert flat.shape == (0,)
    assert flat.dtype == torch.float32
    assert T.unflatten(flat, spec) == {}
    flat64, _ = T.flatten({}, dtype=torch.float64)
    assert flat64.dtype == torch.float64


def test_flatten_zero_d_and_empty_leaves():
    tree = {
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "w": torch.arange(6.0).reshape(2, 3),
    }
    flat, spec = T.flatten(tree)
    assert flat.tolist() == [3.5, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    back = T.unflatten(flat, spec)
    assert back["scalar"].shape == ()
    assert back["empty"].shape == (0, 3)
    _assert_same_tree(back, tree)


@settings(max_examples=30, deadline=None)
@given(trees(), st.sampled_from([-2, -1, 1, 3]))
def test_unflatten_wrong_length_raises(tree, delta):
    flat, spec = T.flatten(tree)
    total = flat.numel()
    n = total + delta
    if n < 0:
        n = total + 1
    bad = torch.zeros(n, dtype=flat.dtype)
    with pytest.raises(ValueError, match=rf"\({n},\).*\b{total} elements"):
        T.unflatten(bad, spec)


def test_unflatten_rejects_non_1d_buffer():
    tree = {"a": torch.ones(2, 3)}
    flat, spec = T.flatten(tree)
    with pytest.raises(ValueError, match=r"\(2, 3\).*6 elements"):
        T.unflatten(flat.reshape(2, 3), spec)
    with pytest.raises(ValueError, match="6 elements"):
        T.unflatten(flat.reshape(1, 6), spec)


# --------------------------------------------------------------------------
# global_norm


def _reference_norm(tree):
    leaves = list(tree.values())
    return torch.linalg.vector_norm(torch.cat([t.double().flatten() for t in leaves]))


def _clip_grad_total_norm(tree):
    params = []
    for t in tree.values():
        p = torch.nn.Parameter(torch.zeros_like(t))
        p.grad = t.clone()
        params.append(p)
    return torch.nn.utils.clip_grad_norm_(params, max_norm=math.inf)


@settings(max_examples=60, deadline=None)
@given(trees(dtypes=(torch.float32, torch.float64), min_size=1))
def test_global_norm_matches_concatenated_norm_and_clip_grad_norm(tree):
    got = T.global_norm(tree)
    assert got.shape == ()
    assert got.dtype == _promoted(tree)  # "a 0-d tensor of their promoted dtype"

    # the brief's reference: one norm over the concatenated leaves
    want = torch.linalg.vector_norm(torch.cat([t.flatten() for t in tree.values()]))
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert got.item() == pytest.approx(_reference_norm(tree).item(), rel=1e-5)
    assert got.item() == pytest.approx(_clip_grad_total_norm(tree).item(), rel=1e-5)


@settings(max_examples=30, deadline=None)
@given(trees(dtypes=FLOATS, min_size=1))
def test_global_norm_with_bfloat16_leaves(tree):
    # per-tensor norms of bfloat16 leaves are bfloat16 (as in clip_grad_norm_),
    # so only bfloat16 precision (2**-8 relative, a few roundings) can be asked for
    got = T.global_norm(tree)
    assert got.shape == ()
    assert got.dtype == _promoted(tree)
    assert got.item() == pytest.approx(_reference_norm(tree).item(), rel=2e-2)
    assert got.item() == pytest.approx(_clip_grad_total_norm(tree).double().item(), rel=2e-2)


def test_global_norm_known_value():
    tree = {"a": torch.tensor([3.0]), "b": torch.tensor([[4.0, 0.0]]), "c": torch.tensor(12.0)}
    assert T.global_norm(tree).item() == pytest.approx(13.0)


def test_global_norm_of_empty_tree_is_zero():
    got = T.global_norm({})
    assert got.shape == ()
    assert got.dtype.is_floating_point
    assert got.item() == 0.0
    assert T.global_norm({"e": torch.zeros(0), "f": torch.zeros(2, 0)}).item() == 0.0


# --------------------------------------------------------------------------
# tree_map / zeros_like


@settings(max_examples=40, deadline=None)
@given(trees(dtypes=(torch.float32, torch.float64)), st.integers(0, 1000))
def test_tree_map_over_several_trees(tree, seed):
    b = {k: _tensor(v.shape, v.dtype, seed + i) for i, (k, v) in enumerate(tree.items())}
    c = {k: _tensor(v.shape, v.dtype, seed + 100 + i) for i, (k, v) in enumerate(tree.items())}

    out = T.tree_map(lambda x, y, z: 2 * x + y - z, tree, b, c)
    assert list(out) == list(tree)
    for k in tree:
        assert torch.equal(out[k], 2 * tree[k] + b[k] - c[k])

    single = T.tree_map(torch.neg, tree)
    assert list(single) == list(tree)
    for k in tree:
        assert torch.equal(single[k], -tree[k])


def test_tree_map_follows_first_tree_order():
    a = {"x": torch.tensor(1.0), "y": torch.tensor(2.0)}
    b = {"y": torch.tensor(20.0), "x": torch.tensor(10.0)}
    out = T.tree_map(torch.add, a, b)
    assert list(out) == ["x", "y"]
    assert out["x"].item() == 11.0 and out["y"].item() == 22.0


@pytest.mark.parametrize(
    "other, named",
    [
        ({"a": torch.zeros(1)}, "b"),  # missing key
        ({"a": torch.zeros(1), "b": torch.zeros(1), "extra": torch.zeros(1)}, "extra"),
        ({"a": torch.zeros(1), "c": torch.zeros(1)}, "c"),
        ({}, "a"),
    ],
)
def test_tree_map_key_mismatch_raises(other, named):
    tree = {"a": torch.ones(1), "b": torch.ones(1)}
    with pytest.raises(ValueError, match=rf"different keys.*'{named}'"):
        T.tree_map(torch.add, tree, other)
    with pytest.raises(ValueError, match="different keys"):
        T.tree_map(lambda x, y, z: x, tree, tree, other)


@settings(max_examples=40, deadline=None)
@given(trees())
def test_zeros_like_preserves_shapes_and_dtypes(tree):
    z = T.zeros_like(tree)
    assert list(z) == list(tree)
    for k, v in tree.items():
        assert z[k].shape == v.shape
        assert z[k].dtype == v.dtype
        assert z[k].device == v.device
        assert not z[k].any()
    # fresh tensors: writing into them leaves the input alone
    before = {k: v.clone() for k, v in tree.items()}
    for v in z.values():
        v.fill_(7)
    _assert_same_tree(tree, before)


# --------------------------------------------------------------------------
# leaves / nbytes over nested pytrees


class Moments(NamedTuple):
    count: object
    mu: object
    nu: object


class Pair(NamedTuple):
    first: object
    second: object


TENSOR_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.int64, torch.int32)


@st.composite
def tensor_leaves(draw):
    shape = draw(SHAPES)
    dtype = draw(st.sampled_from(TENSOR_DTYPES))
    return torch.zeros(shape, dtype=dtype)


PYTREES = st.recursive(
    tensor_leaves() | st.none() | st.integers(-3, 3) | st.floats(0, 1),
    lambda kids: st.one_of(
        st.dictionaries(NAMES, kids, max_size=3),
        st.lists(kids, max_size=3).map(tuple),
        st.tuples(kids, kids, kids).map(lambda t: Moments(*t)),
        st.tuples(kids, kids).map(lambda t: Pair(*t)),
    ),
    max_leaves=12,
)


def _walk(x):
    """Expected tensors of a pytree, depth first, dicts in insertion order."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _walk(v)]
    if isinstance(x, tuple):  # NamedTuples included
        return [t for v in x for t in _walk(v)]
    return []


@settings(max_examples=60, deadline=None)
@given(PYTREES)
def test_leaves_and_nbytes_over_nested_pytrees(tree):
    want = _walk(tree)
    got = T.leaves(tree)
    assert len(got) == len(want)
    assert all(g is w for g, w in zip(got, want))
    assert T.nbytes(tree) == sum(t.numel() * t.element_size() for t in want)


def test_nbytes_of_optimizer_like_state():
    params = {"w": torch.zeros(3, 4), "b": torch.zeros(4, dtype=torch.bfloat16)}
    state = (
        Moments(torch.zeros((), dtype=torch.int64), T.zeros_like(params), T.zeros_like(params)),
        (),
        Pair(torch.tensor(1, dtype=torch.int64), None),
    )
    got = T.leaves(state)
    assert len(got) == 6
    assert got[0] is state[0].count
    assert got[1] is state[0].mu["w"] and got[2] is state[0].mu["b"]
    assert got[3] is state[0].nu["w"] and got[4] is state[0].nu["b"]
    assert got[5] is state[2].first
    per_params = 12 * 4 + 4 * 2
    assert T.nbytes(state) == 8 + 2 * per_params + 8
    assert T.nbytes(params) == per_params
    assert T.nbytes({}) == 0 and T.leaves(()) == []


def test_nbytes_of_real_adamw_state():
    from craft.optim import OPTIMIZERS

    params = {"layer.weight": torch.zeros(5, 3), "layer.bias": torch.zeros(5, dtype=torch.float64)}
    state = OPTIMIZERS["adamw"](1e-3).init(params)
    tensors = T.leaves(state)
    assert all(isinstance(t, torch.Tensor) for t in tensors)
    assert T.nbytes(state) == sum(t.numel() * t.element_size() for t in tensors)
    # two moments per parameter at least
    assert T.nbytes(state) >= 2 * T.nbytes(params)
