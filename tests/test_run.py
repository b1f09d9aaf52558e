"""End to end: the real CLI in a subprocess, on a tiny experiment."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent

TINY = """
name = "tiny"
seed = 0
out_dir = "{out}"

[model]
kind = "cnn"
num_classes = {classes}

[data]
kind = "image_folder"
path = "{data}"
prepare = "shapes"
batch_size = 16
image_size = 32

[optim]
kind = "adamw"
lr = 3e-3
clip_norm = 1.0

[schedule]
kind = "warmup_cosine"
warmup_ratio = 0.1

[train]
steps = 12
eval_every = 6
log_every = 3
eval_batches = 2
compile = false
"""


def craft(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd)


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "shapes"
    result = craft("prepare", "shapes", str(folder), "--num_train=160", "--num_val=48")
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture
def experiment(tmp_path, shapes_folder) -> Path:
    classes = len([p for p in (shapes_folder / "train").iterdir() if p.is_dir()])
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(out=tmp_path / "runs", data=shapes_folder, classes=classes))
    return path


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1]
    return torch.load(latest, weights_only=True)["state"]["params"]


@pytest.mark.slow
def test_train_writes_the_run_folder(experiment):
    result = craft(str(experiment))
    assert result.returncode == 0, result.stderr
    run_dir = experiment.parent / "runs" / "tiny"
    assert {p.name for p in run_dir.iterdir()} >= {"config.toml", "metrics.jsonl", "checkpoints", "loss.png"}
    assert f"the resolved config: {run_dir / 'config.toml'}" in result.stdout  # one line points at it
    assert "parameters," in result.stdout and "compiling the train step" not in result.stdout  # compile = false
    events = _events(run_dir)
    assert [e["step"] for e in events if e["split"] == "train"] == [3, 6, 9, 12]
    assert [e["step"] for e in events if e["split"] == "val"] == [6, 12]
    assert all({"step", "split", "metrics", "elapsed"} <= e.keys() for e in events)
    assert {"loss", "accuracy"} <= events[-1]["metrics"].keys()
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("step_*.pt"))] == [
        "step_00000006.pt",
        "step_00000012.pt",
    ]
    with Image.open(run_dir / "loss.png") as image:
        assert image.format == "PNG" and image.size[0] > 100

    evaluated = craft("evaluate", str(run_dir))
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.startswith("step 12  loss ")

    (run_dir / "loss.png").unlink()
    plotted = craft("plot", str(run_dir))
    assert plotted.returncode == 0 and (run_dir / "loss.png").exists()

    again = craft(str(experiment), "--train.steps=3")  # a rerun gets a folder of its own, as Lightning's versions
    assert again.returncode == 0, again.stderr
    assert f"{str(run_dir)!r} holds an earlier run: this one is {str(run_dir.parent / 'tiny-2')!r}" in again.stdout
    assert 'name = "tiny-2"' in (run_dir.parent / "tiny-2" / "config.toml").read_text()
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("step_*.pt"))][-1] == "step_00000012.pt"  # untouched


@pytest.mark.slow
def test_resume_continues_the_step_count(experiment, tmp_path):
    half = craft(str(experiment), "--name=resumed", "--train.steps=6")
    assert half.returncode == 0, half.stderr
    # A resume continues the run as it was (6 steps): training on is asked for
    # with train.steps, which a resume may change.
    resumed = craft(str(experiment), "--name=resumed", "--resume", "--train.steps=12")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "(step 6)" in resumed.stdout
    runs = tmp_path / "runs"
    steps = [e["step"] for e in _events(runs / "resumed") if e["split"] == "train"]
    assert steps == [3, 6, 9, 12]


@pytest.mark.slow
def test_resume_from_the_same_config_is_exact(experiment, tmp_path):
    """Stopping at step 6 of a 12-step run and resuming gives the same parameters."""
    assert craft(str(experiment), "--name=a").returncode == 0
    assert craft(str(experiment), "--name=b").returncode == 0
    # simulate a stop after step 6: drop the later checkpoint and resume
    (tmp_path / "runs" / "b" / "checkpoints" / "step_00000012.pt").unlink()
    resumed = craft(str(experiment), "--name=b", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = _final_params(tmp_path / "runs" / "a"), _final_params(tmp_path / "runs" / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda events: [(e["step"], e["split"], e["metrics"]) for e in events]  # noqa: E731
    assert strip(_events(tmp_path / "runs" / "a")) == strip(_events(tmp_path / "runs" / "b"))


@pytest.mark.slow
def test_ctrl_c_finishes_the_step_saves_and_says_how_to_resume(experiment, tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "craft", str(experiment), "--train.steps=100000", "--train.log_every=1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    metrics = tmp_path / "runs" / "tiny" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text()) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    if not (metrics.exists() and metrics.read_text()):  # never send the signal before training started
        process.kill()
        pytest.fail(f"training never logged a step: {process.communicate()[1][-2000:]}")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted at step" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert "stopping: a checkpoint is saved after the current step" in stderr  # said when the signal came
    assert list((tmp_path / "runs" / "tiny" / "checkpoints").glob("step_*.pt"))
    assert (tmp_path / "runs" / "tiny" / "loss.png").stat().st_size > 0  # drawn on every exit


@pytest.mark.slow
def test_early_stopping_keeps_the_best_checkpoint(experiment, tmp_path):
    """With lr = 0 nothing improves, so patience 1 stops at the second evaluation."""
    result = craft(
        str(experiment), "--optim.lr=0.0", "--train.eval_every=3",
        "--train.early_stopping.metric=accuracy", "--train.early_stopping.mode=max",
        "--train.early_stopping.patience=1",
    )
    assert result.returncode == 0, result.stderr
    assert "early stopping at step 6" in result.stdout + result.stderr
    run_dir = tmp_path / "runs" / "tiny"
    assert [e["step"] for e in _events(run_dir) if e["split"] == "val"] == [3, 6]
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert int(best["state"]["step"]) == 3
    assert craft("evaluate", str(run_dir), "--checkpoint=best").stdout.startswith("step 3  loss ")


def test_help_prints_usage_and_does_not_train(experiment):
    result = craft(str(experiment), "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: craft train CONFIG.toml" in result.stdout
    assert not (experiment.parent / "runs").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--optim.lrr=0.1"], "optim.lrr: unknown key; did you mean 'lr'?"),
        (["--train.steps=0.5"], "train.steps: expected int"),
        (["--train.compile=1"], "train.compile: expected bool"),
        (["--model.kind=cnnn"], "model.kind: unknown model 'cnnn'; did you mean 'cnn'?"),
    ],
)
def test_config_errors_exit_2_with_one_line(experiment, args, message):
    result = craft(str(experiment), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (experiment.parent / "runs").exists()


def test_missing_and_broken_toml_files(tmp_path):
    missing = craft(str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "nope.toml" in missing.stderr and "Traceback" not in missing.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text('name = "x"\n[model\nkind = "cnn"\n')
    result = craft(str(broken))
    assert result.returncode == 2 and "line 2" in result.stderr and "Traceback" not in result.stderr
