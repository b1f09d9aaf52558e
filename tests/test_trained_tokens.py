"""``craft evaluate`` on token folders: the figures are those of a plain loop over the split it says it read."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from craft import run, trained
from craft.config import load

VOCAB, T = 48, 8

TINY_GPT = """
name = "gpt"
seed = 0
out_dir = "{out}"
[model]
kind = "gpt"
n_layer = 1
n_head = 2
n_embd = 16
[data]
kind = "tokens"
path = "{data}"
block_size = 8
batch_size = 4
val_windows = 3
[task]
kind = "language_model"
[train]
steps = 2
eval_every = 2
log_every = 1
compile = false
"""


def token_folder(folder: Path, seed: int, train: int = 400, val: int = 101) -> Path:
    """A token folder as ``craft prepare tokens`` writes it (no tokenizer): ``train`` and ``val`` ids below VOCAB."""
    folder.mkdir(parents=True)
    ids = np.random.default_rng(seed).integers(0, VOCAB, train + val).astype(np.uint16)
    ids[:train].tofile(folder / "train.bin")
    ids[train:].tofile(folder / "val.bin")
    meta = {"dtype": "uint16", "vocab_size": VOCAB, "train_tokens": train, "val_tokens": val}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def token_run(tmp_path_factory) -> Path:
    """A 1-layer GPT trained 2 steps on random ids, evaluated on 3 evenly spaced windows of its 101 val tokens."""
    root = tmp_path_factory.mktemp("token-run")
    data = token_folder(root / "data", seed=0)
    (root / "gpt.toml").write_text(TINY_GPT.format(out=root / "runs", data=data))
    return run.train(load(root / "gpt.toml"), echo=lambda *a, **k: None)


def plain_loss(run_dir: Path, val: Path) -> float:
    """The mean next-token loss over every target of ``val`` (consecutive windows), with the plain module."""
    model = trained.load_model(run_dir)
    ids = torch.from_numpy(np.fromfile(val, dtype=np.uint16).astype(np.int64))
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, T):
            window = ids[start : start + T + 1]
            total += F.cross_entropy(model(window[None, :-1])[0], window[1:], reduction="sum").item()
    return total / (len(ids) - 1)


def test_whole_split_reads_every_val_token_not_the_runs_val_windows(token_run):
    """--whole_split on a run with data.val_windows read only those windows, with no word that it was a part."""
    said = []
    logged = trained.evaluate(token_run, say=said.append)
    assert len(said) == 1 and "3 evenly spaced windows" in said[0] and "--whole_split" in said[0]
    said.clear()
    whole = trained.evaluate(token_run, whole_split=True, say=said.append)
    assert said == ["val: all 100 targets of val.bin, in 13 windows of 8"]
    expected = plain_loss(token_run, token_run.parent.parent / "data" / "val.bin")
    assert whole["loss"] == pytest.approx(expected, rel=1e-5)
    assert whole["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert logged["loss"] != pytest.approx(whole["loss"], rel=1e-5)


def test_a_test_set_is_read_as_the_run_read_its_own_and_says_so_or_whole(token_run, tmp_path):
    """Other token files: val_windows as the run read its own val, said in a line; --whole_split: all of them."""
    test = token_folder(tmp_path / "test", seed=1, val=203)
    said = []
    trained.evaluate(token_run, data={"data.path": str(test)}, say=said.append)
    assert len(said) == 1 and "3 evenly spaced windows of 8 tokens (of 203 in val.bin)" in said[0]
    whole = trained.evaluate(token_run, data={"data.path": str(test)}, whole_split=True)
    assert whole["loss"] == pytest.approx(plain_loss(token_run, test / "val.bin"), rel=1e-5)


def test_a_split_within_val_windows_is_said_read_whole_by_the_run_and_by_evaluate(tmp_path):
    """A test split of fewer windows than the run's val_windows was read whole with no word (the figures alone
    printed): evaluate says what it read, in the line the run printed for its own val split."""
    data = token_folder(tmp_path / "data", seed=0, val=17)  # 16 targets: 2 windows of 8, fewer than val_windows = 3
    (tmp_path / "gpt.toml").write_text(TINY_GPT.format(out=tmp_path / "runs", data=data))
    printed = []
    run_dir = run.train(load(tmp_path / "gpt.toml"), echo=printed.append)
    line = "val: all 16 targets of val.bin, in 2 windows of 8 (data.val_windows = 3 covers them all)"
    assert line in printed
    said = []
    trained.evaluate(run_dir, data={"data.path": str(token_folder(tmp_path / "test", seed=1, val=17))}, say=said.append)
    assert said == [line]
