"""Language models end to end: train a tiny GPT from the CLI, then `craft generate` on its run folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs
import pytest

from craft import run, trained
from craft.config import load, loads
from craft.data.text import CharTokenizer
from conftest import ROOT, tiny_gpt
from conftest import run_cli as craft

TRAIN = """
[optim]
kind = "adamw"
lr = 1e-2

[train]
steps = 40
eval_every = 20
log_every = 10
compile = false

[train.sample]
prompt = "the "
max_new_tokens = 24
temperature = 0
"""

LINES = ["the cat sat on the mat", "the dog sat on the log", "a bird sat on the wire", "the cow ate the hay"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("text")
    config = tiny_gpt(root, TRAIN, text="\n".join(LINES * 40) + "\n")
    result = craft(str(config))
    assert result.returncode == 0, result.stderr
    return root / "runs" / "gpt"


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_leaves_tokenizer_resolved_vocab_and_text_metrics(tiny_run):
    tokenizer = CharTokenizer.load(tiny_run / "tokenizer.json")
    assert tokenizer.vocab_size == len(set("\n".join(LINES) + "\n"))
    assert load(tiny_run / "config.toml").model.config.vocab_size == tokenizer.vocab_size  # filled from the data
    events = _events(tiny_run)
    val = [e["metrics"] for e in events if e["split"] == "val"]
    assert {"loss", "accuracy", "perplexity", "bpc"} <= val[-1].keys()
    assert val[-1]["perplexity"] == pytest.approx(math.exp(val[-1]["loss"]))
    assert val[-1]["bpc"] == pytest.approx(val[-1]["loss"] / math.log(2))
    train = [e["metrics"] for e in events if e["split"] == "train"]
    assert all("bpc" in m and "bits_per_token" not in m and "characters_per_token" not in m for m in train + val)
    assert val[-1]["loss"] < math.log(tokenizer.vocab_size) / 2  # well below a uniform guess
    samples = [e for e in events if e["split"] == "sample"]
    assert [e["step"] for e in samples] == [20, 40] and all(isinstance(e["text"], str) for e in samples)


def test_print_config_prints_what_the_run_resolves_and_names_what_it_takes_from_the_data(tiny_run):
    """--print_config used to leave out schedule.total_steps and say nothing of vocab_size and block_size,
    which the run's config.toml holds: now it differs from that file only by those data keys, each named."""
    from craft.commands import printed_config
    from craft.config import Component

    printed = craft(str(tiny_run.parent.parent / "gpt.toml"), "--print_config")
    assert printed.returncode == 0 and not printed.stderr, printed.stderr
    comments = [line for line in printed.stdout.splitlines() if line.startswith("#")]
    assert comments == [
        f"# {key}: not set; the run takes it from the data ({what}) at its start, and its config.toml records it"
        for key, what in (("vocab_size", "tokenizer"), ("block_size", "sequence length"))
    ]
    shown, saved = loads(printed.stdout), load(tiny_run / "config.toml")
    assert shown.model.config.vocab_size is None and shown.model.config.block_size is None
    data_keys = {"vocab_size": saved.model.config.vocab_size, "block_size": saved.model.config.block_size}
    assert attrs.evolve(shown, model=Component("gpt", attrs.evolve(shown.model.config, **data_keys))) == saved
    # the schedule's length, and a warmup that does not fit, as the run resolves them (said on stderr)
    cut = attrs.evolve(saved, schedule=loads('name = "x"\n[model]\nkind = "gpt"\n[data]\nkind = "text"\n'
                                             '[schedule]\nkind = "warmup_cosine"\nwarmup_steps = 100\n').schedule)
    text, notes = printed_config(cut)
    assert "total_steps = 40" in text and "warmup_steps = 4" in text and loads(text).schedule.config.total_steps == 40
    assert notes[0].startswith("warning: schedule.warmup_steps = 100 is not shorter than the run (40 steps)")


