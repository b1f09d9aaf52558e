"""Every shipped experiment runs with only ``--train.steps=N`` changed, for any N >= 1 (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import run_cli
from craft.config import build, load
from craft.optim import SCHEDULES
from craft.parts import fit_schedule

EXPERIMENTS = sorted((Path(__file__).resolve().parent.parent / "experiments").glob("*.toml"))


@pytest.mark.parametrize("steps", [1, 2, 30, 99, 100, 101])
@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_the_schedule_fits_a_shortened_run(path, steps):
    exp, notes = fit_schedule(load(path, {"train.steps": steps}))
    schedule = build(exp.schedule, exp.optim.lr, total_steps=exp.train.steps)
    lrs = torch.stack([schedule(torch.tensor(s)) for s in range(steps + 1)])
    assert torch.isfinite(lrs).all() and (lrs >= 0).all() and (lrs <= exp.optim.lr * (1 + 1e-12)).all()
    warmup = getattr(load(path).schedule.config, "warmup_steps", None)
    assert bool(notes) == (warmup is not None and warmup >= steps)
    assert all(len(note.splitlines()) == 1 and "shortened" in note for note in notes)


def test_a_warmup_shorter_than_the_run_is_kept():
    exp = load(EXPERIMENTS[0].parent / "gpt_char.toml", {"train.steps": 500})
    fitted, notes = fit_schedule(exp)
    assert notes == [] and fitted.schedule.config.warmup_steps == exp.schedule.config.warmup_steps == 100
    assert fitted.schedule.config.total_steps == 500  # the schedule's length, recorded


def test_a_run_past_its_schedule_says_the_learning_rate_it_keeps():
    """A resume with a higher train.steps keeps the schedule's end: the note says when that is 0."""
    path = EXPERIMENTS[0].parent / "custom_cnn.toml"
    _, (note,) = fit_schedule(load(path, {"train.steps": 4000, "schedule.total_steps": 3000}))
    assert note == (
        "train.steps = 4000 runs past schedule.total_steps = 3000: the steps after 3000 keep the schedule's last "
        "learning rate, 1e-05 (--schedule.total_steps=4000 stretches the schedule instead)"
    )
    _, (note,) = fit_schedule(load(path, {"train.steps": 4000, "schedule.total_steps": 3000, "schedule.min_lr": 0.0}))
    assert "keep the schedule's last learning rate, 0 (nothing is learned in those steps) (--schedule" in note
    # A sweep's members each keep their own: the note gave the base optim.lr's, which no member trains with.
    swept = load(path, {"train.steps": 4000, "schedule.total_steps": 3000, "schedule.min_lr": 0.0, "sweep.optim.lr": [1e-3, 3e-3]})
    _, (note,) = fit_schedule(swept)
    assert "keep the schedule's last learning rate, 0, 0 (its members') (nothing is learned in those steps)" in note
    swept = load(path, {"train.steps": 4000, "schedule.total_steps": 3000, "schedule.kind": "constant", "sweep.optim.lr": [1e-3, 3e-3]})
    _, (note,) = fit_schedule(swept)
    assert "the steps after 3000 keep the schedule's last learning rate, 0.001, 0.003 (its members') (--schedule" in note


def _goes_on(lr: float, *, total_steps: int | None = None):
    """A schedule of a user's that decays on past total_steps."""
    return lambda step: torch.as_tensor(lr, dtype=torch.float64) / (1 + torch.as_tensor(step))


def test_a_run_past_a_schedule_that_goes_on_says_so():
    """The note said 'keep the schedule's last learning rate' of a schedule that went on decaying."""
    SCHEDULES.register("goes_on")(_goes_on)
    try:
        path = EXPERIMENTS[0].parent / "custom_cnn.toml"
        exp = load(path, {"train.steps": 40, "schedule": {"kind": "goes_on", "total_steps": 10}, "optim.lr": 1.0})
        _, (note,) = fit_schedule(exp)
    finally:
        SCHEDULES._entries.pop("goes_on")
    assert note == (
        "train.steps = 40 runs past schedule.total_steps = 10: the steps after 10 get 0.0909 to 0.025: this "
        "schedule goes on past its total_steps (--schedule.total_steps=40 stretches the schedule instead)"
    )


def test_a_shortened_gpt_run_trains_from_the_cli(tmp_path):
    result = run_cli(str(EXPERIMENTS[0].parent / "gpt_char.toml"), "--train.steps=3", "--train.compile=false",
                     "--train.eval_batches=1", f"--out_dir={tmp_path}", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "schedule.warmup_steps = 100 is not shorter than the run (3 steps); shortened to 0" in result.stdout + result.stderr
    assert (tmp_path / "gpt_char" / "checkpoints").is_dir()
