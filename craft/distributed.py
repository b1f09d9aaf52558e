"""Data parallel training across processes, as launched by ``torchrun``.

    torchrun --nproc_per_node=2 -m craft EXP.toml
    torchrun --nnodes=2 --node_rank=R --nproc_per_node=8 --rdzv_backend=c10d \\
             --rdzv_endpoint=HOST:29500 -m craft EXP.toml

``Replicas`` is what the loop needs to know about the other processes. With
no torchrun environment (or ``WORLD_SIZE=1``) it is ``single()``: one replica,
every method a no-op. Otherwise ``from_env()`` joins the process group (gloo
on the CPU, NCCL on CUDA, the device following ``LOCAL_RANK``):

- every rank builds the same model from the same seed; ``broadcast`` then
  copies rank 0's state to all and ``check_same`` verifies it;
- each rank reads a disjoint slice of every global batch (``data.batch_size``
  is the global batch, see ``craft.data.batching``);
- the train step averages gradients, its metrics and floating-point buffers
  (BatchNorm statistics) across ranks with ``mean``: bucketed all-reduces over
  flat buffers, functional collectives inside the compiled step, so the step
  stays a pure function of its state and batch;
- eval metrics are summed across ranks (``sum``) before they are divided;
- only rank 0 (``is_main``) prints, logs, plots and writes checkpoints.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils import _pytree as pytree

from craft.tree import Params, flatten, unflatten

BUCKET_BYTES = 25 * 2**20  # as DistributedDataParallel's default bucket_cap_mb
TIMEOUT = datetime.timedelta(minutes=10)  # a rank that never arrives fails the job instead of hanging it


class Replicas(NamedTuple):
    """This process's place among the data-parallel replicas."""

    rank: int
    world_size: int
    device: torch.device | None  # the device torchrun's LOCAL_RANK picks; None: the config decides

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def mean(self) -> Callable[[Params], Params] | None:
        """The step's cross-replica mean of a tree (``None`` with one replica)."""
        return bucketed_mean(self.world_size) if self.active else None

    def sum(self, values: Tensor) -> Tensor:
        """``values`` summed over replicas (a copy; unchanged with one replica)."""
        if not self.active:
            return values.clone()
        buf = self._for_backend(values).clone()
        dist.all_reduce(buf)
        return buf.to(values.device)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any."""
        return bool(self.sum(torch.tensor([int(flag)])).item()) if self.active else flag

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast(self, tree: Any) -> None:
        """Copy rank 0's tensors of ``tree`` into every rank's, in place."""
        if not self.active:
            return
        for t in pytree.tree_leaves(tree):
            if isinstance(t, Tensor):
                buf = self._for_backend(t)
                dist.broadcast(buf, src=0)
                if buf is not t:
                    t.copy_(buf)

    def check_same(self, tree: Any, what: str) -> None:
        """Raise unless every rank holds the same values of ``tree``'s tensors (compared by checksums)."""
        if not self.active:
            return
        leaves = [t for t in pytree.tree_leaves(tree) if isinstance(t, Tensor)]
        mine = self._for_backend(torch.stack([t.detach().double().sum().cpu() for t in leaves]))
        everyone = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(everyone, mine)
        differ = [r for r, theirs in enumerate(everyone) if not torch.equal(theirs, everyone[0])]
        if differ:
            raise RuntimeError(f"{what} differ between rank 0 and rank(s) {differ}")

    def _for_backend(self, t: Tensor) -> Tensor:
        """NCCL only moves CUDA tensors: CPU ones (the rng seed, host sums) travel via this rank's GPU."""
        return t.to(self.device) if dist.get_backend() == "nccl" and not t.is_cuda else t


def is_main_process() -> bool:
    """True outside torchrun and on its rank 0 (from ``RANK``, before or without a process group): the one
    process of a job that prints the job's own lines (interrupted, the run folder)."""
    return os.environ.get("RANK", "0") == "0"


def single() -> Replicas:
    return Replicas(rank=0, world_size=1, device=None)


def from_env() -> Replicas:
    """Join torchrun's process group when its environment says so; else ``single()``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return single()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT)
    return Replicas(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def is_collective_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because a peer went away."""
    return isinstance(error, dist.DistError) or any(word in str(error) for word in ("gloo", "NCCL", "Connection reset"))


def close(replicas: Replicas, *, wait: bool = False) -> None:
    """Leave the process group. ``wait``: first wait for every rank to get here.

    Pass ``wait=True`` on a normal exit: gloo aborts a process that tears the
    group down while a peer still uses it. After a failure, a peer may never
    arrive, so do not wait.
    """
    if replicas.active and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def bucketed_mean(world_size: int, bucket_bytes: int = BUCKET_BYTES) -> Callable[[Params], Params]:
    """``tree -> tree`` averaged over the default process group, floating-point leaves only.

    Leaves are packed into flat buffers of at most ``bucket_bytes`` (one per
    dtype run) and each buffer is all-reduced once: a few large messages
    instead of one per tensor. Functional collectives keep it pure and
    traceable by ``torch.compile``.
    """
    import torch.distributed._functional_collectives as funcol

    def mean(tree: Params) -> Params:
        out = dict(tree)
        for names in _buckets(tree, bucket_bytes):
            flat, spec = flatten({k: tree[k] for k in names})
            flat = funcol.all_reduce(flat, "sum", dist.group.WORLD) / world_size
            out.update(unflatten(flat, spec))
        return out

    return mean


def _buckets(tree: Params, bucket_bytes: int) -> list[list[str]]:
    """Names of the floating-point leaves, grouped by dtype into runs of at most ``bucket_bytes``."""
    buckets: list[list[str]] = []
    size, dtype = 0, None
    for name, t in tree.items():
        if not t.is_floating_point():
            continue
        nbytes = t.numel() * t.element_size()
        if not buckets or t.dtype != dtype or size + nbytes > bucket_bytes:
            buckets.append([])
            size, dtype = 0, t.dtype
        buckets[-1].append(name)
        size += nbytes
    return buckets
