"""``[train] init_from``: a run starts from existing weights (a run folder, an export, a .pt state dict, a
.safetensors file), only the weights: fine-tuning, not resuming."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import run_cli, tiny_cnn, tiny_gpt
from craft import checkpoint, init_from, init_vocabulary, run, sweep, trained
from craft.config import ConfigError, load, loads
from craft.logging import read_metrics
from craft.parts import build_data, build_parts, fit_to_data, to_device
from craft.step import init_state, make_train_step

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CNN = tiny_cnn()


def quiet(*args) -> None:
    pass


def experiment(tmp_path: Path, shapes: Path, name: str, **overrides):
    return loads(CNN.format(out=tmp_path / "runs", data=shapes), {"name": name, **overrides})


@pytest.fixture(scope="module")
def source(tmp_path_factory, shapes) -> Path:
    """A finished 4-step run of the tiny CNN: the weights the tests start from."""
    folder = tmp_path_factory.mktemp("source")
    return run.train(experiment(folder, shapes, "source"), echo=quiet)


def weights_of(run_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trained.load_model(run_dir).state_dict().items()}


def first_states(monkeypatch, module=run) -> list:
    """The initial states ``module`` builds (``init_state``), copied before any step changes them."""
    seen = []

    def spy(model, tx, **kwargs):
        state = init_state(model, tx, **kwargs)
        seen.append({k: v.clone() for k, v in {**state.params, **state.buffers}.items()})
        return state

    monkeypatch.setattr(module, "init_state", spy)
    return seen


def assert_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def as_pt(source: Path, path: Path, prefix: str = "") -> Path:
    torch.save({prefix + k: v for k, v in weights_of(source).items()}, path)
    return path


def as_safetensors(source: Path, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in weights_of(source).items()}, str(path))
    return path


@pytest.mark.parametrize("kind", ["run folder", "export folder", "pt with _orig_mod.", "safetensors", "checkpoint file"])
def test_the_run_starts_from_the_sources_weights_exactly(kind, source, tmp_path, shapes, monkeypatch):
    path = {
        "run folder": lambda: source,
        "export folder": lambda: trained.export(source, tmp_path / "exported"),
        "pt with _orig_mod.": lambda: as_pt(source, tmp_path / "w.pt", "_orig_mod."),
        "safetensors": lambda: as_safetensors(source, tmp_path / "w.safetensors"),
        "checkpoint file": lambda: checkpoint.step_files(source / "checkpoints")[-1],
    }[kind]()
    seen, lines = first_states(monkeypatch), []
    run.train(experiment(tmp_path, shapes, "tuned", **{"train.init_from": str(path)}), echo=lines.append)
    assert_equal(seen[0], weights_of(source))
    said = [line for line in lines if line.startswith("init_from:")]
    assert said == [f"init_from: 6 tensors from {path}{' (step 4)' if kind in ('run folder', 'checkpoint file') else ''}; "
                    "weights only: the optimizer, step and generators start fresh"]


def test_the_first_step_is_load_state_dict_then_crafts_step(source, tmp_path, shapes):
    """The run's first step equals a plain ``model.load_state_dict`` of the file, then the same train step."""
    exp = experiment(tmp_path, shapes, "tuned", **{"train.init_from": str(as_pt(source, tmp_path / "w.pt")),
                                                  "train.checkpoint_every": 1, "train.keep_checkpoints": 10})
    run_dir = run.train(exp, echo=quiet)
    train_data = build_data(exp, "train")
    exp = fit_to_data(exp, train_data)
    parts = build_parts(exp)
    parts.model.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    step = make_train_step(parts.model, parts.task.loss, parts.optimizer, inputs=parts.task.inputs, compile=False)
    state, _ = step(init_state(parts.model, parts.optimizer, seed=exp.seed), to_device(next(iter(train_data)), parts.device))
    after_one = checkpoint.load(checkpoint.step_path(run_dir / "checkpoints", 1))["state"]
    torch.testing.assert_close(after_one["params"], state.params, atol=0, rtol=0)
    torch.testing.assert_close(after_one["buffers"], state.buffers, atol=0, rtol=0)


