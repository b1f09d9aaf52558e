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


def _classes(**shapes) -> int:
    from craft.data import ShapesConfig

    return len(ShapesConfig(**shapes).classes)


def _is_count_of(fraction: float, total: int) -> bool:
    return abs(fraction * total - round(fraction * total)) < 1e-9


def test_ensemble_reports_the_ensemble_and_every_member(capsys):
    results = _script("ensemble").main(["--tiny", "--members", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert len(results["members"]) == 3
    # --tiny validates on 16 images: every accuracy is a count of them, and the printed lines report these figures
    assert all(_is_count_of(a, 16) for a in [*results["members"], results["ensemble"]])
    assert lines[-2] == "member accuracy   " + " ".join(f"{a:.1%}" for a in results["members"])
    assert lines[-1] == f"ensemble accuracy {results['ensemble']:.1%} (best member {max(results['members']):.1%})"
    # three steps are too few to beat chance on 16 images, but every member's training loss is
    # already below the untrained cross-entropy log(classes)
    losses = [float(v) for v in lines[-3].split("member losses ")[1].split()]
    assert len(losses) == 3 and all(math.isfinite(v) and v < math.log(_classes()) for v in losses), lines


def test_lr_sweep_reports_a_loss_per_learning_rate(capsys):
    module = _script("lr_sweep")
    results = module.main(["--tiny"])
    assert list(results) == module.LEARNING_RATES
    assert all(math.isfinite(v) for v in results.values())
    best = min(results, key=results.get)
    assert [line for line in capsys.readouterr().out.splitlines() if "<- best" in line] == [
        f"lr {best:7.0e}  val loss {results[best]:.4f}  <- best"
    ]
    # every member starts from the same weights: the best rate lowered the val loss below what
    # the smallest rate (1e-4, three steps: all but untrained) reaches
    assert best != module.LEARNING_RATES[0] and results[best] < results[module.LEARNING_RATES[0]]


def test_dp_sgd_trains_with_and_without_noise(capsys):
    from craft.data import ShapesConfig

    module = _script("dp_sgd")
    results = module.main(["--tiny"])
    assert set(results) == {"private", "no noise"}
    assert all(_is_count_of(a, 16) for a in results.values())  # --tiny validates on 16 images
    assert capsys.readouterr().out.splitlines() == [f"{n:12s}  val accuracy {a:.1%}" for n, a in results.items()]
    # long enough to learn (40 steps, 128 held-out images), with and without noise it beats chance
    data = ShapesConfig(num_train=256, num_val=128, batch_size=64, image_size=16, channels=1)
    chance = 1 / len(data.classes)
    for noise in (0.0, 1.0):
        accuracy = module.train(data, 40, clip=1.0, noise=noise, compile=False)
        assert _is_count_of(accuracy, 128) and accuracy > chance + 0.05, (noise, accuracy)


def test_hypergradient_descent_raises_a_too_small_learning_rate_and_lowers_the_loss(capsys):
    results = _script("hypergradient").main(["--tiny"])
    # each round prints the rate its unrolled steps used beside the loss they reached: the first is the start
    rates = [float(line.split("lr ")[1].split()[0]) for line in capsys.readouterr().out.splitlines()]
    assert rates[0] == results["start_lr"], rates
    step = math.exp(0.05)  # the default meta learning rate on the log rate
    ratio = results["final_lr"] / rates[-1]  # the last round's update is the only one not printed
    assert ratio == pytest.approx(step, rel=1e-2) or ratio == pytest.approx(1 / step, rel=1e-2), rates
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
