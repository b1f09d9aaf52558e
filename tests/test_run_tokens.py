"""Token files end to end through the CLI: prepare (BPE, tiktoken), train (tiny GPT-2, a nanoGPT folder), generate."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from conftest import run_cli as craft

pytest.importorskip("tokenizers")

FAST = ["--train.compile=false", "--train.steps=4", "--train.eval_every=2", "--train.log_every=2"]


@pytest.fixture(scope="module")
def tokens_folder(tmp_path_factory) -> Path:
    """craft's own sources (a folder of .py files) prepared as BPE tokens by the CLI."""
    out = tmp_path_factory.mktemp("tokens") / "craft-bpe"
    done = craft("prepare", "tokens", str(ROOT / "craft" / "data"), str(out), "--vocab_size=512", "--val_fraction=0.2")
    assert done.returncode == 0, done.stderr
    assert f"{out}: " in done.stdout and "train and" in done.stdout
    return out


def test_prepare_tokens_writes_nanogpts_layout_and_a_tokenizer_json(tokens_folder):
    meta = json.loads((tokens_folder / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["tokenizer"] == "bpe" and meta["vocab_size"] <= 512
    for split in ("train", "val"):
        ids = np.fromfile(tokens_folder / f"{split}.bin", dtype=np.uint16)
        assert len(ids) == meta[f"{split}_tokens"] > 0 and ids.max() < meta["vocab_size"]
    assert "model" in json.loads((tokens_folder / "tokenizer.json").read_text())  # Hugging Face's format


def test_prepare_tokens_usage_mistakes_are_one_line(tmp_path):
    missing = craft("prepare", "tokens", str(tmp_path / "out"))
    assert missing.returncode == 2 and "needs SRC... and OUT" in missing.stderr
    typo = craft("prepare", "tokens", str(ROOT / "README.md"), str(tmp_path / "out"), "--vocab=300")
    assert typo.returncode == 2 and "unknown option --vocab" in typo.stderr
    bad = craft("prepare", "tokens", str(ROOT / "README.md"), str(tmp_path / "out"), "--vocab_size=many")
    assert bad.returncode == 2 and "--vocab_size: expected an integer, got 'many'" in bad.stderr
    for done in (missing, typo, bad):
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_prepare_tokens_keeps_an_existing_token_folder_and_names_what_it_leaves_out(tmp_path):
    """A nanoGPT folder (train.bin, val.bin, no meta.json) as OUT is refused, untouched; files that
    are not UTF-8 are named."""
    (tmp_path / "ng").mkdir()
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "ng" / "train.bin")
    np.arange(10, dtype=np.uint16).tofile(tmp_path / "ng" / "val.bin")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("x = 1\ny = 2\n" * 20, encoding="utf-8")
    (tmp_path / "src" / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    refused = craft("prepare", "tokens", str(tmp_path / "src"), str(tmp_path / "ng"), "--vocab_size=260")
    assert refused.returncode == 1 and "already holds prepared tokens (train.bin, val.bin)" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert np.fromfile(tmp_path / "ng" / "train.bin", dtype=np.uint16).tolist() == list(range(100))
    done = craft("prepare", "tokens", str(tmp_path / "src"), str(tmp_path / "out"), "--vocab_size=260")
    assert done.returncode == 0, done.stderr
    assert "left out, not UTF-8: " in done.stderr and "latin1.txt" in done.stderr


@pytest.mark.slow
def test_the_tiny_gpt2_trains_on_prepared_tokens_and_generates(tokens_folder, tmp_path):
    done = craft(
        str(ROOT / "experiments" / "gpt2_tiny.toml"), f"--out_dir={tmp_path}", f"--data.path={tokens_folder}",
        "--data.batch_size=16", "--data.eval_batch_size=16", "--data.val_windows=8", "--train.sample.every=1",
        "--train.sample.max_new_tokens=8", *FAST,
    )
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "gpt2_tiny"
    meta = json.loads((tokens_folder / "meta.json").read_text())
    config = (run_dir / "config.toml").read_text()
    assert f"vocab_size = {meta['vocab_size']}" in config  # the model's vocabulary came from the data
    assert (run_dir / "tokenizer.json").read_text() == (tokens_folder / "tokenizer.json").read_text()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [row["metrics"] for row in rows if row["split"] == "val"]
    assert len(val) == 2 and all(np.isfinite(m["loss"]) for m in val)
    sample = craft("generate", str(run_dir), "--prompt=def ", "--max_new_tokens=12", "--temperature=0")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("def ") and len(sample.stdout.rstrip("\n")) > len("def ")  # 4 steps: often spaces
    replaced = craft("prepare", "tokens", str(ROOT / "README.md"), str(run_dir), "--vocab_size=300", "--overwrite")
    assert replaced.returncode == 1 and "is a training run's folder; write the tokens to a folder of their own" in replaced.stderr
    assert (run_dir / "tokenizer.json").read_text() == (tokens_folder / "tokenizer.json").read_text()


@pytest.mark.slow
def test_a_nanogpt_uint16_folder_trains(tmp_path):
    """shakespeare_char's layout: uint16 train.bin/val.bin and meta.pkl with itos; then none, keys in TOML."""
    text = "to be, or not to be: that is the question.\n" * 40
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    for name, meta in (("with_meta", True), ("bare", False)):
        folder = tmp_path / name
        folder.mkdir()
        ids[:1500].tofile(folder / "train.bin")
        ids[1500:].tofile(folder / "val.bin")
        if meta:
            with open(folder / "meta.pkl", "wb") as f:
                pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {}}, f)
    config = tmp_path / "nano.toml"
    config.write_text(
        f'name = "nano"\nout_dir = "{tmp_path}"\n[model]\nkind = "gpt"\nn_layer = 1\nn_head = 2\nn_embd = 16\n'
        f'[data]\nkind = "tokens"\npath = "{tmp_path / "with_meta"}"\nblock_size = 16\nbatch_size = 8\n'
        '[task]\nkind = "language_model"\n[optim]\nkind = "adamw"\nlr = 1e-2\n'
    )
    with_meta = craft(str(config), *FAST)
    assert with_meta.returncode == 0, with_meta.stderr
    sample = craft("generate", str(tmp_path / "nano"), "--prompt=to be", "--max_new_tokens=5")
    assert sample.returncode == 0 and sample.stdout.startswith("to be"), sample.stderr
    bare = [f"--data.path={tmp_path / 'bare'}", "--name=nano_bare"]
    refused = craft(str(config), *bare, *FAST)
    assert refused.returncode != 0 and "set data.vocab_size" in refused.stderr and "Traceback" not in refused.stderr
    ids_only = [*bare, f"--data.vocab_size={len(chars)}", '--data.dtype="uint16"', *FAST]
    no_sampler = craft(str(config), *ids_only, "--train.sample.every=1")  # ids without a tokenizer: nothing decodes
    assert no_sampler.returncode == 1 and "set data.tokenizer" in no_sampler.stderr
    assert "turn sampling off with --train.sample=None" in no_sampler.stderr
    trained = craft(str(config), *ids_only, "--train.sample=None")
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "nano_bare" / "checkpoints").is_dir()
    undecodable = craft("generate", str(tmp_path / "nano_bare"))
    assert undecodable.returncode == 1 and "its token files came without a tokenizer" in undecodable.stderr


