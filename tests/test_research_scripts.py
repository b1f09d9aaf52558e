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


def test_hypergradient_descent_raises_a_too_small_learning_rate_and_lowers_the_loss():
    results = _script("hypergradient").main(["--tiny"])
    assert results["final_lr"] > results["start_lr"]
    assert results["final_loss"] < results["start_loss"]


def test_maml_adaptation_lowers_the_held_out_loss():
    results = _script("maml").main(["--tiny"])
    assert results["after"] < results["before"]


def test_sharpness_power_iteration_finds_the_hessians_top_eigenvalue():
    import torch
    from torch import nn

    from craft.step import make_loss

    module = _script("sharpness")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    batch = {"input": torch.randn(16, 3, dtype=torch.float64), "target": torch.randn(16, 2, dtype=torch.float64)}
    loss = make_loss(model, lambda out, b: ((out - b["target"]) ** 2).mean())
    params = {k: p.detach() for k, p in model.named_parameters()}
    names, shapes = list(params), [p.shape for p in params.values()]

    def flat_loss(flat):
        parts = dict(zip(names, (t.view(s) for t, s in zip(flat.split([s.numel() for s in shapes]), shapes))))
        return loss(parts, {}, batch)[0]

    hessian = torch.autograd.functional.hessian(flat_loss, torch.cat([p.flatten() for p in params.values()]))
    eigenvalues = torch.linalg.eigvalsh(hessian)
    expected = eigenvalues[eigenvalues.abs().argmax()]
    found = module.top_eigenvalue(lambda p: loss(p, {}, batch)[0], params, iterations=200)
    torch.testing.assert_close(found, expected, rtol=1e-6, atol=0)
    history = module.main(["--tiny"])
    assert history and all(math.isfinite(v) and v > 0 for _, v in history)


@pytest.mark.parametrize("name", ["ensemble", "lr_sweep", "dp_sgd"])
def test_scripts_are_short_enough_to_read_in_a_minute(name):
    assert len((EXPERIMENTS / f"{name}.py").read_text().splitlines()) <= 100


@pytest.mark.parametrize("name", ["hypergradient", "maml", "sharpness"])
def test_optimizer_research_scripts_stay_under_80_lines(name):
    assert len((EXPERIMENTS / f"{name}.py").read_text().splitlines()) <= 80
