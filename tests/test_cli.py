"""The command line and the example scripts, run as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_info_lists_the_registries():
    result = _run("-m", "craft", "info")
    assert result.returncode == 0, result.stderr
    assert "optimizers: adagrad, adam, adamw, lion, muon, rmsprop, sgd" in result.stdout
    assert "schedules: constant, cosine, linear_warmup, step, warmup_cosine" in result.stdout
    # every registry, with exactly its registered kinds, sorted: a kind left out or made up fails
    from craft.config import registries

    listed = dict(line.split(": ", 1) for line in result.stdout.splitlines() if line.split(":")[0] in registries())
    assert listed == {name: ", ".join(sorted(table)) for name, table in registries().items()}


@pytest.mark.parametrize("table", ["train", "train.sample", "train.early_stopping", "optim", "optim.groups"])
def test_info_lists_every_key_of_an_experiment_table(table):
    """--print_config leaves out the keys that are off (None): this is where a user finds them all."""
    import attrs

    from craft.commands import describe, info
    from craft.config.records import DEFAULT_LR, TABLES

    assert f"tables: {', '.join(TABLES)} (craft info NAME" in info()
    attrs.resolve_types(TABLES[table])  # as loading a config does: the types are still shown as written
    lines = describe(table).splitlines()
    keys = [line.split(":")[0].strip() for line in lines[1:]]
    assert keys == [f.name for f in attrs.fields(TABLES[table]) if f.name not in ("kind", "config")]
    if table == "train":
        assert "  ema_decay: float | None = None" in lines and "  sample: Sample | None = None" in lines
    if table == "optim":
        assert f"  lr: float = {DEFAULT_LR!r}" in lines  # what the config reader fills in, not "(required)"


@pytest.mark.slow
def test_quickstart_trains_and_reports_accuracy():
    result = _run("experiments/quickstart.py", "--steps", "30", "--batch", "32", "--no-compile")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    first, last = (float(line.split("loss ")[1].split()[0]) for line in (lines[0], lines[-2]))
    assert last < first, result.stdout
    assert lines[-1].startswith("held-out accuracy ") and lines[-1].endswith("(compilation included)")
    # 8 classes, 1024 held-out images: chance is 12.5% (sd 1.0%); 30 seeded steps reach ~18%
    accuracy = float(lines[-1].split()[2].rstrip("%")) / 100
    assert accuracy > 1 / 8 + 0.03, result.stdout
    assert " after 30 steps in " in lines[-1]


def test_the_command_line_is_parsed_strictly_before_fire_calls_the_command():
    from craft.cli import parse_command_line

    assert parse_command_line(["exp.toml", "--resume", "--name=2024", "--optim.lr", "3e-4"]) == (
        "train", ["exp.toml"], {"resume": True, "name": "2024", "optim.lr": "3e-4"}
    )
    assert parse_command_line(["generate", "runs/x", "--prompt=--x", "--seed", "3", "--cache=false", "--top_p=0.5"]) == (
        "generate", ["runs/x"], {"prompt": "--x", "seed": 3, "cache": False, "top_p": 0.5}
    )
    assert parse_command_line(["info", "gpt"]) == ("info", ["gpt"], {})
    assert parse_command_line(["prepare", "shapes", "d", "--num_train=4"]) == ("prepare", ["shapes", "d"], {"num_train": 4})
