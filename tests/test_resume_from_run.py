"""``--resume`` continues the run, not the file: the run's own config.toml, this command line's overrides on top (issue 17)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli, tiny_cnn

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CNN = tiny_cnn("""
[optim]
lr = 1e-2
[schedule]
kind = "cosine"
[train]
steps = 60
log_every = 1
eval_every = 1000
eval_batches = 1
""")


@pytest.fixture
def toml(tmp_path, shapes) -> Path:
    path = tmp_path / "e.toml"
    path.write_text(CNN.format(out=tmp_path / "runs", data=shapes))
    return path


def craft(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, env=ENV, timeout=300)


def lrs(run_dir: Path) -> dict[int, float]:
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {e["step"]: e["metrics"]["lr"] for e in events if e["split"] == "train"}


def test_resume_keeps_the_first_runs_overrides(toml, tmp_path):
    first = craft(str(toml), "--train.steps=4", "--train.compile=false", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = craft(str(toml), "--resume", "--train.steps=6", cwd=tmp_path)  # compile=false is the run's, kept
    assert again.returncode == 0, again.stderr
    assert "compiling the train step" not in again.stdout
    saved = (tmp_path / "runs" / "cnn" / "config.toml").read_text()
    assert "compile = false" in saved and "steps = 6" in saved


def test_the_run_folder_itself_resumes_after_a_move(toml, tmp_path):
    assert craft(str(toml), "--train.steps=3", "--train.compile=false", cwd=tmp_path).returncode == 0
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    (tmp_path / "runs" / "cnn").rename(moved)
    result = craft("train", str(moved), "--resume", "--train.steps=5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(lrs(moved)) == [1, 2, 3, 4, 5]
    assert not (tmp_path / "runs" / "cnn").exists()
    before = (moved / "metrics.jsonl").read_text()
    done = craft("train", str(moved), "--resume", cwd=tmp_path)  # finished: says so, trains nothing
    assert done.returncode == 0, done.stderr
    assert "already finished its 5 steps; to train it further, raise --train.steps" in done.stdout
    assert (moved / "metrics.jsonl").read_text() == before
    # Fewer steps than it has trained: it said "already finished its 3 steps" (it did 5) and wrote steps = 3 into
    # config.toml, which then no longer said what was run.
    config = (moved / "config.toml").read_text()
    fewer = craft("train", str(moved), "--resume", "--train.steps=3", cwd=tmp_path)
    assert fewer.returncode == 1 and fewer.stderr.splitlines()[0] == (
        f"error: cannot resume: {str(moved)!r} has trained 5 steps, more than train.steps = 3; to train further, "
        "raise --train.steps above 5 (an earlier checkpoint: --checkpoint=NAME)")
    assert (moved / "config.toml").read_text() == config and (moved / "metrics.jsonl").read_text() == before


def test_a_longer_resumed_run_keeps_its_schedule_unless_asked(toml, tmp_path):
    assert craft(str(toml), "--train.compile=false", cwd=tmp_path).returncode == 0
    run_dir = tmp_path / "runs" / "cnn"
    kept = craft(str(toml), "--resume", "--train.steps=70", cwd=tmp_path)
    assert kept.returncode == 0, kept.stderr
    assert "train.steps = 70 runs past schedule.total_steps = 60" in kept.stdout
    lr = lrs(run_dir)
    assert lr[60] < 1e-5 and lr[61] == lr[70] == pytest.approx(0.0, abs=1e-12)  # the schedule's end: no jump back up

    assert craft(str(toml), "--overwrite", "--train.compile=false", cwd=tmp_path).returncode == 0
    stretched = craft(str(toml), "--resume", "--train.steps=70", "--schedule.total_steps=70", cwd=tmp_path)
    assert stretched.returncode == 0, stretched.stderr
    assert "schedule.total_steps: 60 -> 70" in stretched.stdout
    assert lrs(run_dir)[61] > 1e-4  # the explicit, printed choice: the cosine is stretched


def test_resume_of_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    result = craft("train", str(tmp_path), "--resume", cwd=tmp_path)
    assert result.returncode == 1
    assert "nothing to resume" in result.stderr and "Traceback" not in result.stderr


def test_evaluate_reads_other_data_with_the_runs_model(toml, tmp_path, shapes):
    assert craft(str(toml), "--train.steps=3", "--train.compile=false", cwd=tmp_path).returncode == 0
    run_dir = tmp_path / "runs" / "cnn"
    own = craft("evaluate", str(run_dir), cwd=tmp_path)
    test_set = f"--data.val_path={shapes / 'train'}"
    other = craft("evaluate", str(run_dir), f"--data.path={shapes / 'train'}", test_set, cwd=tmp_path)
    assert own.returncode == 0 and other.returncode == 0, other.stderr
    assert own.stdout.startswith("step 3  loss ") and other.stdout.startswith("step 3  loss ")
    assert own.stdout != other.stdout  # 16 training images, not the 8 held out
    wrong = craft("evaluate", str(run_dir), "--optim.lr=1", cwd=tmp_path)
    assert wrong.returncode == 2 and "takes [data] options only" in wrong.stderr  # a command-line mistake


def test_evaluate_never_prepares_synthetic_data_where_a_test_set_is_missing(toml, tmp_path):
    """A run made with ``prepare = "shapes"`` filled a mistyped test-set path with 32,000 synthetic images
    and reported the model's figures on them."""
    trained = craft(str(toml), "--train.steps=1", "--train.compile=false", '--data.prepare="shapes"', cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]  # the shapes folder exists: reused as it is
    missing = tmp_path / "my_test_images"
    result = craft("evaluate", str(tmp_path / "runs" / "cnn"), f"--data.path={missing}", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"error: data.path {missing} does not exist; point it at a folder of images" in result.stderr
    assert not missing.exists()


def test_a_resume_that_changes_the_early_stopping_metric_takes_its_direction(tmp_path, shapes):
    """config.toml records the resolved mode ("min" for loss): --train.early_stopping.metric=accuracy alone then
    minimised accuracy on resume, the very fault a mode that follows the metric had just fixed."""
    from craft.config import dumps, loads
    from craft.rundir import resume_target

    exp = loads(CNN.format(out=tmp_path / "runs", data=shapes) + "[train.early_stopping]\nmetric = \"loss\"\n")
    run_dir = tmp_path / "runs" / "cnn"
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(dumps(exp))
    assert 'mode = "min"' in (run_dir / "config.toml").read_text()
    assert resume_target(run_dir, {"train.early_stopping.metric": "accuracy"}).train.early_stopping.mode == "max"
    given = {"train.early_stopping.metric": "accuracy", "train.early_stopping.mode": "min"}
    assert resume_target(run_dir, given).train.early_stopping.mode == "min"  # said: kept
    assert resume_target(run_dir, {}).train.early_stopping.mode == "min"
