"""``craft export`` and ``craft.load_model``: a run's weights leave craft as safetensors any module loads (issue 17)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli

import craft
from craft import run, trained
from craft.config import ConfigError, load
from craft.data.text import CharTokenizer
from craft.models import MODELS
from craft.rundir import RunError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    exp = load(ROOT / "experiments" / "gpt_char.toml", {
        "out_dir": str(out), "train.steps": 3, "train.compile": False, "train.eval_batches": 1,
        "model.n_layer": 1, "model.n_embd": 16, "model.n_head": 2, "train.sample": {"every": 1000},
    })
    return run.train(exp, echo=lambda *a, **k: None)


def test_exported_weights_load_strictly_into_the_plain_module(gpt_run, tmp_path):
    out = trained.export(gpt_run, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    kind = config.pop("kind")
    plain = MODELS[kind](**config).build()
    weights = load_file(str(out / "model.safetensors"))
    assert "lm_head.weight" in weights  # tied to the embedding, exported under both names
    plain.load_state_dict(weights, strict=True)
    loaded = craft.load_model(gpt_run)
    idx = torch.randint(0, config["vocab_size"], (2, 8))
    torch.testing.assert_close(plain.eval()(idx), loaded(idx), rtol=0, atol=0)
    assert (out / "tokenizer.json").read_text() == (gpt_run / "tokenizer.json").read_text()
    assert not (out / "preprocessing.json").exists()  # text: the tokenizer is its preprocessing


def test_an_export_generates_as_its_run_and_is_named_as_an_export(gpt_run, tmp_path):
    """The exported weights (tied head under both names) sample the run's tokens with craft's generate; given
    to craft generate, the export folder is named as one, not only 'not a run folder'."""
    from craft.generate import generate

    out = trained.export(gpt_run, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    plain = MODELS[config.pop("kind")](**config).build()
    weights = load_file(str(out / "model.safetensors"))
    exp, parts, state = trained.load_run(gpt_run)
    expected = list(generate(parts.model, {**state.params, **state.buffers}, [1, 2], max_new_tokens=20, seed=3))
    assert list(generate(plain, weights, [1, 2], max_new_tokens=20, seed=3)) == expected
    with pytest.raises(RunError, match="is not a run folder .* but an export .*give the run folder it came from"):
        trained.load_run(out)


def test_load_model_holds_the_checkpoint_weights(gpt_run):
    model = craft.load_model(gpt_run)
    state = trained.load_run(gpt_run).state
    assert not model.training
    for name, p in model.named_parameters():
        assert torch.equal(p, state.params[name])


def test_export_refuses_to_overwrite(gpt_run, tmp_path):
    trained.export(gpt_run, tmp_path / "e")
    with pytest.raises(RunError, match=r"e already holds an export \(model.safetensors\); export to a new or empty folder"):
        trained.export(gpt_run, tmp_path / "e")


def test_export_refuses_any_folder_that_holds_something(gpt_run, tmp_path):
    """Only OUT/model.safetensors was checked: an export into another run's folder replaced its tokenizer.json
    (and a classifier's classes.json), one into a dataset folder added files among the data."""
    other = tmp_path / "other_run"
    other.mkdir()
    (other / "tokenizer.json").write_text("theirs")
    with pytest.raises(RunError, match=r"other_run is not empty; export to a new or empty folder"):
        trained.export(gpt_run, other)
    assert [p.name for p in other.iterdir()] == ["tokenizer.json"]
    assert (other / "tokenizer.json").read_text() == "theirs"
    (tmp_path / "empty").mkdir()
    assert (trained.export(gpt_run, tmp_path / "empty") / "model.safetensors").exists()  # an empty folder is fine


def test_export_to_a_file_says_out_must_be_a_folder(gpt_run, tmp_path):
    """It printed 'error: [Errno 17] File exists: ...'."""
    (tmp_path / "README.md").write_text("notes")
    result = run_cli("export", str(gpt_run), str(tmp_path / "README.md"))
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == f"error: {tmp_path / 'README.md'} is a file; OUT must be a folder (new or empty) to export into"
    assert (tmp_path / "README.md").read_text() == "notes"


def test_export_help_says_what_out_gets():
    """It named only tokenizer.json: an image run's export also holds classes.json and preprocessing.json."""
    result = run_cli("export", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for said in ("new or empty folder", "tokenizer.json", "classes.json", "preprocessing.json", "model.safetensors"):
        assert said in text, said


def test_best_without_early_stopping_says_what_exists(gpt_run):
    with pytest.raises(RunError, match=r"no file at '.*best.pt' \(.*early_stopping\); '.*checkpoints' has: step_00000003.pt"):
        trained.load_run(gpt_run, "best")


def test_craft_export_and_print_config_from_the_cli(gpt_run, tmp_path):
    exported = run_cli("export", str(gpt_run), str(tmp_path / "out"))
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "out" / "model.safetensors").stat().st_size > 0
    printed = run_cli(str(ROOT / "experiments" / "gpt_char.toml"), "--print_config", "--optim.lr=3e-4")
    assert printed.returncode == 0, printed.stderr
    assert "lr = 0.0003" in printed.stdout and "[schedule]" in printed.stdout
    assert not (Path.cwd() / "runs" / "gpt_char").exists() or "run folder" not in printed.stdout


def test_evaluate_on_text_of_fewer_characters_reads_them_with_the_run_tokenizer(gpt_run, tmp_path):
    """A test file holds only some of the run's characters, so its own vocabulary numbers them otherwise
    ('a' is 1 there): evaluate scores it with the run's ids, as the same text read with the run's vocabulary."""
    text = "abc\n" * 250  # 1,000 characters; with val_fraction 0.5 the last 500 are val
    alone = tmp_path / "alone.txt"
    alone.write_text(text)
    run_chars = CharTokenizer.load(gpt_run / "tokenizer.json").chars
    # every run character first, so this file's vocabulary is the run's; val_fraction 0.25 of 2,000 makes
    # its val split the same 500 characters (and the same last train character before them)
    padding = ("".join(run_chars) * 1000)[:1000]
    whole = tmp_path / "whole.txt"
    whole.write_text(padding + text)
    expected = trained.evaluate(gpt_run, data={"data.path": str(whole), "data.val_fraction": "0.25"})
    got = trained.evaluate(gpt_run, data={"data.path": str(alone), "data.val_fraction": "0.5"})
    assert got == pytest.approx(expected, rel=1e-6)


def test_evaluate_on_text_with_characters_the_run_lacks_is_refused(gpt_run, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("abc\u2603\n" * 10)
    with pytest.raises(RunError, match="1 token.* the run's tokenizer.json lacks: '\u2603'"):
        trained.evaluate(gpt_run, data={"data.path": str(other)})
    with pytest.raises(ConfigError, match="takes \\[data\\] options only"):  # a command-line mistake: exit status 2
        trained.evaluate(gpt_run, data={"optim.lr": "1"})


def test_evaluate_with_a_key_the_runs_data_kind_lacks_names_the_kind(gpt_run):
    # the config's "did you mean" named a key of the run's kind that is nothing like it ('eval_batch_size')
    with pytest.raises(ConfigError, match=r"^data.val_path: the run's data \(kind 'text'\) has no such key; "
                                          r"craft info text lists those it has$"):
        trained.evaluate(gpt_run, data={"data.val_path": "test"})
    # another kind would be refused for every key of the run's own kind it lacks; say what is wrong instead
    with pytest.raises(ConfigError, match=r"^data.kind: craft evaluate reads other data with the run's own kind "
                                          r"\('text'\); train a run on 'image_folder' data"):
        trained.evaluate(gpt_run, data={"data.kind": "image_folder", "data.path": "images"})
