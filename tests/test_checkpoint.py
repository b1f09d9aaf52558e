"""Checkpoints: atomic, safely loaded, pruned, and matched to their model."""

from __future__ import annotations

import pytest
import torch
from conftest import MODELS

from craft import checkpoint
from craft.optim import adamw, sgd
from craft.step import init_state


def _state(model_name="bn_dropout", tx=None):
    torch.manual_seed(0)
    model = MODELS[model_name]()
    return init_state(model, tx or adamw(1e-3), seed=3)


def test_state_round_trips_through_a_file(tmp_path):
    state = _state()
    path = checkpoint.save(tmp_path / "ckpt" / "step_00000001.pt", {"state": checkpoint.state_to_dict(state)})
    loaded = checkpoint.load(path)
    restored = checkpoint.state_from_dict(loaded["state"], _state())
    torch.testing.assert_close(restored, state, atol=0, rtol=0)
    assert not list((tmp_path / "ckpt").glob(".*tmp")), "no temporary file is left behind"


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    path = checkpoint.save(tmp_path / "c.pt", {"state": checkpoint.state_to_dict(_state("mlp"))})
    with pytest.raises(checkpoint.CheckpointError, match="different model config"):
        checkpoint.state_from_dict(checkpoint.load(path)["state"], _state("bn_dropout"))


def test_a_checkpoint_of_another_optimizer_is_refused(tmp_path):
    path = checkpoint.save(tmp_path / "c.pt", {"state": checkpoint.state_to_dict(_state(tx=sgd(0.1)))})
    with pytest.raises(checkpoint.CheckpointError, match="optimizer config"):
        checkpoint.state_from_dict(checkpoint.load(path)["state"], _state(tx=adamw(1e-3)))


def test_truncated_and_foreign_files_are_clear_errors(tmp_path):
    good = checkpoint.save(tmp_path / "good.pt", {"state": checkpoint.state_to_dict(_state())})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(checkpoint.CheckpointError, match="truncated.pt: unreadable checkpoint"):
        checkpoint.load(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(1)}, foreign)
    with pytest.raises(checkpoint.CheckpointError, match="not a craft checkpoint"):
        checkpoint.load(foreign)


def test_load_latest_skips_a_corrupt_newest_file(tmp_path):
    for step in (1, 2, 3):
        checkpoint.save(checkpoint.step_path(tmp_path, step), {"n": step})
    checkpoint.step_path(tmp_path, 3).write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="step_00000003.pt"):
        path, payload = checkpoint.load_latest(tmp_path)
    assert path.name == "step_00000002.pt" and payload["n"] == 2


def test_prune_keeps_the_newest(tmp_path):
    for step in (5, 10, 15, 20):
        checkpoint.save(checkpoint.step_path(tmp_path, step), {})
    checkpoint.prune(tmp_path, keep=2)
    assert [p.name for p in checkpoint.step_files(tmp_path)] == ["step_00000015.pt", "step_00000020.pt"]


def test_files_never_unpickle_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "x": Evil()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="unreadable checkpoint"):
        checkpoint.load(path)


def test_checkpoints_are_readable_like_the_rest_of_the_run_folder(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = checkpoint.save(tmp_path / "step_00000001.pt", {"x": torch.zeros(1)})
        (tmp_path / "config.toml").write_text("x = 1\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / "config.toml").stat().st_mode) == 0o644


def _by_place(tree):
    return {torch.utils._pytree.keystr(path): leaf for path, leaf in torch.utils._pytree.tree_flatten_with_path(tree)[0]}


def _unfrozen_run():
    """Two same-shaped layers, adam + ema, one step, then 0.weight frozen and unfrozen: it comes back last."""
    from torch import nn

    from craft.freezing import freeze, unfreeze
    from craft.optim import adam, chain, ema
    from craft.step import make_train_step

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    tx = chain(adam(1e-2), ema(0.5))
    step = make_train_step(model, lambda o, b: ((o - b["target"]) ** 2).mean(), tx, compile=False)
    batch = {"input": torch.randn(8, 4), "target": torch.randn(8, 4)}
    state, _ = step(init_state(model, tx), batch)
    return model, tx, step, batch, unfreeze(freeze(state, tx, ["0.weight"]), tx, ["0.weight"])


def test_a_state_after_unfreeze_round_trips_every_moment_under_its_own_name(tmp_path):
    """Unfreeze lists 0.weight last; the leaves were put back by position and swapped the two layers'
    Adam moments and EMA averages."""
    model, tx, step, batch, state = _unfrozen_run()
    for _ in range(3):
        state, _ = step(state, batch)
    path = checkpoint.save(tmp_path / "c.pt", {"state": checkpoint.state_to_dict(state)})
    restored = checkpoint.state_from_dict(checkpoint.load(path)["state"], init_state(model, tx))
    assert list(restored.params) == ["0.weight", "1.weight"]  # the template's (the model's) order
    torch.testing.assert_close(_by_place(restored.opt_state), _by_place(state.opt_state), atol=0, rtol=0)
    torch.testing.assert_close(restored.params, state.params, atol=0, rtol=0)


def test_a_run_resumed_after_unfreeze_matches_the_unbroken_run(tmp_path):
    from craft.freezing import freeze, unfreeze

    model, tx, step, batch, _ = _unfrozen_run()
    torch.manual_seed(0)
    state, _ = step(init_state(model, tx), batch)
    state = unfreeze(freeze(state, tx, ["0.weight"]), tx, ["0.weight"], model=model)
    assert list(state.params) == ["0.weight", "1.weight"]
    state, _ = step(state, batch)
    saved = checkpoint.load(checkpoint.save(tmp_path / "c.pt", {"state": checkpoint.state_to_dict(state)}))["state"]
    resumed = checkpoint.state_from_dict(saved, init_state(model, tx))
    for _ in range(2):
        state, _ = step(state, batch)
        resumed, _ = step(resumed, batch)
    torch.testing.assert_close(resumed, state, atol=0, rtol=0)


def test_a_checkpoint_without_leaf_places_still_loads_by_position(tmp_path):
    """Checkpoints written before leaves had places hold a list of them, in the state's order."""
    state = _state()
    saved = checkpoint.state_to_dict(state)
    saved["opt_state"] = list(saved["opt_state"].values())
    torch.testing.assert_close(checkpoint.state_from_dict(saved, _state()), state, atol=0, rtol=0)
    saved["opt_state"] = saved["opt_state"][:-1]
    with pytest.raises(checkpoint.CheckpointError, match="optimizer config"):
        checkpoint.state_from_dict(saved, _state())


def test_checkpoints_set_aside_twice_are_both_kept(tmp_path):
    """The second set-aside of a step_8.pt renamed it over the first's step_8.pt.corrupt."""
    for step in (4, 8):
        checkpoint.step_path(tmp_path, step).write_bytes(b"first")
    assert [p.name for p in checkpoint.set_aside_after(tmp_path, 4)] == ["step_00000008.pt.corrupt"]
    checkpoint.step_path(tmp_path, 8).write_bytes(b"second")
    assert [p.name for p in checkpoint.set_aside_after(tmp_path, 4, ".rolled-back")] == ["step_00000008.pt.rolled-back"]
    checkpoint.step_path(tmp_path, 8).write_bytes(b"third")
    assert [p.name for p in checkpoint.set_aside_after(tmp_path, 4)] == ["step_00000008.pt.corrupt.2"]
    assert (tmp_path / "step_00000008.pt.corrupt").read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_00000004.pt", "step_00000008.pt.corrupt", "step_00000008.pt.corrupt.2", "step_00000008.pt.rolled-back"]