def other_head(source: Path, path: Path, classes: int = 5) -> Path:
    """The source's weights with a head for ``classes`` classes: a model trained on other labels."""
    weights = weights_of(source)
    weights["fc.weight"], weights["fc.bias"] = torch.ones(classes, weights["fc.weight"].shape[1]), torch.ones(classes)
    torch.save(weights, path)
    return path


def test_init_skip_leaves_the_new_head_fresh_and_loads_the_rest(source, tmp_path, shapes, monkeypatch):
    seen, lines = first_states(monkeypatch), []
    run.train(experiment(tmp_path, shapes, "fresh"), echo=quiet)
    path = other_head(source, tmp_path / "five.pt")
    run.train(experiment(tmp_path, shapes, "tuned", **{"train.init_from": str(path), "train.init_skip": ["fc.*"]}),
              echo=lines.append)
    fresh, tuned, loaded = seen[0], seen[1], weights_of(source)
    assert_equal({k: v for k, v in tuned.items() if k.startswith("conv")}, {k: v for k, v in loaded.items() if k.startswith("conv")})
    assert_equal({k: v for k, v in tuned.items() if k.startswith("fc")}, {k: v for k, v in fresh.items() if k.startswith("fc")})
    assert f"init_from: 4 tensors from {path}; left at init: 'fc.bias', 'fc.weight'; weights only" in "\n".join(lines)


def test_a_mismatch_is_one_line_naming_the_names_and_the_fix_and_makes_no_run(source, tmp_path, shapes):
    path = other_head(source, tmp_path / "five.pt")
    with pytest.raises(run.RunError) as error:
        run.train(experiment(tmp_path, shapes, "tuned", **{"train.init_from": str(path)}), echo=quiet)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"train.init_from: {path} does not fit model 'cnn': other shapes 'fc.weight' (5, 2048) "
                              "(the model's (7, 2048)), 'fc.bias' (5,) (the model's (7,))")
    assert message.endswith('or leave them at their fresh init with train.init_skip = ["fc.bias", "fc.weight"]')
    assert not (tmp_path / "runs" / "tuned").exists()


def test_a_source_of_another_model_names_a_few_names_then_a_count(tmp_path):
    from craft.models import SmallCNN

    weights = {f"layer{i}.weight": torch.zeros(2) for i in range(9)}
    with pytest.raises(run.RunError) as error:
        init_from.fit(SmallCNN(7), weights, [], "train.init_from: x.pt", "cnn")
    message = str(error.value)
    assert "not in the source 'conv1.weight', 'conv1.bias', 'conv2.weight', ... 6 in all" in message
    assert "not in the model 'layer0.weight', 'layer1.weight', 'layer2.weight', ... 9 in all" in message
    assert "init_skip" not in message  # too many names for globs to be the fix


def test_a_missing_source_is_one_line_and_leaves_no_run_folder(tmp_path, shapes):
    with pytest.raises(run.RunError, match=r"^train.init_from: no such file or folder '.*nope.pt' .*; give a run folder"):
        run.train(experiment(tmp_path, shapes, "tuned", **{"train.init_from": str(tmp_path / "nope.pt")}), echo=quiet)
    assert not (tmp_path / "runs").exists()


def test_a_folder_that_is_neither_a_run_nor_an_export_is_refused(tmp_path, shapes):
    with pytest.raises(run.RunError, match="is a folder, but not a run folder .* nor an export"):
        run.train(experiment(tmp_path, shapes, "tuned", **{"train.init_from": str(shapes)}), echo=quiet)


def test_a_pickled_model_is_refused_without_running_it_nor_torchs_advice(tmp_path, shapes):
    from craft.models import SmallCNN

    torch.save(SmallCNN(7), tmp_path / "model.pt")  # the module object, not its state dict
    with pytest.raises(run.RunError) as error:
        run.train(experiment(tmp_path, shapes, "tuned", **{"train.init_from": str(tmp_path / "model.pt")}), echo=quiet)
    assert str(error.value) == (f"train.init_from: {str(tmp_path / 'model.pt')!r} holds Python objects besides tensors "
                                "(a whole model object?): save model.state_dict() instead")