@pytest.mark.slow
def test_tiktoken_tokens_prepare_train_and_generate_offline(local_tiktoken, tmp_path):
    """--tokenizer=tiktoken through the CLI with the encoding's files only in the local cache and the
    network cut off (see the fixture): prepare, prepare again with that folder's tokenizer (the same ids),
    a few steps of the tiny GPT-2, generate decodes with it."""
    out = tmp_path / "tiktoken-tokens"
    source = str(ROOT / "craft" / "data" / "bpe.py")
    done = craft("prepare", "tokens", source, str(out), "--tokenizer=tiktoken", f"--encoding={local_tiktoken}")
    assert done.returncode == 0, done.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"] == "tiktoken" and meta["encoding"] == local_tiktoken and meta["dtype"] == "uint16"
    assert json.loads((out / "tokenizer.json").read_text()) == {"kind": "tiktoken", "encoding": local_tiktoken}
    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    assert len(train) == meta["train_tokens"] > 0 and train[-1] == meta["eot"] == meta["vocab_size"] - 1
    assert len(train) < len(Path(source).read_bytes())  # the merges were used
    # --tokenizer=FOLDER: its tokenizer.json names the encoding, read from the local cache again
    again = tmp_path / "again"
    reused = craft("prepare", "tokens", source, str(again), f"--tokenizer={out}")
    assert reused.returncode == 0, reused.stderr
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes()
    meta = json.loads((again / "meta.json").read_text())
    assert meta["tokenizer"] == "tiktoken" and meta["encoding"] == local_tiktoken
    assert meta["tokenizer_from"] == str((out / "tokenizer.json").resolve())
    trained = craft(
        str(ROOT / "experiments" / "gpt2_tiny.toml"), f"--out_dir={tmp_path}", f"--data.path={out}",
        "--data.batch_size=8", "--data.eval_batch_size=8", "--data.val_windows=4", "--train.accum_steps=1",
        "--train.sample.every=1", "--train.sample.max_new_tokens=4", "--train.compile=false", "--train.steps=2",
        "--train.eval_every=2",
    )
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "gpt2_tiny" / "tokenizer.json").read_text() == (out / "tokenizer.json").read_text()
    sample = craft("generate", str(tmp_path / "gpt2_tiny"), "--prompt=def ", "--max_new_tokens=8", "--temperature=0")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("def ") and len(sample.stdout.rstrip("\n")) > len("def ")