def test_a_training_sample_is_the_prompt_and_its_continuation_as_generate_prints_it(tiny_run):
    last = [e for e in _events(tiny_run) if e["split"] == "sample"][-1]
    generated = craft("generate", str(tiny_run), "--prompt=the ", "--max_new_tokens=24", "--temperature=0")
    assert generated.returncode == 0, generated.stderr
    assert last["text"].startswith("the ") and last["text"] + "\n" == generated.stdout


def test_generate_prints_text_from_the_run_folder(tiny_run):
    result = craft("generate", str(tiny_run), "--prompt=the ", "--max_new_tokens=40", "--temperature=0")
    assert result.returncode == 0, result.stderr
    text = result.stdout.removesuffix("\n").removeprefix("the ")  # the prompt, then its continuation
    assert len(text) == 40 and set(text) <= set("\n".join(LINES) + "\n")
    # Sampling: the same seed gives the same text; --stop cuts before the stop string.
    sampled = [
        craft("generate", str(tiny_run), "--prompt", "a", "--top_k=3", "--top_p=0.9", "--seed=7", "--stop=\n")
        for _ in range(2)
    ]
    assert sampled[0].returncode == 0, sampled[0].stderr
    assert sampled[0].stdout == sampled[1].stdout and "\n" not in sampled[0].stdout.removesuffix("\n")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt=the é"], "1 character not in the vocabulary: 'é'"),
        (["--prompt="], "error: --prompt: must not be empty"),
        (["--top_p=1.5"], "error: --top_p: must be in (0, 1], got 1.5"),
        (["--checkpoint=best"], "best.pt"),
        (["--checkpoint=checkpoints/none.pt"], "no file at 'checkpoints/none.pt' nor at '"),
    ],
)
def test_generate_errors_are_one_line(tiny_run, args, message):
    result = craft("generate", str(tiny_run), *args)
    assert result.returncode in (1, 2) and message in result.stderr and "Traceback" not in result.stderr


def test_a_prompt_from_a_file_is_read_exactly_its_last_newline_kept(tiny_run, tmp_path):
    """A prompt in a file had to go through the shell, --prompt="$(cat FILE)", which drops its last newlines."""
    (tmp_path / "p.txt").write_text("the\n\n", encoding="utf-8")
    from_file = craft("generate", str(tiny_run), f"--prompt_file={tmp_path / 'p.txt'}", "--max_new_tokens=8", "--temperature=0")
    typed = craft("generate", str(tiny_run), "--prompt=the\n\n", "--max_new_tokens=8", "--temperature=0")
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout == typed.stdout and from_file.stdout.startswith("the\n\n")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    for args, message in (
        ([f"--prompt_file={tmp_path / 'latin1.txt'}"], "not UTF-8 (byte 0xe9 at offset 3)"),
        ([f"--prompt_file={tmp_path / 'none.txt'}"], "cannot read it"),
        ([f"--prompt_file={tmp_path / 'p.txt'}", "--prompt=a"], "give one of them"),
    ):
        refused = craft("generate", str(tiny_run), *args)
        assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr


def test_a_prompt_that_looks_like_a_number_stays_text(tiny_run, tmp_path):
    # Fire would read --prompt=1 as the integer 1; craft passes the text through.
    result = craft("generate", str(tiny_run), "--prompt=1", "--max_new_tokens=5")
    assert result.returncode == 1 and "'1'" in result.stderr  # '1' is not in this corpus: named, as text


def test_generate_on_an_image_run_says_it_needs_text(tmp_path):
    (tmp_path / "config.toml").write_text("")
    with pytest.raises(run.RunError, match="no tokenizer.json to decode samples with: generation needs a run trained on text or captions"):
        trained.sample_run(tmp_path, options=None)


