"""Captioning end to end: train a tiny captioner from the CLI on a folder of PNGs
and a captions.jsonl, then `craft generate RUN_DIR --image=...` on a held-out PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from craft import cli, run, trained
from craft.config import load
from craft.data.captions import write_caption_folder
from craft.data.tokenizers import BOUNDARY, load_tokenizer
from craft.generate import generate_text
from conftest import evaluated_without_the_train_data
from conftest import final_params as _final_params
from conftest import run_cli as craft

# A small world (2 shapes, 2 colours, 2 sizes, 4 cells: 32 captions), so a
# tiny captioner learns it in 800 steps, about 30 s (val exact_match 0.98, 0.92
# and 1.0 with seeds 0, 1 and 2); the held-out images are new renders.
TINY_CAPTIONER = """
name = "tiny_captioner"
seed = 0
out_dir = "{out}"

[model]
kind = "captioner"
encoder = "cnn"
prefix_grid = 2
block_size = 12
n_layer = 1
n_head = 2
n_embd = 48

[data]
kind = "caption_folder"
path = "{data}"
batch_size = 32
num_threads = 0
cache = true

[task]
kind = "captioning"

[optim]
kind = "adamw"
lr = 2e-3
weight_decay = 0.0
clip_norm = 1.0

[schedule]
kind = "warmup_cosine"
warmup_steps = 50

[train]
steps = 800
eval_every = 400
log_every = 250
compile = false
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("captions") / "scenes"
    return write_caption_folder(
        root, num_train=600, num_val=48, image_size=32, shapes=["circle", "square"], colours=["red", "blue"], max_things=1
    )


