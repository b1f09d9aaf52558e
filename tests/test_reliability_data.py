"""Reliability of the data paths through the real CLI (issue 14): prepare options, torchrun preparing data."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def craft(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "craft", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


@pytest.mark.parametrize(
    "what, options, lines",
    [
        ("shapes", ["--image_size=0", "--num_train=-1", "--num_val=-3"],
         ["--image_size: must be >= 1, got 0", "--num_train: must be >= 1, got -1", "--num_val: must be >= 0, got -3"]),
        ("captions", ["--image_size=0", "--num_train=many"],
         ["--image_size: must be >= 1, got 0", "--num_train: must be a whole number, got 'many'"]),
    ],
)  # fmt: skip
def test_prepare_rejects_bad_sizes_with_exit_2_and_writes_nothing(tmp_path, what, options, lines):
    result = craft("prepare", what, str(tmp_path / "out"), *options)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {line}" for line in lines]
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary folder
