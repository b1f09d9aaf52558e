"""The CLI tests' forked commands (``tests/forked_cli.py``) behave as ``python -m craft`` started afresh."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import forked_cli

ROOT = Path(__file__).resolve().parent.parent


def fresh(args: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "craft", *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


@pytest.mark.parametrize("args", [["info", "adamw"], ["train", "missing.toml"], ["plot"], ["--resume=1"]])
def test_a_forked_command_prints_and_exits_as_a_fresh_interpreter_does(args):
    forked, started = forked_cli.run(args), fresh(args)
    assert (forked.returncode, forked.stdout, forked.stderr) == (started.returncode, started.stdout, started.stderr)


def test_the_command_gets_its_working_directory_environment_and_modules_there(tmp_path):
    # An experiment's `imports` finds a user's module in the working directory, which reads the environment.
    (tmp_path / "my_plugin.py").write_text("import os\nprint('plugin saw', os.environ['CRAFT_TEST_MARK'])\n")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "exp.toml").write_text('name = "x"\nimports = ["my_plugin"]\n[model]\nkind = "cnn"\n[data]\nkind = "shapes"\n')
    env = {**os.environ, "CRAFT_TEST_MARK": "42"}
    forked, started = (run(["configs/exp.toml", "--print_config"], cwd=tmp_path, env=env) for run in (forked_cli.run, fresh))
    assert forked.returncode == 0 and "plugin saw 42" in forked.stdout, forked.stderr
    assert (forked.returncode, forked.stdout, forked.stderr) == (started.returncode, started.stdout, started.stderr)
    assert "CRAFT_TEST_MARK" not in os.environ  # the request's environment is the child's alone


def test_the_command_runs_this_checkouts_craft(tmp_path):
    """As the tests' own process and `python -m craft` from the root do, not whichever copy is installed."""
    (tmp_path / "where.py").write_text("import craft\nprint('craft from', craft.__file__)\n")
    (tmp_path / "exp.toml").write_text('name = "x"\nimports = ["where"]\n[model]\nkind = "cnn"\n[data]\nkind = "shapes"\n')
    forked = forked_cli.run(["exp.toml", "--print_config"], cwd=tmp_path)
    assert f"craft from {ROOT / 'craft' / '__init__.py'}" in forked.stdout, forked.stdout + forked.stderr


def test_a_command_past_its_timeout_is_killed_as_subprocess_run_does():
    with pytest.raises(subprocess.TimeoutExpired):
        forked_cli.run(["generate", "x"], timeout=0.001)
    assert forked_cli.run(["info"]).returncode == 0  # the server goes on



def test_a_started_command_is_killed_by_the_signal_and_the_server_goes_on(tmp_path):
    (tmp_path / "exp.toml").write_text('name = "x"\n[model]\nkind = "cnn"\n[data]\nkind = "shapes"\nnum_train = 64\nbatch_size = 8\n')
    started = forked_cli.start(["exp.toml", "--train.steps=100000", "--train.compile=false"], cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not (tmp_path / "runs" / "x" / "config.toml").exists() and started.poll() is None:  # training
        assert time.monotonic() < deadline, started.err.read_text()
        time.sleep(0.05)
    assert started.poll() is None, started.err.read_text()
    started.kill()
    assert started.wait(timeout=60) == -signal.SIGKILL
    assert forked_cli.run(["info"]).returncode == 0
