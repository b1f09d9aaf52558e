"""Data parallel: 2 processes on the CPU with gloo, against one process on the same global batches."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import batch_for, cross_entropy, run_cli

from craft import distributed
from craft.models import SmallCNN
from craft.optim import adamw
from craft.step import init_state, make_train_step

ROOT = Path(__file__).resolve().parent.parent
STEPS = 10

GPT = """
name = "{name}"
seed = 0
out_dir = "{out}"
imports = {imports}

[model]
kind = "gpt"
block_size = 16
n_layer = 1
n_head = 2
n_embd = 32

[data]
kind = "{data}"
path = "{corpus}"
block_size = 16
batch_size = 8

[task]
kind = "language_model"

[optim]
kind = "sgd"
lr = 0.5
momentum = 0.9
clip_norm = 1.0

[train]
steps = 12
eval_every = 6
log_every = 1
compile = false
"""

FAILS_ON_RANK_1 = '''
import attrs
from craft.data import DATASETS
from craft.data.text import TextConfig


@DATASETS.register("fails_on_rank_1")
@attrs.frozen
class FailsOnRank1(TextConfig):
    """Text windows whose 5th training batch on rank 1 is unreadable."""

    def build(self, split, *, seed, rank=0, world_size=1):
        batches = super().build(split, seed=seed, rank=rank, world_size=world_size)
        if split == "train" and rank == 1:
            load, count = batches._load, [0]

            def failing(indices):
                count[0] += 1
                if count[0] == 5:
                    raise ValueError("corrupt record on rank 1")
                return load(indices)

            batches._load = failing
        return batches
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, nprocs: int, *args, tries: int = 3) -> None:
    """``mp.spawn(fn, (nprocs, port, *args))`` on a free port, again on a new one if another process took it.

    A port found free can be taken before rank 0 binds it (the race every
    pick-then-bind has); only that failure is retried.
    """
    for attempt in range(tries):
        try:
            return mp.spawn(fn, args=(nprocs, _free_port(), *args), nprocs=nprocs, join=True)
        except mp.ProcessRaisedException as e:
            if "address already in use" not in str(e).lower() or attempt == tries - 1:
                raise


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    replicas = distributed.from_env()
    try:
        torch.manual_seed(0)
        model = SmallCNN(num_classes=4).double()
        tx = adamw(1e-2, clip_norm=1.0)
        step = make_train_step(model, cross_entropy, tx, compile=False, cross_replica_mean=replicas.mean())
        state = init_state(model, tx)
        replicas.broadcast(state)
        for i in range(STEPS):
            batch = {k: v[rank::world_size] for k, v in _global_batch(i).items()}  # this rank's half
            state, _ = step(state, batch)
            replicas.check_same(state.params, f"parameters after step {i + 1}")  # raises if they differ
        if rank == 0:
            torch.save(state.params, out)
        distributed.close(replicas, wait=True)
    finally:
        distributed.close(replicas)


def _global_batch(i: int) -> dict[str, torch.Tensor]:
    batch = batch_for("cnn", size=16, seed=i)
    return {"input": batch["input"].double(), "target": batch["target"]}


def test_two_replicas_match_one_process_on_the_global_batches(tmp_path):
    out = tmp_path / "params.pt"
    _spawn(_worker, 2, str(out))
    torch.manual_seed(0)
    model = SmallCNN(num_classes=4).double()
    tx = adamw(1e-2, clip_norm=1.0)
    step = make_train_step(model, cross_entropy, tx, compile=False)
    state = init_state(model, tx)
    for i in range(STEPS):
        state, _ = step(state, _global_batch(i))
    replicated = torch.load(out, weights_only=True)
    for k, v in state.params.items():  # float64: only the order of the sums differs
        torch.testing.assert_close(replicated[k], v, atol=1e-9, rtol=1e-7, msg=lambda m, k=k: f"{k}: {m}")


def test_buckets_group_floating_leaves_by_dtype_and_size():
    tree = {
        "a": torch.zeros(4), "b": torch.zeros(4), "c": torch.zeros(2, dtype=torch.float64),
        "n": torch.zeros(3, dtype=torch.int64), "d": torch.zeros(8),
    }
    assert distributed._buckets(tree, bucket_bytes=32) == [["a", "b"], ["c"], ["d"]]


def test_one_process_is_a_single_replica(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    replicas = distributed.from_env()
    assert (replicas.rank, replicas.world_size, replicas.is_main, replicas.mean()) == (0, 1, True, None)
    assert replicas.any(True) and not replicas.any(False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n".join(["the cat sat on the mat", "the dog sat on the log", "a bird sat on the wire"] * 60) + "\n")
    return path


def _config(tmp_path: Path, corpus: Path, name: str, data: str = "text", imports: str = "[]") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(GPT.format(name=name, out=tmp_path / "runs", corpus=corpus, data=data, imports=imports))
    return path


def _torchrun(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    # --standalone: torchrun binds its own free port (no pick-then-bind race)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*command, "-m", "craft", *args], capture_output=True, text=True, timeout=300, cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )


def _craft(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, timeout=300)


def _params(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1]
    return torch.load(latest, weights_only=True)["state"]["params"]


@pytest.mark.slow
def test_torchrun_trains_one_run_folder_like_one_process(tmp_path, corpus):
    config = _config(tmp_path, corpus, "gpt")
    replicated = _torchrun(str(config), "--name=ddp")
    assert replicated.returncode == 0, replicated.stderr[-3000:]
    assert replicated.stdout.count("run folder:") == 1  # printed by rank 0 only
    single = _craft(str(config), "--name=one")
    assert single.returncode == 0, single.stderr
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["ddp", "one"]  # one folder for the 2-process job
    events = {n: [json.loads(line) for line in (runs / n / "metrics.jsonl").read_text().splitlines()] for n in ("ddp", "one")}
    train = {n: [e for e in events[n] if e["split"] == "train"] for n in events}
    assert [e["step"] for e in train["ddp"]] == list(range(1, 13))  # written once, not per rank
    for a, b in zip(train["ddp"], train["one"]):  # the logged loss is the global batch's
        assert a["metrics"]["loss"] == pytest.approx(b["metrics"]["loss"], abs=1e-5)
    a, b = _params(runs / "ddp"), _params(runs / "one")
    for k in b:  # float32, SGD: the sums' order is the only difference
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")

    # Resume the 2-process run on one process: the global batch is the same, so it continues
    # where an unbroken single-process run of 14 steps is.
    resumed = _craft(str(config), "--name=ddp", "--train.steps=14", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    unbroken = _craft(str(config), "--name=one14", "--train.steps=14")
    assert unbroken.returncode == 0, unbroken.stderr
    steps = [json.loads(line) for line in (runs / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in steps if e["split"] == "train"] == list(range(1, 15))  # continued, not restarted
    a, b = _params(runs / "ddp"), _params(runs / "one14")
    for k in b:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.slow
def test_a_failing_rank_brings_the_job_down_with_its_error(tmp_path, corpus):
    (tmp_path / "fails_on_rank_1.py").write_text(FAILS_ON_RANK_1)
    config = _config(tmp_path, corpus, "fails", data="fails_on_rank_1", imports='["fails_on_rank_1"]')
    result = _torchrun(str(config), cwd=tmp_path, PYTHONPATH=str(tmp_path))
    assert result.returncode != 0
    assert "error: corrupt record on rank 1" in result.stderr
    assert "error: rank 0: stopped because another rank failed or left" in result.stderr


@pytest.mark.slow
def test_torchrun_fine_tunes_from_init_from_as_one_process_does(tmp_path, corpus):
    """Every rank starts from the weights of ``train.init_from`` (each reads the file; rank 0's state is broadcast and
    checked), so the 2-process run ends where one process does."""
    config = _config(tmp_path, corpus, "gpt")
    source = _craft(str(config), "--name=source", "--train.steps=4")
    assert source.returncode == 0, source.stderr
    runs = tmp_path / "runs"
    given = f"--train.init_from={runs / 'source'}"
    replicated = _torchrun(str(config), "--name=ddp", given, "--train.steps=4")
    assert replicated.returncode == 0, replicated.stderr[-3000:]
    said = [line for line in replicated.stdout.splitlines() if line.startswith("init_from:")]
    assert len(said) == 1 and f"tensors from {runs / 'source'} (step 4)" in said[0]  # said by rank 0
    single = _craft(str(config), "--name=one", given, "--train.steps=4")
    assert single.returncode == 0, single.stderr
    a, b, before = _params(runs / "ddp"), _params(runs / "one"), _params(runs / "source")
    for k in b:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    assert not torch.equal(a["wpe.weight"], before["wpe.weight"])  # it trained on from there