@pytest.mark.parametrize(
    "model_keys, message",
    [
        ("vocab_size = 5", "model.vocab_size = 5 but the data's tokenizer has 12 tokens"),
        ("block_size = 8", "the data's sequences have 16 tokens but model.block_size = 8"),
    ],
)
def test_model_and_data_mismatches_are_caught_before_training(tmp_path, model_keys, message):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcdefghijk\n" * 20)
    exp = loads(
        f'name = "x"\n[model]\nkind = "gpt"\n{model_keys}\n'
        f'[data]\nkind = "text"\npath = "{corpus}"\nblock_size = 16\nbatch_size = 4\n[task]\nkind = "language_model"\n'
    )
    data = run.build_data(exp, "train")
    with pytest.raises(run.RunError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run.fit_to_data(exp, data)


def test_a_model_context_longer_than_the_datas_is_warned_about(tmp_path):
    """model.block_size = 32 over sequences of 16 trained without a word; generation past 16 tokens then
    reads position embeddings that never trained."""
    from craft.checks import model_notes

    corpus = tmp_path / "c.txt"
    corpus.write_text("abcdefghijk\n" * 20)
    config = (f'name = "x"\n[model]\nkind = "gpt"\nn_layer = 1\nn_embd = 16\n{{}}[data]\nkind = "text"\npath = "{corpus}"\n'
              'block_size = 16\nbatch_size = 4\n[task]\nkind = "language_model"\n')
    data = run.build_data(loads(config.format("")), "train")
    notes = {}
    for keys in ("block_size = 32\n", "block_size = 16\n", ""):
        exp = run.fit_to_data(loads(config.format(keys)), data)
        notes[keys] = model_notes(exp, run.build_parts(exp).model, data)
    assert notes["block_size = 16\n"] == notes[""] == []
    (warning,) = notes["block_size = 32\n"]
    assert warning.startswith("warning: model.block_size = 32 but the data's sequences have 16 tokens: positions 16 to 31")


@pytest.mark.parametrize("name", ["gpt_char", "char_lstm"])
def test_language_experiments_load(name):
    exp = load(ROOT / "experiments" / f"{name}.toml")
    assert exp.task.kind == "language_model" and exp.data.kind == "text" and exp.data.config.path is None


def test_a_sample_prompt_outside_the_vocabulary_is_refused_before_training(tmp_path):
    from craft import run
    from craft.config import load
    from craft.rundir import RunError

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat.\n" * 50)
    exp = load(ROOT / "experiments" / "gpt_char.toml", {
        "out_dir": str(tmp_path), "data.path": str(corpus), "train.steps": 2, "train.compile": False,
    })
    with pytest.raises(RunError, match=r"train.sample.prompt = 'The ': .*'T'"):
        run.train(exp, echo=lambda *a: None)
    assert not (tmp_path / "gpt_char").exists()


def test_a_windows_copy_of_the_text_evaluates_as_the_copy_it_was_made_from(tiny_run, tmp_path):
    """A CRLF copy kept '\\r' as a character the run never saw ("the other data has 1 token(s) the run's
    tokenizer.json lacks: '\\r'"); it is read as Python's text mode reads it. Each evaluation says what it read."""
    text = "\n".join(LINES[::-1] * 3) + "\n"
    (tmp_path / "lf.txt").write_bytes(text.encode())
    (tmp_path / "crlf.txt").write_bytes(text.replace("\n", "\r\n").encode())
    lf, crlf = (craft("evaluate", str(tiny_run), f"--data.path={tmp_path / name}", "--data.val_fraction=0.5")
                for name in ("lf.txt", "crlf.txt"))
    assert lf.returncode == 0 and crlf.returncode == 0, crlf.stderr
    assert lf.stdout == crlf.stdout
    count = len(text) - int(len(text) * 0.5)
    assert f"val data: {count} characters in {tmp_path / 'crlf.txt'} (the last 0.5, data.val_fraction)" in crlf.stderr
    own = craft("evaluate", str(tiny_run))
    assert own.returncode == 0 and "val data: " in own.stderr and "corpus.txt (the last 0.1" in own.stderr
