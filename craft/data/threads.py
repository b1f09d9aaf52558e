"""Threads that prepare batches beside the train step, each running torch ops on one core.

Decoding and augmentation call torch ops from several Python threads. With
OpenMP each calling thread runs its ops on a team of ``torch.get_num_threads()``
threads, so two decoding threads on two cores ran four busy threads:
augmented 128-px JPEGs went through at 1,421 images/s with 2 decoding
threads, against 1,900 with each thread's ops single-threaded (what
DataLoader's worker processes do). The caller's thread count, which the train
step uses, stays as it was.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

_LOCK = threading.Lock()


def data_threads(count: int, name: str) -> ThreadPoolExecutor | None:
    """``count`` started threads whose torch ops each run on one thread; ``None`` for 0."""
    if count <= 0:
        return None
    with _LOCK:
        # torch.set_num_threads sets this thread's count and the default that a
        # thread takes at its first parallel op. Each pool thread takes its
        # default first, then sets 1; once all have, the default goes back.
        default = torch.get_num_threads()
        ready = threading.Barrier(count + 1)
        pool = ThreadPoolExecutor(count, thread_name_prefix=name, initializer=_one_thread, initargs=(ready,))
        try:
            for _ in range(count):
                pool.submit(int)  # a thread starts per task while the others wait at the barrier
            ready.wait(timeout=60)
        finally:
            torch.set_num_threads(default)
    return pool


def _one_thread(ready: threading.Barrier) -> None:
    torch.zeros(1 << 17).add_(1)  # a parallel op: this thread's lazy thread-count set-up happens now
    torch.set_num_threads(1)
    ready.wait(timeout=60)
