"""craft.compiling's backport of an inductor fix for torch < 2.12 (pytorch/pytorch#176849).

The fix itself is checked against torch 2.11's inductor by
``benchmarks/cuda_codegen_check.py`` (docs/gpu.md, "torch 2.11's inductor
crash"); these tests pin what craft's patch does and that it is inert on the
torch craft installs.
"""

from __future__ import annotations

import types

import pytest
import torch
from torch._inductor import scheduler

from craft import compiling


class Single:
    pass


def fused(*nodes):
    return types.SimpleNamespace(snodes=list(nodes))


def test_a_fused_node_holding_a_multi_tensor_node_declines_to_reorder():
    calls = []
    reorder = compiling.declining_multi_tensor_nodes(lambda *a: calls.append(a) or True, Single)
    assert reorder(fused(Single(), object()), "node1", "node2") is False
    assert calls == []


def test_a_fused_node_of_single_nodes_reorders_as_before():
    calls = []
    reorder = compiling.declining_multi_tensor_nodes(lambda self, *a: calls.append(a) or "reordered", Single)
    assert reorder(fused(Single(), Single()), "node1", "node2") == "reordered"
    assert calls == [("node1", "node2")]


def test_the_backport_patches_torch_before_2_12_once(monkeypatch):
    def original(self, *args):  # inductor's own (a compile earlier in this process may have patched the real one)
        return True

    monkeypatch.setattr(scheduler.FusedSchedulerNode, "reorder_loops_by_dep_pair", original)
    monkeypatch.setattr(torch, "__version__", "2.11.0+cu130")
    compiling.backport_inductor_fixes()
    patched = scheduler.FusedSchedulerNode.reorder_loops_by_dep_pair
    assert patched is not original and patched.craft_backport
    compiling.backport_inductor_fixes()
    assert scheduler.FusedSchedulerNode.reorder_loops_by_dep_pair is patched  # idempotent


@pytest.mark.skipif(torch.torch_version.TorchVersion(torch.__version__) < (2, 12), reason="patched before 2.12")
def test_the_backport_leaves_a_fixed_torch_alone():
    original = scheduler.FusedSchedulerNode.reorder_loops_by_dep_pair
    compiling.backport_inductor_fixes()
    assert scheduler.FusedSchedulerNode.reorder_loops_by_dep_pair is original
    assert not getattr(original, "craft_backport", False)


def test_a_cpu_run_is_not_told_that_no_cuda_runtime_is_found():
    """A CUDA build of torch without a GPU logs this once inductor loads its C++ builder: noise in the progress bar."""
    import logging

    compiling.maybe_compile(lambda x: x + 1, True)
    logger, seen = logging.getLogger("torch.utils.cpp_extension"), []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)  # torch's loggers do not propagate to the root (caplog)
    try:
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
        logger.warning("another warning")
    finally:
        logger.removeHandler(handler)
    assert seen == ["another warning"]
