"""Model keys the data decides (issue 17): ``model.num_classes`` from the image folder, ``model.block_size``
from the data's sequence length, each recorded in the run's config.toml, each checked when given."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import TINY_TRAIN, run_cli, tiny_cnn, tiny_gpt
from craft import trained
from craft.config import ConfigError, load, loads
from craft.data.shapes import SHAPES
from craft.parts import build_parts, fit_to_data

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

def craft(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, env=ENV, timeout=300)


def cnn_toml(tmp_path: Path, shapes: Path, model: str = "") -> Path:
    path = tmp_path / "e.toml"
    path.write_text(tiny_cnn(model=model).format(out=tmp_path / "runs", data=shapes))
    return path


@pytest.mark.parametrize("model", ["", 'kind = "resnet"\nwidths = [4, 8]'])
def test_num_classes_comes_from_the_image_folder_and_every_later_command_reads_it(tmp_path, shapes, model):
    toml = cnn_toml(tmp_path, shapes)
    if model:  # the ResNet instead of the CNN
        toml.write_text(toml.read_text().replace('kind = "cnn"', model))
    result = craft(str(toml), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "cnn"
    assert load(run_dir / "config.toml").model.config.num_classes == len(SHAPES)
    evaluated = craft("evaluate", str(run_dir), cwd=tmp_path)
    assert evaluated.returncode == 0 and "accuracy" in evaluated.stdout, evaluated.stderr
    exported = craft("export", str(run_dir), str(tmp_path / "out"), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_classes"] == len(SHAPES)
    module = trained.load_model(run_dir)
    assert list(module.state_dict().values())[-1].shape == (len(SHAPES),)  # the classifier's bias


def test_a_sweep_takes_num_classes_from_the_data_for_every_member(tmp_path, shapes):
    result = craft(str(cnn_toml(tmp_path, shapes)), "--sweep.optim.lr=[1e-3,3e-3]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for member in ("000", "001"):
        member_dir = tmp_path / "runs" / "cnn" / "members" / member
        assert load(member_dir / "config.toml").model.config.num_classes == len(SHAPES)
        assert trained.load_run(member_dir).state.step == 4


def test_an_explicit_num_classes_that_differs_from_the_folders_is_an_error(tmp_path, shapes):
    result = craft(str(cnn_toml(tmp_path, shapes, model="num_classes = 3")), cwd=tmp_path)
    assert result.returncode == 1
    assert f"error: model.num_classes = 3 but the data has {len(SHAPES)} classes" in result.stderr
    assert "Traceback" not in result.stderr
    agrees = craft(str(cnn_toml(tmp_path, shapes, model=f"num_classes = {len(SHAPES)}")), cwd=tmp_path)
    assert agrees.returncode == 0, agrees.stderr


def test_block_size_set_once_in_data_is_the_models(tmp_path):
    text = "hello world, the quick brown fox.\n" * 20
    toml = tiny_gpt(tmp_path, TINY_TRAIN, batch_size=4, text=text)
    result = craft(str(toml), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "gpt"
    assert load(run_dir / "config.toml").model.config.block_size == 16
    generated = craft("generate", str(run_dir), "--prompt=he", "--max_new_tokens=20", cwd=tmp_path)
    assert generated.returncode == 0 and generated.stdout.startswith("he"), generated.stderr
    assert trained.load_model(run_dir).block_size == 16
    # A longer model context is allowed; a shorter one is refused before training.
    toml = tiny_gpt(tmp_path, TINY_TRAIN, batch_size=4, text=text, model="block_size = 32")
    assert craft(str(toml), "--name=longer", cwd=tmp_path).returncode == 0
    assert load(tmp_path / "runs" / "longer" / "config.toml").model.config.block_size == 32
    toml = tiny_gpt(tmp_path, TINY_TRAIN, batch_size=4, text=text, model="block_size = 8")
    short = craft(str(toml), "--name=short", cwd=tmp_path)
    assert short.returncode == 1
    assert "the data's sequences have 16 tokens but model.block_size = 8" in short.stderr


def test_a_key_the_data_cannot_give_must_be_set():
    exp = loads('name = "x"\n[model]\nkind = "cnn"\n[data]\nkind = "text"\n')
    with pytest.raises(ConfigError, match="model.num_classes: not set, and data.kind = 'text' gives no classes"):
        fit_to_data(exp, SimpleNamespace(vocab_size=5, block_size=8))
    assert fit_to_data(exp, SimpleNamespace(num_classes=4, classes=list("abcd"))).model.config.num_classes == 4
    with pytest.raises(ConfigError, match="model.num_classes: not set; a run takes it from the data"):
        build_parts(exp)  # built from Python before fit_to_data
