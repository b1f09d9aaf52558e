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
