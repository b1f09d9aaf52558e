"""``craft train RUN --resume --checkpoint=NAME``: back to an earlier checkpoint, nothing deleted (craft.rollback)."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
import torch

from conftest import run_cli, tiny_cnn
from craft import commands, run
from craft.commandline import UsageError
from craft.config import EarlyStopping, loads
from craft.rundir import RunError, resume_target

CNN = tiny_cnn("""
[optim]
lr = 1e-2
[train]
steps = 6
eval_every = 2
log_every = 1
eval_batches = 1
checkpoint_every = 2
keep_checkpoints = 10
compile = false
""")


def quiet(*args) -> None:
    pass


def figures(log: str) -> list[tuple]:
    return [(e["step"], e["split"], e["metrics"]) for e in map(json.loads, log.splitlines())]


def params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state"]["params"]


@pytest.fixture
def trained(tmp_path, shapes) -> Path:
    """A finished 6-step run with checkpoints at steps 2, 4 and 6."""
    return run.train(loads(CNN.format(out=tmp_path / "runs", data=shapes)), echo=quiet)


def test_rolled_back_run_sets_the_newer_checkpoints_aside_and_retrains_them_bitwise(trained):
    ckpts, log = trained / "checkpoints", (trained / "metrics.jsonl").read_text()
    unbroken = params(ckpts / "step_00000006.pt")
    said = []
    run.train(resume_target(trained, {}), resume="step_00000002.pt", echo=said.append)
    assert f"rolled back to step 2: set aside step_00000004.pt.rolled-back, step_00000006.pt.rolled-back in {ckpts}; " \
           "the log so far copied to metrics.jsonl.rolled-back" in said
    assert (trained / "metrics.jsonl.rolled-back").read_text() == log  # nothing the first run logged is lost
    assert figures((trained / "metrics.jsonl").read_text()) == figures(log)  # the same steps, logged again
    torch.testing.assert_close(params(ckpts / "step_00000006.pt"), unbroken, atol=0, rtol=0)
    torch.testing.assert_close(params(ckpts / "step_00000006.pt.rolled-back"), unbroken, atol=0, rtol=0)
    # a second rollback keeps the first's files
    run.train(resume_target(trained, {}), resume="step_00000004.pt", echo=quiet)
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "step_00000002.pt", "step_00000004.pt", "step_00000004.pt.rolled-back", "step_00000006.pt",
        "step_00000006.pt.rolled-back", "step_00000006.pt.rolled-back.2",
    ]
    assert figures((trained / "metrics.jsonl.rolled-back.2").read_text()) == figures(log)


def test_a_checkpoint_of_another_run_is_refused_pointing_at_init_from(trained, tmp_path):
    other = tmp_path / "other.pt"
    other.write_bytes((trained / "checkpoints" / "step_00000002.pt").read_bytes())
    with pytest.raises(RunError, match=r"is not one of .*'s checkpoints, which --resume continues; to start a new run from "
                                       r"its weights, give --train.init_from=.*other.pt instead of --resume"):
        run.train(resume_target(trained, {}), resume=str(other), echo=quiet)
    assert len(list((trained / "checkpoints").glob("*.rolled-back"))) == 0


def test_the_cli_rolls_back_and_refuses_checkpoint_without_resume_or_for_a_sweep(trained, tmp_path):
    result = run_cli("train", str(trained), "--resume", "--checkpoint=step_00000004.pt", "--train.steps=8")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming" in result.stdout and "from step_00000004.pt (step 4)" in result.stdout, result.stdout
    assert (trained / "checkpoints" / "step_00000006.pt.rolled-back").is_file()
    assert (trained / "checkpoints" / "step_00000008.pt").is_file()
    with pytest.raises(UsageError, match="--checkpoint=step_00000002.pt picks the checkpoint --resume continues from: add --resume"):
        commands.train(str(trained), checkpoint="step_00000002.pt")
    sweep = tmp_path / "sweep.toml"
    sweep.write_text((trained / "config.toml").read_text() + '\n[sweep]\n"optim.lr" = [0.01, 0.02]\n')
    with pytest.raises(UsageError, match="a sweep resumes from its newest checkpoint only"):
        commands.train(str(sweep), resume=True, checkpoint="step_00000002.pt", name="sw")


def test_rolling_back_to_best_sets_aside_the_newer_steps_and_the_trackers_runs(tmp_path, shapes):
    """--checkpoint=best crashed (the step was read from the file's name) after renaming the newer ones."""
    exp = loads(CNN.format(out=tmp_path / "runs", data=shapes))
    rule = attrs.evolve(exp.train, early_stopping=EarlyStopping(metric="loss", mode="max", patience=1), steps=8)
    run_dir = run.train(attrs.evolve(exp, train=rule), echo=quiet)  # the loss falls: stops at step 4, best.pt at 2
    (run_dir / "trackers.json").write_text('{"mlflow": {"id": "abc", "sent": {"train": 4, "val": 4}}}')
    said = []
    again = attrs.evolve(resume_target(run_dir, {}), train=attrs.evolve(rule, early_stopping=attrs.evolve(rule.early_stopping, patience=5)))
    run.train(again, resume="best", echo=said.append)
    assert any(line.startswith("rolled back to step 2: set aside step_00000004.pt") and line.endswith(
        "W&B and MLflow log to new runs from here (trackers.json set aside; the old runs keep the steps rolled back)")
        for line in said), said
    assert (run_dir / "trackers.json.rolled-back").is_file()


def test_a_rollback_refused_for_other_settings_says_how_to_go_on_from_that_checkpoint(trained):
    changed = resume_target(trained, {"optim.lr": "1e-4"})
    with pytest.raises(RunError, match=r"optim.lr: saved 0.01, now 0.0001; .*; to go on from step_00000002.pt with other "
                                       r"settings, start a new run from its weights: craft train .*config.toml "
                                       r"--train.init_from=.*step_00000002.pt with them"):
        run.train(changed, resume="step_00000002.pt", echo=quiet)
    assert not list((trained / "checkpoints").glob("*.rolled-back"))  # refused before anything was renamed
