"""benchmarks/vision_speed.py starts on the CPU and its contenders train alike from the same weights."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
@pytest.mark.parametrize("check", [2, 1])  # 1: the loss of the first call, before any update (it raised NameError)
def test_vision_speed_runs_and_craft_matches_the_imperative_loss(check):
    args = ["--eager_only", "--rounds", "1", "--steps", "1", "--warmup", "0", "--check_steps", str(check), "--batch", "4"]
    result = subprocess.run(
        [sys.executable, "benchmarks/vision_speed.py", *args], capture_output=True, text=True, timeout=600,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    losses = [float(x) for x in re.findall(rf"loss of step {check} (\S+)", result.stdout)]
    assert len(losses) == 2 and abs(losses[0] - losses[1]) < 1e-3 * abs(losses[1])
    assert "images/s" in result.stdout and "vs (b) imperative" in result.stdout and "vs best (b)" in result.stdout


def test_vision_speed_has_the_three_imperative_references(monkeypatch):
    """(b) eager, (c) compile(model) and (d) the whole step compiled, beside craft's two steps."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import vision_speed

    assert list(vision_speed.contenders("fp32")) == [
        "craft step", "craft step, donate=True", "(b) imperative, eager", "(c) imperative, compile(model)",
        "(d) imperative, compile(step)",
    ]
