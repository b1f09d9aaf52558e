"""``[[optim.groups]]`` and ``train.ema_decay`` through the CLI: what a user writes in TOML."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import TINY_TRAIN, run_cli, tiny_cnn
from craft import checkpoint, trained
from craft.config import load
from craft.optim import EmaState, find_state

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

CNN = tiny_cnn("""
[optim]
kind = "adamw"
lr = 3e-3
clip_norm = 1.0
{groups}

""" + TINY_TRAIN + "{train}\n")


def craft(tmp_path: Path, shapes: Path, *args: str, groups: str = "", train: str = "") -> subprocess.CompletedProcess:
    path = tmp_path / "e.toml"
    path.write_text(CNN.format(out=tmp_path / "runs", data=shapes, groups=groups, train=train))
    return run_cli(str(path), *args, cwd=tmp_path, env=ENV, timeout=300)


def last_state(run_dir: Path):
    return trained.load_run(run_dir).state


def first_state(run_dir: Path):
    exp = load(run_dir / "config.toml")
    from craft.parts import build_parts
    from craft.step import init_state

    parts = build_parts(exp)
    return init_state(parts.model, parts.optimizer, seed=exp.seed)


FROZEN_CONV = """
[[optim.groups]]
match = "conv*"
freeze = true
[[optim.groups]]
match = "fc.*"
lr_scale = 10.0
weight_decay = 0.0
"""


def test_a_frozen_group_keeps_its_weights_and_no_optimizer_state(tmp_path, shapes):
    result = craft(tmp_path, shapes, groups=FROZEN_CONV)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "cnn"
    before, after = first_state(run_dir), last_state(run_dir)
    for name in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"):
        assert torch.equal(before.params[name], after.params[name]), name
    assert not torch.equal(before.params["fc.weight"], after.params["fc.weight"])
    fc = after.params["fc.weight"].numel() + after.params["fc.bias"].numel()
    assert f"{sum(p.numel() for p in after.params.values()):,} parameters, {fc:,} trainable" in result.stdout  # frozen: not
    # Adam's moments exist for the fc group only: 2 tensors x (weight, bias), not 2 x 6.
    moments = [leaf for leaf in torch.utils._pytree.tree_leaves(after.opt_state) if leaf.ndim > 0]
    assert sum(t.numel() for t in moments) == 2 * (after.params["fc.weight"].numel() + after.params["fc.bias"].numel())


def test_a_group_matching_nothing_is_one_config_line(tmp_path, shapes):
    result = craft(tmp_path, shapes, groups='[[optim.groups]]\nmatch = "trunk.*"\nfreeze = true\n')
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'trunk.*'" in lines[0] and "conv1.weight" in lines[0], result.stderr
    assert not (tmp_path / "runs" / "cnn").exists()


def test_a_group_key_typo_is_named(tmp_path, shapes):
    result = craft(tmp_path, shapes, groups='[[optim.groups]]\nmatch = "fc.*"\nlr_scael = 2.0\n')
    assert result.returncode == 2
    assert "optim.groups[0].lr_scael: unknown key; did you mean 'lr_scale'?" in result.stderr


def test_ema_weights_are_what_evaluation_reads(tmp_path, shapes):
    result = craft(tmp_path, shapes, train="ema_decay = 0.5")
    assert "val figures, best.pt and craft evaluate/generate/export use the weights' moving average (train.ema_decay = 0.5)" \
        in result.stdout.splitlines()  # nothing said so
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "cnn"
    state = last_state(run_dir)
    average = find_state(state.opt_state, EmaState).params
    assert not torch.equal(average["fc.weight"], state.params["fc.weight"])
    # craft evaluate reports the averaged weights' figures; the raw weights give others.
    exp, parts, _ = trained.load_run(run_dir)
    from craft.parts import build_data, evaluate_batches
    from craft.step import make_eval_step

    eval_step = make_eval_step(parts.model, parts.task.loss, inputs=parts.task.inputs, compile=False)
    raw = evaluate_batches(eval_step, state._replace(opt_state=()), build_data(exp, "val"), parts.device, parts.task)
    reported = trained.evaluate(run_dir)
    averaged = evaluate_batches(
        eval_step, state._replace(params=average, opt_state=()), build_data(exp, "val"), parts.device, parts.task
    )
    assert reported["loss"] == pytest.approx(averaged["loss"], rel=1e-6)
    assert reported["loss"] != pytest.approx(raw["loss"], rel=1e-6)


def test_ema_decay_cannot_change_on_resume(tmp_path, shapes):
    assert craft(tmp_path, shapes, train="ema_decay = 0.5").returncode == 0
    result = craft(tmp_path, shapes, "--resume", "--train.steps=6", "--train.ema_decay=0.9")
    assert result.returncode != 0
    assert "train.ema_decay" in result.stderr


def test_ema_decay_out_of_range_is_a_config_error(tmp_path, shapes):
    result = craft(tmp_path, shapes, train="ema_decay = 1.0")
    assert result.returncode == 2
    assert "train.ema_decay: must be in [0, 1), got 1.0" in result.stderr


def test_checkpoint_records_the_average(tmp_path, shapes):
    assert craft(tmp_path, shapes, train="ema_decay = 0.5").returncode == 0
    found = checkpoint.load_latest(tmp_path / "runs" / "cnn" / "checkpoints")
    assert found is not None and found[1]["config"]["train"]["ema_decay"] == 0.5


DECAY_PARAMS = {"conv1.weight": (4, 3, 3, 3), "conv1.bias": (4,), "norm.weight": (4,), "fc.weight": (7, 4), "fc.bias": (7,)}


def decayed_by(groups: list[dict], kind: str = "adamw") -> set[str]:
    """The parameters ``[optim]`` (weight_decay 0.1, lr 0.5) decays: with zero gradients, an update is the decay alone."""
    exp = load(ROOT / "experiments" / "custom_cnn.toml", {"optim": {"kind": kind, "lr": 0.5, "weight_decay": 0.1, "groups": groups}})
    from craft.parts import build_optimizer

    params = {name: torch.ones(shape) for name, shape in DECAY_PARAMS.items()}
    tx = build_optimizer(exp, 0.5, list(params))
    updates, _ = tx.update({k: torch.zeros_like(p) for k, p in params.items()}, tx.init(params), params)
    return {name for name, u in updates.items() if u.abs().max() > 0}


@pytest.mark.parametrize("kind", ["adamw", "sgd", "lion"])
def test_a_groups_weight_decay_decays_every_parameter_it_matches(kind):
    """``match = "*.bias"``, ``weight_decay = 0.05`` decayed no bias: the default rule (matrices only) still
    chose within the group, so the key did nothing. A torch parameter group decays all it holds."""
    assert decayed_by([], kind) == {"conv1.weight", "fc.weight"}  # the default rule: not biases nor norms
    assert decayed_by([{"match": "*.bias", "weight_decay": 0.05}], kind) == {"conv1.weight", "fc.weight", "conv1.bias", "fc.bias"}
    assert decayed_by([{"match": "fc.*", "weight_decay": 0.0}], kind) == {"conv1.weight"}
    assert decayed_by([{"match": "fc.*", "lr_scale": 2.0}], kind) == {"conv1.weight", "fc.weight"}  # no weight_decay: the rule


def test_clipping_sees_only_the_gradients_that_train():
    """A frozen group's gradients counted in clip_norm's global norm: a linear probe's head was clipped by
    the frozen trunk's gradient (its updates 100x too small here); torch clips what its optimizer holds."""
    exp = load(ROOT / "experiments" / "custom_cnn.toml", {"optim": {
        "kind": "sgd", "lr": 1.0, "clip_norm": 1.0, "groups": [{"match": "conv1.*", "freeze": True}]}})
    from craft.parts import build_optimizer

    params = {name: torch.ones(shape) for name, shape in DECAY_PARAMS.items()}
    grads = {k: torch.full_like(p, 100.0 if k.startswith("conv1.") else 0.01) for k, p in params.items()}
    tx = build_optimizer(exp, 1.0, list(params))
    updates, _ = tx.update(grads, tx.init(params), params)
    for name in params:
        want = torch.zeros_like(params[name]) if name.startswith("conv1.") else -grads[name]  # under the norm: unclipped
        torch.testing.assert_close(updates[name], want, msg=name)