@pytest.mark.parametrize("text", ["hello world\n", "", 'name = "cnn"\n[model]\nkind = "cnn"\n'], ids=["text", "empty", "toml"])
def test_a_file_torch_save_did_not_write_is_said_so(text, tmp_path, shapes):
    path = tmp_path / "w.txt"
    path.write_text(text)
    with pytest.raises(run.RunError) as error:
        run.train(experiment(tmp_path, shapes, "tuned", **{"train.init_from": str(path)}), echo=quiet)
    message = str(error.value)
    assert message.startswith(f"train.init_from: {str(path)!r} is not a file torch.save wrote (nor a .safetensors file)")
    assert "weights_only" not in message and "model object" not in message and "\x1b" not in message


def test_a_torch_file_cut_short_names_torchs_first_line_without_its_advice(source, tmp_path):
    whole = as_pt(source, tmp_path / "w.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(run.RunError, match=r"cannot be read by torch.load \(.*\); was the file cut short\?") as error:
        init_from.read(tmp_path / "cut.pt")
    assert "weights_only" not in str(error.value)


def test_init_skip_needs_init_from_and_a_glob_that_matches(source, tmp_path, shapes):
    with pytest.raises(ConfigError, match=r"train.init_skip: takes effect only with init_from"):
        experiment(tmp_path, shapes, "tuned", **{"train.init_skip": ["fc.*"]})
    exp = experiment(tmp_path, shapes, "tuned", **{"train.init_from": str(source), "train.init_skip": ["head.*"]})
    with pytest.raises(run.RunError, match=r"train.init_skip: 'head.\*' matches no tensor of model 'cnn' nor of the source"):
        run.train(exp, echo=quiet)


def test_a_missing_tensor_is_named_exactly_as_the_skip_to_give(source, tmp_path):
    from craft.models import SmallCNN

    weights = {k: v for k, v in weights_of(source).items() if k != "fc.bias"}
    with pytest.raises(run.RunError) as error:
        init_from.fit(SmallCNN(7), weights, [], "train.init_from: x.pt", "cnn")
    assert str(error.value).endswith('train.init_skip = ["fc.bias"]')  # not "fc.*": fc.weight is there


def test_skip_globs_shorten_many_names_only_where_no_other_name_matches():
    names = [f"head.{i}" for i in range(5)]
    assert init_vocabulary.skip_globs(names[:3], names) == names[:3]
    assert init_vocabulary.skip_globs(names[:4], names) is None  # head.* would take head.4 too
    assert init_vocabulary.skip_globs(names, [*names, "body.0"]) == ["head.*"]


def test_init_skip_leaving_every_tensor_is_refused(source, tmp_path, shapes):
    exp = experiment(tmp_path, shapes, "tuned", **{"train.init_from": str(source), "train.init_skip": ["*"]})
    said = r"^train.init_skip: \[\"\*\"\] leaves every tensor of model 'cnn' at init, so nothing would be loaded; remove"
    with pytest.raises(run.RunError, match=said):
        run.train(exp, echo=quiet)
    assert not (tmp_path / "runs" / "tuned").exists()


def test_source_tensors_init_skip_leaves_out_are_named(source, tmp_path, shapes):
    weights = {**weights_of(source), "extra.a": torch.zeros(2), "extra.b": torch.zeros(2)}
    torch.save(weights, tmp_path / "w.pt")
    exp = experiment(tmp_path, shapes, "tuned", **{"train.init_from": str(tmp_path / "w.pt"), "train.init_skip": ["extra.*"]})
    lines = []
    run.train(exp, echo=lines.append)
    assert f"init_from: 6 tensors from {tmp_path / 'w.pt'}; left out of the source: 'extra.a', 'extra.b'; weights" in "\n".join(lines)


def test_print_config_checks_init_from_too(tmp_path, shapes):
    toml = tmp_path / "e.toml"
    toml.write_text(CNN.format(out=tmp_path / "runs", data=shapes))
    result = run_cli(str(toml), "--print_config", "--train.init_from=nonexist.pt", cwd=tmp_path, env=ENV, timeout=300)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0].startswith("error: train.init_from: no such file or folder 'nonexist.pt'")


