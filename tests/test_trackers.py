"""``train.loggers``: TensorBoard, W&B (offline) and MLflow (a local store) get what ``metrics.jsonl`` gets (issue 17)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli, tiny_cnn
from craft import config, trackers

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
ENV.pop("WANDB_MODE", None)
ENV.pop("MLFLOW_TRACKING_URI", None)
CNN = tiny_cnn("""
[train]
steps = 4
log_every = 2
eval_every = 4
eval_batches = 1
compile = false
loggers = {loggers}
""")


def train(tmp_path: Path, shapes: Path, loggers: list[str], hide: str | None = None) -> subprocess.CompletedProcess:
    """``craft`` on a tiny CNN run with ``loggers``; with ``hide``, Python code that runs the CLI instead."""
    path = tmp_path / "e.toml"
    path.write_text(CNN.format(out=tmp_path / "runs", data=shapes, loggers=json.dumps(loggers)))
    if hide is None:
        return run_cli(str(path), env=ENV, timeout=300)
    return subprocess.run([sys.executable, "-c", hide, str(path)], capture_output=True, text=True, timeout=300, env=ENV)


def test_the_config_and_the_tracker_table_agree():
    assert set(config.TRACKERS) == set(trackers.TRACKERS)


def test_an_unknown_logger_is_a_config_error(tmp_path, shapes):
    result = train(tmp_path, shapes, ["wandb", "comet"])
    assert result.returncode == 2
    assert "train.loggers: unknown 'comet'; choose from 'tensorboard', 'wandb', 'mlflow'" in result.stderr


def test_a_missing_tracker_package_names_this_projects_extra(tmp_path, shapes):
    hide = "import sys; sys.modules['wandb'] = None; from craft.cli import main; sys.argv[0] = 'craft'; main()"
    result = train(tmp_path, shapes, ["wandb"], hide)
    assert result.returncode == 2, result.stderr
    (line,) = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert "'wandb' needs the wandb package" in line and 'python -m pip install -e ".[wandb]"' in line
    assert not (tmp_path / "runs").exists()


def test_mlflow_gets_every_event_in_a_local_store(tmp_path, shapes):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    result = train(tmp_path, shapes, ["mlflow"])
    assert result.returncode == 0, result.stderr
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(tmp_path / "runs" / "cnn" / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("craft").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [2, 4]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/accuracy")] == [4]
    assert run.data.params["optim.kind"] == "adamw" and run.info.status == "FINISHED"


def test_wandb_writes_an_offline_run(tmp_path, shapes):
    pytest.importorskip("wandb")
    result = train(tmp_path, shapes, ["wandb"])
    assert result.returncode == 0, result.stderr
    (run_file,) = (tmp_path / "runs" / "cnn" / "wandb").glob("offline-run-*/*.wandb")
    # The run file is wandb's binary log (its reader is not public): the logged keys and config are in it.
    data = run_file.read_bytes()
    assert b"train/loss" in data and b"val/accuracy" in data and b"optim.kind" in data


def test_a_resumed_run_shows_each_step_once_in_tensorboard(tmp_path, shapes):
    """metrics.jsonl drops what was logged after the resumed checkpoint; TensorBoard used to keep it beside the new values."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from craft import run

    text = CNN.format(out=tmp_path / "runs", data=shapes, loggers='["tensorboard"]')
    exp = config.loads(text, {"train.checkpoint_every": 2})
    run_dir = run.train(exp, echo=lambda *a: None)
    (run_dir / "checkpoints" / "step_00000004.pt").unlink()  # killed after logging step 4, before its checkpoint
    run.train(exp, resume=True, echo=lambda *a: None)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [s.step for s in events.Scalars("train/loss")] == [2, 4]
    assert [s.step for s in events.Scalars("val/accuracy")] == [4]


def test_a_tracker_is_sent_each_step_of_a_split_once_and_remembers_it(tmp_path):
    """A resume repeats the steps after its checkpoint: the tracker run, continued, already has them."""
    got = []
    fake = trackers.Tracker(lambda step, split, metrics: got.append((step, split)), lambda: None)
    save = lambda sent: lambda: trackers.write_state(tmp_path, "mlflow", {"id": "abc", "sent": sent})  # noqa: E731
    sent = {}
    first = trackers.sent_once(fake, save(sent), sent)
    for step, split in [(2, "train"), (4, "train"), (4, "val")]:
        first.log(step, split, {"loss": 1.0})
    saved = trackers.read_state(tmp_path)["mlflow"]
    assert saved == {"id": "abc", "sent": {"train": 4, "val": 4}}
    resumed = trackers.sent_once(fake, save(saved["sent"]), saved["sent"])
    for step, split in [(3, "train"), (4, "train"), (4, "val"), (5, "train"), (6, "val")]:
        resumed.log(step, split, {"loss": 1.0})
    assert got == [(2, "train"), (4, "train"), (4, "val"), (5, "train"), (6, "val")]


def _killed_after_step_4_then_resumed(tmp_path, shapes, loggers: str, steps: int = 6):
    """A run logged step 4 and was killed before its checkpoint; resumed from step 2, to ``steps``."""
    from craft import run

    text = CNN.format(out=tmp_path / "runs", data=shapes, loggers=loggers)
    exp = config.loads(text, {"train.checkpoint_every": 2})
    run_dir = run.train(exp, echo=lambda *a: None)
    (run_dir / "checkpoints" / "step_00000004.pt").unlink()
    run.train(config.loads(text, {"train.checkpoint_every": 2, "train.steps": steps}), resume=True, echo=lambda *a: None)
    return run_dir


def test_a_resumed_run_continues_its_mlflow_and_wandb_runs_with_each_step_once(tmp_path, shapes, monkeypatch):
    """The resumed run used to open a second MLflow run and a second W&B run: two half-runs on the dashboard."""
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = _killed_after_step_4_then_resumed(tmp_path, shapes, '["mlflow", "wandb"]')
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    (mlrun,) = client.search_runs([client.get_experiment_by_name("craft").experiment_id])  # one run, not two halves
    run_id = mlrun.info.run_id
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [2, 4, 6]
    assert [m.step for m in client.get_metric_history(run_id, "val/accuracy")] == [4, 6]  # the last step is evaluated
    assert mlrun.info.status == "FINISHED" and mlrun.data.params["train.steps"] == "4"
    assert mlrun.data.tags["resumed.train.steps"] == "6"  # a parameter is set once; the resume's value is a tag
    saved = json.loads((run_dir / "trackers.json").read_text())
    assert saved["mlflow"] == {"id": run_id, "sent": {"train": 6, "val": 6}}
    assert saved["wandb"]["sent"] == {"train": 6, "val": 6}
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))  # offline: one folder per process, one run id
    assert len(folders) == 2 and all(f.name.endswith(f"-{saved['wandb']['id']}") for f in folders)


def test_the_docs_say_how_mlflow_3_opens_the_file_store():
    """`mlflow ui --backend-store-uri RUN_DIR/mlruns`, as documented, fails with mlflow >= 3 unless the file store is
    allowed: where the docs show how to open the store, they say so."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for text in (trackers.__doc__, " ".join(readme.split())):
        assert "MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri" in text
