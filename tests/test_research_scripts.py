"""The research scripts in experiments/ run, in their tiny setting."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ensemble_reports_the_ensemble_and_every_member(capsys):
    results = _script("ensemble").main(["--tiny", "--members", "3"])
    assert len(results["members"]) == 3
    assert all(0 <= a <= 1 for a in [*results["members"], results["ensemble"]])
    assert "ensemble accuracy" in capsys.readouterr().out


def test_lr_sweep_reports_a_loss_per_learning_rate(capsys):
    module = _script("lr_sweep")
    results = module.main(["--tiny"])
    assert list(results) == module.LEARNING_RATES
    assert all(math.isfinite(v) for v in results.values())
    assert "<- best" in capsys.readouterr().out


def test_dp_sgd_trains_with_and_without_noise():
    results = _script("dp_sgd").main(["--tiny"])
    assert set(results) == {"private", "no noise"}
    assert all(0 <= a <= 1 for a in results.values())


@pytest.mark.parametrize("name", ["ensemble", "lr_sweep", "dp_sgd"])
def test_scripts_are_short_enough_to_read_in_a_minute(name):
    assert len((EXPERIMENTS / f"{name}.py").read_text().splitlines()) <= 100