def test_a_resumed_run_ignores_init_from_and_ends_as_the_unbroken_run(source, tmp_path, shapes):
    weights = as_pt(source, tmp_path / "w.pt")
    given = {"train.init_from": str(weights)}
    straight = run.train(experiment(tmp_path, shapes, "straight", **given, **{"train.steps": 6}), echo=quiet)
    broken = run.train(experiment(tmp_path, shapes, "broken", **given), echo=quiet)
    weights.unlink()  # gone since: the checkpoint is what a resumed run starts from
    lines = []
    run.train(experiment(tmp_path, shapes, "broken", **given, **{"train.steps": 6}), resume=True, echo=lines.append)
    assert not any(line.startswith("init_from:") for line in lines)
    a, b = (checkpoint.load(checkpoint.step_files(d / "checkpoints")[-1]) for d in (straight, broken))
    torch.testing.assert_close(a["state"], b["state"], atol=0, rtol=0)
    strip = lambda events: [(e["step"], e["split"], e["metrics"]) for e in events]  # noqa: E731
    assert strip(read_metrics(straight)) == strip(read_metrics(broken))
    assert f'init_from = "{weights}"' in (broken / "config.toml").read_text()


def test_every_sweep_member_starts_from_the_same_weights(source, tmp_path, shapes, monkeypatch):
    seen, lines = first_states(monkeypatch, sweep), []
    exp = experiment(tmp_path, shapes, "swept", **{"train.init_from": str(source), "sweep.seeds": 2, "train.steps": 2})
    run.train(exp, echo=lines.append)
    assert len(seen) == 2
    for state in seen:
        assert_equal(state, weights_of(source))
    assert any(line.startswith(f"init_from: 6 tensors from {source} (step 4)") for line in lines)


def test_a_char_gpt_on_a_new_vocabulary_leaves_its_tied_embedding_fresh(tmp_path, monkeypatch):
    train = "[train]\nsteps = 2\neval_every = 2\nlog_every = 2\neval_batches = 1\ncompile = false\n"
    first = run.train(load(tiny_gpt(tmp_path, train)), echo=quiet)
    (tmp_path / "other").mkdir()
    other = tiny_gpt(tmp_path / "other", train, text="a new text, of other letters: xyz!\n" * 30)
    exp = load(other, {"name": "tuned", "train.init_from": str(first), "train.init_skip": ["lm_head.*"]})
    seen, lines = first_states(monkeypatch), []
    run.train(exp, echo=lines.append)
    said = next(line for line in lines if line.startswith("init_from:"))
    assert "left at init: 'lm_head.weight', 'wte.weight'" in said  # tied: skipping one name leaves both
    source = weights_of(first)
    assert torch.equal(seen[0]["wpe.weight"], source["wpe.weight"])
    assert seen[0]["wte.weight"].shape != source["wte.weight"].shape


def test_unprefixed_takes_off_ddp_and_compile_prefixes_all_names_share():
    t = torch.zeros(1)
    assert init_from.unprefixed({"module._orig_mod.a": t, "module._orig_mod.b": t}, {"a", "b"}).keys() == {"a", "b"}
    assert init_from.unprefixed({"module.a": t, "b": t}, {"module.a", "b"}).keys() == {"module.a", "b"}  # not common
    assert init_from.unprefixed({"module.a": t}, {"module.a"}).keys() == {"module.a"}  # the model's own name


def test_the_cli_fine_tunes_another_run_and_records_it(source, tmp_path, shapes):
    toml = tmp_path / "e.toml"
    toml.write_text(CNN.format(out=tmp_path / "runs", data=shapes))
    result = run_cli(str(toml), "--name=tuned", f"--train.init_from={source}", cwd=tmp_path, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"init_from: 6 tensors from {source} (step 4); weights only" in result.stdout
    assert f'init_from = "{source}"' in (tmp_path / "runs" / "tuned" / "config.toml").read_text()
    missing = run_cli(str(toml), "--name=typo", "--train.init_from=runs/nope", cwd=tmp_path, env=ENV, timeout=300)
    assert missing.returncode == 1
    assert missing.stderr.splitlines()[0].startswith("error: train.init_from: no such file or folder 'runs/nope'")
    assert not (tmp_path / "runs" / "typo").exists()


def test_a_run_resumed_before_its_first_checkpoint_starts_from_init_from_again(source, tmp_path, shapes, monkeypatch):
    exp = experiment(tmp_path, shapes, "tuned", **{"train.init_from": str(source)})
    run_dir = run.train(exp, echo=quiet)
    for path in (run_dir / "checkpoints").iterdir():
        path.unlink()  # killed before its first checkpoint
    seen, lines = first_states(monkeypatch), []
    run.train(exp, resume=True, echo=lines.append)
    assert any("has no checkpoint yet: starting it again from step 0" in line for line in lines)
    assert any(line.startswith(f"init_from: 6 tensors from {source}") for line in lines)
    assert_equal(seen[0], weights_of(source))


def test_a_run_folder_without_a_checkpoint_is_one_line_naming_init_from(source, tmp_path, shapes):
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "config.toml").write_text((source / "config.toml").read_text())
    with pytest.raises(run.RunError, match=r"^train.init_from: no readable checkpoint in .*empty/checkpoints"):
        run.train(experiment(tmp_path, shapes, "tuned", **{"train.init_from": str(empty)}), echo=quiet)
    assert not (tmp_path / "runs" / "tuned").exists()


