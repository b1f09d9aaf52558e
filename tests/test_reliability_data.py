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


# -- torchrun on a fresh clone ----------------------------------------------

SHAPES_RUN = """
name = "fresh"
seed = 0
out_dir = "{out}"
imports = ["tiny_prepare"]

[model]
kind = "cnn"
num_classes = 7

[data]
kind = "image_folder"
path = "{data}"
prepare = "shapes"
image_size = 32
batch_size = 8
num_threads = 0

[optim]
kind = "sgd"
lr = 0.1

[train]
steps = 2
eval_every = 2
log_every = 1
eval_batches = 1
compile = false
"""

# Shrinks what prepare = "shapes" writes, and makes writing it slow (as the
# real 32,000 images are), so that both ranks would be writing at once.
TINY_PREPARE = """
import os, time
from craft.data import images

images.PREPARED_SHAPES.update(num_train=28, num_val=7)
real = images.write_shapes_folder


def logged(root, **options):
    with open(os.environ["WRITERS_LOG"], "a") as log:
        log.write(os.environ.get("RANK", "?") + "\\n")
    time.sleep(3)
    return real(root, **options)


images.write_shapes_folder = logged
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_on_a_fresh_clone_prepares_the_data_once(tmp_path):
    (tmp_path / "tiny_prepare.py").write_text(TINY_PREPARE)
    config = tmp_path / "fresh.toml"
    config.write_text(SHAPES_RUN.format(out=tmp_path / "runs", data=tmp_path / "new" / "shapes"))
    log = tmp_path / "writers.log"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "WRITERS_LOG": str(log),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
    }  # fmt: skip
    result = subprocess.run(
        [*command, "-m", "craft", str(config)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert log.read_text().split() == ["0"]  # local rank 0 wrote; rank 1 waited, then read the same folder
    assert len(list((tmp_path / "new" / "shapes").rglob("*.png"))) == 35
    assert not [p for p in (tmp_path / "new").iterdir() if p.name.startswith(".")]  # no temporary folder left
    assert (tmp_path / "runs" / "fresh" / "metrics.jsonl").is_file()
