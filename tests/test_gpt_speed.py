"""benchmarks/gpt_speed.py starts and compares like with like: its tiny preset on the CPU."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT


# Both sides compile through aot_eager, which traces and differentiates the graphs as inductor would see
# them but generates no code: inductor's cold compile of both would cost over a minute here, and craft's
# inductor-compiled GPT step is checked against eager in tests/models/test_language_models.py.
@pytest.mark.slow
def test_tiny_preset_runs_both_sides_from_the_same_weights():
    result = subprocess.run(
        [sys.executable, "benchmarks/gpt_speed.py", "--preset", "tiny", "--device", "cpu", "--steps", "4", "--chunk", "2",
         "--backend", "aot_eager"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    rows = {line.split("  ")[0]: line for line in out.splitlines() if line.startswith(("craft step", "(n) nanoGPT"))}
    assert set(rows) == {"craft step", "(n) nanoGPT: compile(model), fused AdamW"}, out
    assert "n/a" in rows["craft step"]  # no MFU on a CPU: never a made-up peak
    # Same weights, data and optimizer: the losses after the same steps agree.
    diff = float(re.search(r"val loss difference ([+-][0-9.]+)", out).group(1))
    assert abs(diff) < 1e-3, out