GPT_TRAIN = "[train]\nsteps = 2\neval_every = 2\nlog_every = 2\neval_batches = 1\ncompile = false\n"


@pytest.mark.parametrize("letters", ["abcdefgX \n", "abcdefgXY \n"], ids=["same size", "another size"])
def test_a_char_gpt_on_another_vocabulary_is_refused_naming_it_unless_its_rows_are_skipped(letters, tmp_path, monkeypatch):
    """'abcdefgh' then 'abcdefgX': the same 10 ids, but each letter's id moves; the rows would mean other letters."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = run.train(load(tiny_gpt(tmp_path / "a", GPT_TRAIN, text="abcdefgh \n" * 40)), echo=quiet)
    other = tiny_gpt(tmp_path / "b", GPT_TRAIN, text=letters * 40)
    with pytest.raises(run.RunError) as error:
        run.train(load(other, {"name": "tuned", "train.init_from": str(first)}), echo=quiet)
    message = str(error.value)
    assert message.startswith(f"train.init_from: {first} (step 2): the data's tokenizer differs from the source's "
                              f"tokenizer.json (10 tokens, the data's {len(set(letters))}), so the same token ids mean other text; "
                              f"encode the data with the source's tokenizer (a token folder: craft prepare tokens SRC... OUT "
                              f"--tokenizer={first})")
    assert message.endswith('or leave the token-indexed tensors at their fresh init with train.init_skip = ["wte.weight"]')
    assert not (tmp_path / "b" / "runs" / "tuned").exists()
    seen, lines = first_states(monkeypatch), []
    run.train(load(other, {"name": "tuned", "train.init_from": str(first), "train.init_skip": ["wte.weight"]}), echo=lines.append)
    said = next(line for line in lines if line.startswith("init_from:"))
    assert "left at init: 'lm_head.weight', 'wte.weight'; the data's vocabulary differs from the source's" in said
    assert torch.equal(seen[0]["wpe.weight"], weights_of(first)["wpe.weight"])


def renamed_class(shapes: Path, folder: Path) -> Path:
    """``shapes`` with its class 'arrow' renamed 'zigzag': 7 classes still, but each label another class."""
    shutil.copytree(shapes, folder)
    for split in ("train", "val"):
        (folder / split / "arrow").rename(folder / split / "zigzag")
    return folder


@pytest.mark.parametrize("kind", ["run folder", "export folder", "checkpoint file"])
def test_other_classes_of_the_same_count_are_refused_unless_the_head_is_skipped(kind, source, tmp_path, shapes):
    path = {"run folder": lambda: source, "export folder": lambda: trained.export(source, tmp_path / "exported"),
            "checkpoint file": lambda: checkpoint.step_files(source / "checkpoints")[-1]}[kind]()
    data = renamed_class(shapes, tmp_path / "zigzag")
    with pytest.raises(run.RunError) as error:
        run.train(experiment(tmp_path, data, "tuned", **{"train.init_from": str(path)}), echo=quiet)
    message = str(error.value)
    assert "the data's classes differ from the source's (classes.json: 7 classes): it lacks ['arrow'], so the same " \
           "labels mean other classes; give the data the source's classes, in its order" in message
    assert message.endswith('leave the class-indexed tensors at their fresh init with train.init_skip = ["fc.bias", "fc.weight"]')
    lines = []
    run.train(experiment(tmp_path, data, "tuned", **{"train.init_from": str(path), "train.init_skip": ["fc.*"]}), echo=lines.append)
    assert any("left at init: 'fc.bias', 'fc.weight'; the data's classes differ from the source's" in line for line in lines)
