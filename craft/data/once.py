"""One-off writes outside the run folder (preparing data) under torchrun: once per node.

Every rank builds its data, so every rank would write a prepared folder at
once. ``once_per_node(write)`` runs ``write`` on local rank 0 of each node
(one writer per filesystem, shared or not) while the other ranks wait; then
every rank learns whether any writer failed, so all of them stop with the
same message instead of some waiting for a peer that is gone. Without an
initialized process group (one process) it simply calls ``write``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch.distributed as dist


def distributed() -> bool:
    """Whether this process is one of several in an initialized process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def local_rank() -> int:
    """This process's rank on its node: torchrun's ``LOCAL_RANK``, else its global rank (else 0)."""
    default = dist.get_rank() if distributed() else 0
    return int(os.environ.get("LOCAL_RANK", default))


def once_per_node(write: Callable[[], object]) -> None:
    """Call ``write`` on local rank 0 only; every rank returns after it is done (a collective).

    Every rank of the group must call this the same number of times. An error
    in ``write`` is raised on its rank; every other rank raises ValueError
    naming that rank and the error.
    """
    if not distributed():
        write()
        return
    error: BaseException | None = None
    if local_rank() == 0:
        try:
            write()
        except Exception as e:  # every rank must reach the collective below, or the others hang
            error = e
    problems: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(problems, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(rank, problem) for rank, problem in enumerate(problems) if problem]
    if failed:
        rank, problem = failed[0]
        raise ValueError(f"rank {rank} could not prepare the data ({problem}); fix that, then rerun")
