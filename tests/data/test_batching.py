"""``EvalBatches.limited``: ``train.eval_batches`` batches spread over the split, on any number of ranks."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from craft.data.batching import EvalBatches


def batches(n: int, size: int, rank: int = 0, world_size: int = 1) -> EvalBatches:
    return EvalBatches(n, lambda i: {"index": i}, batch_size=size, classes=[], rank=rank, world_size=world_size)


@given(n=st.integers(1, 200), per_rank=st.integers(1, 8), limit=st.integers(1, 12), world=st.integers(1, 4))
def test_limited_reads_distinct_examples_spread_over_the_split_and_the_ranks_share_them(n, per_rank, limit, world):
    size = per_rank * world  # a global batch the ranks divide
    alone = [b["index"] for b in batches(n, size).limited(limit)]
    read = torch.cat(alone)
    assert len(alone) == min(limit, -(-n // size)) and len(read) == min(limit * size, n)
    assert len(set(read.tolist())) == len(read) and read.max() < n  # distinct, in range
    if len(read) > 1:  # evenly spaced: the gaps differ by at most one, and the last example is near the end
        gaps = read.diff()
        assert gaps.max() - gaps.min() <= 1 and read[-1] >= n - gaps.max()
    ranks = [[b["index"] for b in batches(n, size, r, world).limited(limit)] for r in range(world)]
    for k, whole in enumerate(alone):  # global batch k is the ranks' slices of it, in rank order
        assert torch.equal(torch.cat([r[k] for r in ranks if k < len(r)]), whole)


def test_the_whole_split_is_left_as_it_is():
    assert [b["index"].tolist() for b in batches(5, 2).limited(9)] == [[0, 1], [2, 3], [4]]
    assert len(batches(5, 2)) == 3  # the original is unchanged
