"""What ``metrics.jsonl`` holds for training: the log window's mean, and the learning rate (issue 17)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from conftest import run_cli, shapes_folder, tiny_cnn

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CNN = tiny_cnn("""
[optim]
kind = "adamw"
lr = 1e-2
[schedule]
kind = "warmup_cosine"
warmup_steps = 2
[train]
steps = 8
eval_every = 8
eval_batches = 1
compile = false
""")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return shapes_folder(tmp_path_factory.mktemp("data"), num_train=32)


def train_events(tmp_path: Path, shapes: Path, log_every: int) -> list[dict]:
    path = tmp_path / "e.toml"
    path.write_text(CNN.format(out=tmp_path / f"runs{log_every}", data=shapes))
    result = run_cli(str(path), f"--train.log_every={log_every}", env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / f"runs{log_every}" / "cnn" / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["split"] == "train"]


def test_train_metrics_are_the_window_mean_and_the_learning_rate_is_logged(tmp_path, shapes):
    every_step, every_four = train_events(tmp_path, shapes, 1), train_events(tmp_path, shapes, 4)
    assert [e["step"] for e in every_four] == [4, 8]
    for event in every_four:
        window = [e["metrics"] for e in every_step if event["step"] - 4 < e["step"] <= event["step"]]
        for name in ("loss", "accuracy", "grad_norm"):
            mean = sum(m[name] for m in window) / 4
            assert event["metrics"][name] == pytest.approx(mean, rel=1e-5), name
    # warmup_cosine over 8 steps, warmup 2: step 1 used lr 0, step 2 used lr/2, step 3 the peak.
    lrs = [e["metrics"]["lr"] for e in every_step]
    assert lrs[:3] == pytest.approx([0.0, 5e-3, 1e-2])
    assert lrs[-1] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 5 / 6)))
