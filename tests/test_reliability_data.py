"""Reliability of the data paths through the real CLI (issue 14): prepare options, torchrun preparing data."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent


def craft(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, timeout=timeout)


@pytest.mark.parametrize(
    "what, options, lines",
    [
        ("shapes", ["--image_size=0", "--num_train=-1", "--num_val=-3"],
         ["--image_size: must be >= 1, got 0", "--num_train: must be >= 7, an image for each of the 7 classes, got -1",
          "--num_val: must be >= 7, an image for each of the 7 classes, got -3"]),
        ("captions", ["--image_size=0", "--num_train=-1"],
         ["--image_size: must be >= 1, got 0", "--num_train: must be >= 1, got -1"]),
        ("captions", ["--num_train=many"], ["--num_train: expected an integer, got 'many'"]),
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


# -- image folders that used to end in a traceback or a hang ----------------

FOLDER_RUN = """
name = "{name}"
seed = 0
out_dir = "{out}"

[model]
kind = "cnn"
num_classes = 2

[data]
kind = "image_folder"
path = "{data}"
batch_size = 4
val_fraction = 0.5
num_threads = 0

[optim]
kind = "sgd"
lr = 0.1

[train]
steps = 4
eval_every = 4
compile = false
"""


def image_folder(root: Path, extra: dict[str, bytes]) -> Path:
    from PIL import Image

    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for k in range(4):
            Image.new("RGB", (32, 32), (40 * k, 90, 10)).save(root / name / f"{name}_{k}.png")
    for relative, data in extra.items():
        (root / relative).write_bytes(data)
    return root


def animated_gif() -> bytes:
    import io

    from PIL import Image

    frames = [Image.new("RGB", (32, 32), (60 * k, 10, 200)) for k in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """An intact PNG header (its IHDR checksum right) claiming ``width x height``, and an empty IDAT."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"a/a_4.png": animated_gif()}, r"a_4\.png: it holds a GIF image but its name says PNG; rename it to \.gif"),
        ({"b/b_0.png": png_claiming(60000, 60000)},
         r"b_0\.png: its header claims 60000x60000 = 3,600,000,000 pixels, over data\.max_pixels"),
        ({"b/b_0.png": b"\x89PNG\r\n\x1a\n" + b"garbage" * 10},  # no IHDR: its "size" is text
         r"cannot decode image .*b_0\.png \(its header is damaged\); replace or delete it"),
    ],
)  # fmt: skip
def test_a_lying_or_oversized_image_is_one_line_naming_the_file(tmp_path, extra, message):
    import re

    data = image_folder(tmp_path / "images", extra)
    config = tmp_path / "run.toml"
    config.write_text(FOLDER_RUN.format(name="bad", out=tmp_path / "runs", data=data))
    result = craft(str(config))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and re.search(message, result.stderr), result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1