@pytest.fixture(scope="module")
def bpe_run(tokens_folder, tmp_path_factory) -> Path:
    """The tiny GPT-2 trained for 2 steps on ``tokens_folder`` (in this process)."""
    from craft import run
    from craft.config import load

    exp = load(ROOT / "experiments" / "gpt2_tiny.toml", {
        "out_dir": str(tmp_path_factory.mktemp("runs")), "data.path": str(tokens_folder), "data.batch_size": 8,
        "data.eval_batch_size": 8, "data.val_windows": 8, "train.accum_steps": 1, "train.compile": False,
        "train.steps": 2, "train.eval_every": 2, "train.sample": None,
    })
    return run.train(exp, echo=lambda *a, **k: None)


@pytest.mark.slow
def test_evaluate_on_a_test_set_prepared_with_the_runs_tokenizer(bpe_run, tokens_folder, tmp_path):
    """A test set for a BPE run: its text encoded with the run's tokenizer (--tokenizer=RUN) evaluates; the
    run's own folder given as other data gives exactly the run's val figures."""
    from craft import trained

    test = tmp_path / "test"
    done = craft("prepare", "tokens", str(ROOT / "craft" / "models"), str(test), f"--tokenizer={bpe_run}")
    assert done.returncode == 0, done.stderr
    assert (test / "tokenizer.json").read_bytes() == (bpe_run / "tokenizer.json").read_bytes()
    other = trained.evaluate(bpe_run, data={"data.path": str(test)})
    assert other["step"] == 2 and np.isfinite(other["loss"])
    own = trained.evaluate(bpe_run, data={"data.path": str(tokens_folder)})
    rows = [json.loads(line) for line in (bpe_run / "metrics.jsonl").read_text().splitlines()]
    logged = [row["metrics"] for row in rows if row["split"] == "val"][-1]
    assert own == trained.evaluate(bpe_run) and {k: own[k] for k in logged} == logged
    # a BPE token is no character: bits per token and per byte of the evaluated text, named so
    assert "bpc" not in logged and logged["bits_per_token"] == pytest.approx(logged["loss"] / math.log(2))
    assert 1 < logged["bits_per_token"] / logged["bpb"] < 8  # bytes per token, source code at vocab 512
    assert "bpb" in other and all("bpc" not in row["metrics"] for row in rows)
    assert all({"bpb", "bits_per_token"} <= row["metrics"].keys() for row in rows if row["split"] == "train")
    evaluated = craft("evaluate", str(bpe_run), f"--data.path={test}")
    assert evaluated.returncode == 0 and f"loss {other['loss']:.4f}" in evaluated.stdout, evaluated.stderr


@pytest.mark.slow
def test_evaluate_on_tokens_of_another_bpe_names_the_command_that_makes_them_right(bpe_run, tmp_path):
    """Ids of another BPE mean other text (a byte token decodes to '\ufffd', not a token of the run's):
    one line saying to prepare the text with the run's tokenizer, not a list of 'missing' tokens."""
    other = tmp_path / "other-bpe"
    done = craft("prepare", "tokens", str(ROOT / "craft" / "models"), str(other), "--vocab_size=300")
    assert done.returncode == 0, done.stderr
    refused = craft("evaluate", str(bpe_run), f"--data.path={other}")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    error = refused.stderr.splitlines()[0]
    assert error == (
        f"error: {other} was tokenized with another tokenizer than the run's tokenizer.json, so its ids mean other "
        f"text; encode its text with the run's: craft prepare tokens SRC... OUT --tokenizer={bpe_run}, then evaluate on OUT"
    )