@pytest.fixture(scope="module")
def tiny_run(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    config = out / "tiny_captioner.toml"
    config.write_text(TINY_CAPTIONER.format(out=out.as_posix(), data=folder.as_posix()), encoding="utf-8")
    result = craft("train", str(config))
    assert result.returncode == 0, result.stderr
    return out / "tiny_captioner"


def generate(capsys, run_dir: Path, *args: str) -> tuple[int, str, str]:
    """``craft generate RUN_DIR ARGS`` in this process: (exit status, stdout, stderr)."""
    try:
        cli.main(["generate", str(run_dir), *args])
        status = 0
    except SystemExit as e:
        status = e.code
    printed = capsys.readouterr()
    return status, printed.out, printed.err


def _val_captions(folder: Path) -> list[dict]:
    lines = (folder / "val" / "captions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow  # the first test to use tiny_run trains it: 800 steps
def test_training_logs_exact_match_and_saves_a_word_tokenizer(tiny_run):
    events = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    val = [e["metrics"] for e in events if e["split"] == "val"]
    assert set(val[-1]) == {"loss", "accuracy", "exact_match", "perplexity"}
    assert val[-1]["exact_match"] >= 0.9, val
    tokenizer = load_tokenizer(tiny_run / "tokenizer.json")
    assert tokenizer.encode("a small red circle")  # words, not characters
    assert load(tiny_run / "config.toml").model.config.vocab_size == tokenizer.vocab_size


def test_generate_captions_a_png_from_disk(tiny_run, folder, capsys):
    first, *others = _val_captions(folder)[:8]
    printed = craft("generate", str(tiny_run), f"--image={folder / 'val' / first['image']}")  # the real command line
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == first["caption"] + "\n"
    captions = [generate(capsys, tiny_run, f"--image={folder / 'val' / e['image']}")[1].strip() for e in others]
    right = sum(c == e["caption"] for c, e in zip(captions, others))
    assert right >= 6, list(zip(captions, [e["caption"] for e in others]))


def test_the_cli_caption_is_greedy_decoding_with_and_without_the_cache(tiny_run, folder, capsys):
    image = folder / "val" / _val_captions(folder)[0]["image"]
    exp, parts, state = trained.load_run(tiny_run)
    tokenizer = load_tokenizer(tiny_run / "tokenizer.json")
    pixels = exp.data.config.load_image(image)[None]
    params = {**state.params, **state.buffers}
    by_hand = [
        generate_text(
            parts.model, params, tokenizer, BOUNDARY, max_new_tokens=11, temperature=0, stop=BOUNDARY,
            context={"image": pixels}, use_cache=use_cache,
        )
        for use_cache in (True, False)
    ]
    status, printed, err = generate(capsys, tiny_run, f"--image={image}", "--cache=false")
    assert status == 0 and by_hand[0] == by_hand[1] == printed.removesuffix("\n"), err


def test_a_prompt_starts_the_caption_and_sampling_is_seeded(tiny_run, folder, capsys):
    image = str(folder / "val" / _val_captions(folder)[0]["image"])
    status, started, err = generate(capsys, tiny_run, f"--image={image}", "--prompt=a large")
    assert status == 0 and started.startswith("a large "), err
    sampled = [generate(capsys, tiny_run, f"--image={image}", "--temperature=1.5", "--seed=3") for _ in range(2)]
    assert sampled[0][0] == 0 and sampled[0] == sampled[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image=missing.png"], "--image missing.png: no such file"),
        (["--image={folder}"], "/val: a folder; give one image file in it to caption"),
        ([], "is a captioning run: give the image to caption, --image=PATH"),
        (["--image={image}", "--stop=x"], "--stop: a caption stops at its end marker; drop --stop"),
        (["--image={image}", "--prompt=a purple"], "1 word not in the vocabulary: 'purple'"),
        (["--image={bad}"], "cannot decode image"),
        (["--image={captions}"], "captions.jsonl (not a BMP, GIF, JPEG, PNG, TIFF, WebP file); give an image file to caption"),
    ],
)
def test_generate_errors_are_one_line(tiny_run, folder, tmp_path, capsys, args, message):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    image = folder / "val" / _val_captions(folder)[0]["image"]
    captions = folder / "val" / "captions.jsonl"
    status, out, err = generate(capsys, tiny_run, *(a.format(image=image, bad=bad, captions=captions, folder=folder / "val") for a in args))
    assert status in (1, 2), out
    assert message in err.splitlines()[0] and "Traceback" not in err, err
    assert "delete" not in err, err  # the user's image (or captions file) is not a folder's damaged file


def test_image_on_a_text_run_is_refused(tmp_path):
    (tmp_path / "config.toml").write_text('name = "t"\n[data]\nkind = "text"\n[model]\nkind = "gpt"\nvocab_size = 4\n')
    (tmp_path / "tokenizer.json").write_text('{"kind": "char", "chars": ["a"]}\n')
    with pytest.raises(run.RunError, match="was trained on 'text' data, not captions; drop --image"):
        trained.sample_run(tmp_path, options=None, image="x.png")


def test_train_sample_is_refused_for_captions(folder, tmp_path):
    config = tmp_path / "c.toml"
    text = TINY_CAPTIONER.format(out=tmp_path.as_posix(), data=folder.as_posix()) + "\n[train.sample]\n"
    config.write_text(text, encoding="utf-8")
    result = craft("train", str(config))
    assert result.returncode == 1 and "remove [train.sample]" in result.stderr
    assert not (tmp_path / "tiny_captioner").exists()


def test_captioner_trains_through_the_same_step_as_every_model(monkeypatch, folder, tmp_path):
    # No special case: the run hands the captioner to craft.step.make_train_step like any model.
    seen = []
    real = run.make_train_step
    monkeypatch.setattr(run, "make_train_step", lambda model, *a, **k: seen.append(type(model).__name__) or real(model, *a, **k))
    text = TINY_CAPTIONER.format(out=tmp_path.as_posix(), data=folder.as_posix())
    (tmp_path / "c.toml").write_text(text, encoding="utf-8")
    short = {"train.steps": 2, "train.eval_every": 2, "schedule.warmup_steps": 1}
    run.train(load(tmp_path / "c.toml", short), echo=lambda *a, **k: None)
    assert seen == ["Captioner"]
    assert (tmp_path / "tiny_captioner" / "checkpoints" / "step_00000002.pt").is_file()


def test_a_resumed_captioning_run_ends_where_an_unbroken_one_does(folder, tmp_path):
    # ResNet encoder (BatchNorm buffers) and dropout (the step's rng): everything a resume must restore.
    text = TINY_CAPTIONER.format(out=tmp_path.as_posix(), data=folder.as_posix())
    (tmp_path / "c.toml").write_text(text, encoding="utf-8")
    overrides = {
        "model.encoder": "resnet", "model.widths": [8, 16], "model.dropout": 0.1, "train.steps": 8,
        "train.eval_every": 4, "train.log_every": 4, "schedule.warmup_steps": 2,
    }
    quiet = dict(echo=lambda *a, **k: None)
    unbroken = run.train(load(tmp_path / "c.toml", {**overrides, "name": "a"}), **quiet)
    broken = run.train(load(tmp_path / "c.toml", {**overrides, "name": "b"}), **quiet)
    (broken / "checkpoints" / "step_00000008.pt").unlink()  # as if stopped after step 4
    run.train(load(tmp_path / "c.toml", {**overrides, "name": "b"}), resume=True, **quiet)
    a, b = _final_params(unbroken), _final_params(broken)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_on_a_test_folder_reads_only_it_with_the_run_s_tokenizer(tmp_path):
    """evaluate --data.val_path=TEST failed "data.path ... is not a folder" once the training folder was gone:
    it was read only for a vocabulary that tokenizer.json holds."""
    data = write_caption_folder(tmp_path / "scenes", num_train=12, num_val=6, image_size=32, shapes=["circle", "square"],
                                colours=["red", "blue"], max_things=1)
    (tmp_path / "c.toml").write_text(TINY_CAPTIONER.format(out=tmp_path.as_posix(), data=data.as_posix()), encoding="utf-8")
    short = {"train.steps": 2, "train.eval_every": 2, "schedule.warmup_steps": 1, "data.batch_size": 4}
    run_dir = run.train(load(tmp_path / "c.toml", short), echo=lambda *a, **k: None)
    test = tmp_path / "test"
    test.mkdir()
    lines = (data / "val" / "captions.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    for line in lines:
        name = json.loads(line)["image"]
        (test / name).write_bytes((data / "val" / name).read_bytes())
    (test / "captions.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    with_train, alone, said = evaluated_without_the_train_data(run_dir, data, test)
    assert alone == pytest.approx(with_train, rel=1e-5)
    assert said == [f"val data: 3 captions of 3 images in {test / 'captions.jsonl'}"]


def test_evaluate_on_captions_longer_than_the_run_s_says_so(tiny_run, folder, tmp_path):
    """Longer test captions failed as the model's error on the first batch, with advice on image_size and channels."""
    name = json.loads((folder / "val" / "captions.jsonl").read_text(encoding="utf-8").splitlines()[0])["image"]
    (tmp_path / name).write_bytes((folder / "val" / name).read_bytes())
    long = "a small red circle " * 4
    (tmp_path / "captions.jsonl").write_text(json.dumps({"image": name, "caption": long}) + "\n", encoding="utf-8")
    result = craft("evaluate", str(tiny_run), f"--data.val_path={tmp_path}")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    line = result.stderr.splitlines()[0]
    assert line.startswith(f"error: the captions of {tmp_path} are longer than the run's model takes: the longest has 16 ")
    assert line.endswith("leave out or cut the captions of more than 11 tokens") and "image_size" not in line
