"""One-off data writes: once per node under a process group, and safe against a concurrent writer."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from craft.data.once import once_per_node
from craft.data.shapes import move_into_place, write_shapes_folder


def test_without_a_process_group_the_write_just_runs():
    calls = []
    once_per_node(lambda: calls.append(1))
    assert calls == [1]


def test_a_folder_another_writer_finished_first_is_not_overwritten(tmp_path):
    mine, root = tmp_path / ".root.partial", tmp_path / "root"
    (mine / "x").mkdir(parents=True)
    (root / "theirs").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="appeared while it was being written"):
        move_into_place(mine, root)
    assert [p.name for p in root.iterdir()] == ["theirs"]
    root.joinpath("theirs").rmdir()  # an empty folder is replaced
    move_into_place(mine, root)
    assert [p.name for p in root.iterdir()] == ["x"]


def test_writing_over_a_folder_that_appeared_meanwhile_is_a_file_exists_error(tmp_path, monkeypatch):
    root = tmp_path / "shapes"
    real = move_into_place

    def someone_else_first(tmp, dest):
        (dest / "train").mkdir(parents=True)  # another rank renamed its folder into place just now
        return real(tmp, dest)

    monkeypatch.setattr("craft.data.shapes.move_into_place", someone_else_first)
    with pytest.raises(FileExistsError):
        write_shapes_folder(root, num_train=3, num_val=1, image_size=4, seed=0)
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]  # the temporary folder is gone


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    written = []
    try:
        once_per_node(lambda: written.append(rank))  # succeeds: only local rank 0 writes

        def full_disk():
            raise OSError("No space left on device")

        once_per_node(full_disk)
        outcome = "no error"
    except (OSError, ValueError) as e:
        outcome = f"{type(e).__name__}: {e}"
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}").write_text(f"{written}\n{outcome}")


@pytest.mark.slow
def test_under_a_process_group_local_rank_0_writes_and_every_rank_learns_of_its_failure(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "rank0").read_text() == "[0]\nOSError: No space left on device"
    assert (tmp_path / "rank1").read_text() == (
        "[]\nValueError: rank 0 could not prepare the data (OSError: No space left on device); fix that, then rerun"
    )
