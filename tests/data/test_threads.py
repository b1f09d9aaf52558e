"""Data threads run torch ops on one thread each; the caller, and threads started later, keep the default."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

CHECK = """
import torch
from concurrent.futures import ThreadPoolExecutor
from craft.data.threads import data_threads

torch.set_num_threads(2)
pool = data_threads(2, "test")
counts = lambda: (torch.zeros(1 << 17).add_(1), torch.get_num_threads())[1]
workers = set(pool.map(lambda _: counts(), range(8)))
later = ThreadPoolExecutor(1).submit(counts).result()
print(workers, counts(), later)
assert data_threads(0, "none") is None
"""


def test_pool_threads_run_torch_single_threaded_and_the_caller_keeps_its_threads():
    # A fresh process: the thread counts are per-process state that other tests may have set.
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("}")[0] == "{1" and result.stdout.split()[-2:] == ["2", "2"]
