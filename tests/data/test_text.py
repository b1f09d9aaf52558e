"""Text data: corpus reading, the character tokenizer, windows and lines batches, config."""

from __future__ import annotations

import json
import string
from pathlib import Path

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from craft.config import ConfigError, dumps, loads
from craft.data import DATASETS, CharTokenizer, TextConfig, UnknownCharactersError
from craft.data.text import IGNORE_INDEX, default_corpus, read_corpus

POEM = "".join(f"line {k}: {'abcdefghij'[k % 10] * (k % 7)} the quick brown fox {k * k}\n" for k in range(60))


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


@pytest.fixture
def poem(tmp_path) -> Path:
    return write(tmp_path / "poem.txt", POEM)


def config(path: Path | list[Path] | None, **changes) -> TextConfig:
    paths = None if path is None else str(path) if isinstance(path, Path) else [str(p) for p in path]
    return TextConfig(path=paths, **{"batch_size": 4, "block_size": 8, **changes})


def take(ds, n: int) -> list[dict]:
    return [next(ds) for _ in range(n)]


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("input", "target"))


def test_registered_and_exported():
    assert DATASETS["text"] is TextConfig


# -- tokenizer -------------------------------------------------------------


@given(st.text(alphabet="ab\n\t é☃😀\x00", min_size=1), st.text(alphabet="ab\n\t é☃😀\x00"))
def test_tokenizer_round_trip(vocab_text, text):
    tok = CharTokenizer.from_text(vocab_text + text)
    assert list(tok.chars) == sorted(set(vocab_text + text)) and tok.vocab_size == len(tok.chars)
    ids = tok.encode_tensor(text)
    assert ids.dtype == torch.int64 and ids.shape == (len(text),)
    assert tok.encode(text) == ids.tolist() == [tok.chars.index(c) for c in text]
    assert tok.decode(ids) == tok.decode(ids.tolist()) == text


@given(st.text(min_size=1))
def test_tokenizer_round_trip_any_characters(text):
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text


def test_tokenizer_save_load_round_trip(tmp_path):
    tok = CharTokenizer.from_text("hello, wörld\n😀\"\\")
    tok.save(tmp_path / "tokenizer.json")
    assert json.loads((tmp_path / "tokenizer.json").read_text()) == {"kind": "char", "chars": list(tok.chars)}
    assert CharTokenizer.load(tmp_path / "tokenizer.json") == tok


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "no tokenizer file"),
        ("{not json", "not a tokenizer file"),
        ('{"kind": "bpe", "chars": ["a"]}', "not a character tokenizer"),
        ('["a", "b"]', "not a character tokenizer"),
        ('{"kind": "char", "chars": ["b", "a"]}', "sorted"),
        ('{"kind": "char", "chars": ["ab"]}', "single characters"),
    ],
)
def test_tokenizer_load_errors(tmp_path, content, match):
    path = tmp_path / "tokenizer.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        CharTokenizer.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unknown_characters_are_named_in_one_line():
    tok = CharTokenizer.from_text("abc\n")
    with pytest.raises(UnknownCharactersError, match=r"'x', 'é'.*training text") as info:
        tok.encode("abxcé")
    assert isinstance(info.value, ValueError) and info.value.chars == ["x", "é"]
    with pytest.raises(UnknownCharactersError) as info:
        tok.encode_tensor(string.ascii_uppercase)
    message = str(info.value)
    assert "\n" not in message and "'J'" in message and "'K'" not in message and "16 more" in message


def test_decode_refuses_ids_outside_the_vocabulary():
    tok = CharTokenizer.from_text("ab")
    with pytest.raises(ValueError, match=r"token id -100 .*\[0, 2\)"):
        tok.decode([0, -100])
    with pytest.raises(ValueError, match=r"1-D.*\(1, 2\)"):
        tok.decode(torch.zeros(1, 2, dtype=torch.int64))


# -- corpus ----------------------------------------------------------------


def test_read_corpus_joins_files_in_order_ending_each_with_a_newline(tmp_path):
    a = write(tmp_path / "a.txt", "alpha")
    b = write(tmp_path / "b.txt", "\ufeffbeta\n")  # a byte-order mark is not text
    c = write(tmp_path / "c.txt", "")
    assert read_corpus([b, a, c, a]) == "beta\nalpha\nalpha\n"


def test_line_ends_are_read_as_python_s_text_mode_reads_them(tmp_path):
    """A copy saved on Windows kept '\\r' as a character: its run had another vocabulary, and a run trained on the
    LF copy could not evaluate it. '\\r\\n' and a lone '\\r' are '\\n', as nanoGPT's open(...).read() reads them."""
    lines = "\ufeffthe cat\r\nsat\rdown\r\n"
    (tmp_path / "crlf.txt").write_bytes(lines.encode())
    assert read_corpus([tmp_path / "crlf.txt"]) == "the cat\nsat\ndown\n"
    with open(tmp_path / "crlf.txt", encoding="utf-8-sig") as f:
        assert read_corpus([tmp_path / "crlf.txt"]) == f.read()


def test_each_split_says_what_it_read_as_an_hf_text_dataset_does(tmp_path):
    path = write(tmp_path / "a.txt", "abcdefghij" * 10)
    config = TextConfig(path=str(path), block_size=4, batch_size=2, val_fraction=0.2)
    summaries = [config.build(split, seed=0).summary for split in ("train", "val")]
    assert summaries == [f"80 characters in {path} (all but the last 0.2, data.val_fraction)",  # 101 with its newline
                         f"21 characters in {path} (the last 0.2, data.val_fraction)"]
    lines = attrs.evolve(config, format="lines").build("val", seed=0).summary
    assert lines == f"1 non-empty line in {path} (the last 0.2, data.val_fraction)"


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("latin1.txt", b"caf\xe9 ok\xff", r"latin1.txt: not UTF-8 text \(invalid byte 0xe9 at offset 3\); convert it"),
        ("empty.txt", b"", r"corpus is empty \(.*empty.txt\)"),
        ("missing.txt", None, r"missing.txt: no such file"),
        ("folder", "folder", r"folder: is a folder"),
    ],
)
def test_corpus_errors_name_the_file(tmp_path, name, content, match):
    path = tmp_path / name
    if content == "folder":
        path.mkdir()
    elif content is not None:
        write(path, content)
    with pytest.raises(ValueError, match=match) as info:
        config(path).build("train", seed=0)
    assert "\n" not in str(info.value)


def test_default_corpus_when_path_is_unset():
    text = default_corpus()
    assert len(text) > 100_000 and "\n" in text and "statement" in text
    ds = TextConfig().build("val", seed=0)
    assert ds.tokenizer == CharTokenizer.from_text(text) and ds.vocab_size == len(set(text))
    batch = next(iter(ds))
    assert batch["input"].shape == (12, 64)


# -- windows ---------------------------------------------------------------


def test_windows_are_text_with_targets_shifted_by_one(poem):
    ds = config(poem).build("train", seed=0)
    assert ds.block_size == 8 and ds.batch_size == 4 and ds.vocab_size == len(set(POEM))
    train_text = POEM[: int(len(POEM) * 0.9)]
    assert ds.num_examples == len(train_text) - 8
    for batch in take(ds, 20):
        assert batch["input"].shape == batch["target"].shape == (4, 8)
        assert batch["input"].dtype == batch["target"].dtype == torch.int64
        assert torch.equal(batch["input"][:, 1:], batch["target"][:, :-1])
        for x, y in zip(batch["input"], batch["target"]):
            assert ds.tokenizer.decode(x) + ds.tokenizer.decode(y[-1:]) in train_text


@settings(max_examples=15)
@given(stop=st.integers(0, 40))
def test_train_windows_are_seeded_and_resume_exactly(tmp_path_factory, stop):
    path = write(tmp_path_factory.mktemp("resume") / "small.txt", POEM[:300])
    cfg = config(path, batch_size=16)  # 261 windows: 16 batches per epoch, so stops cross epochs
    reference = take(cfg.build("train", seed=3), stop + 3)
    ds = cfg.build("train", seed=3)
    take(ds, stop)
    state = ds.state_dict()
    fresh = cfg.build("train", seed=3)
    fresh.load_state_dict(state)
    assert same(take(fresh, 3), reference[stop:])
    assert not same(take(cfg.build("train", seed=4), 3), reference[:3])


@pytest.mark.parametrize(("block_size", "eval_batch_size"), [(8, None), (7, 3), (1000, 1)])
def test_val_windows_cover_every_val_token_once_as_a_target(poem, block_size, eval_batch_size):
    ds = config(poem, block_size=block_size, eval_batch_size=eval_batch_size).build("val", seed=0)
    data = ds.tokenizer.encode_tensor(POEM)
    cut = int(len(data) * 0.9)
    batches = list(ds)
    assert all(len(b["input"]) <= (eval_batch_size or 4) for b in batches)
    inputs = torch.cat([b["input"] for b in batches]).flatten()
    targets = torch.cat([b["target"] for b in batches]).flatten()
    real = targets != IGNORE_INDEX
    assert torch.equal(targets[real], data[cut:])  # every val token once, in order
    assert torch.equal(inputs[real], data[cut - 1 : -1])  # each one's input is the token before it
    assert len(targets) - int(real.sum()) < block_size and not real[int(real.sum()) :].any()  # padding at the end
    assert (inputs[~real] == 0).all()
    assert same(list(ds), batches)


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("format", ["windows", "lines"])
def test_rank_slices_concatenate_to_the_global_batch(poem, split, format):
    cfg = config(poem, format=format, batch_size=6, max_length=16)
    whole = cfg.build(split, seed=0)
    ranks = [cfg.build(split, seed=0, rank=r, world_size=3) for r in range(3)]
    if split == "train":
        whole, ranks = take(whole, 5), [take(ds, 5) for ds in ranks]
    else:
        whole, ranks = list(whole), [list(ds) for ds in ranks]
    for step, batch in enumerate(whole):
        for key in ("input", "target"):
            assert torch.equal(torch.cat([r[step][key] for r in ranks if step < len(r)]), batch[key])


# -- lines -----------------------------------------------------------------


LINES = "first\r\n\nsecond line\n\n\nab\nthird one here\nlast"


def test_lines_are_newline_marked_padded_and_split_by_line(tmp_path):
    path = write(tmp_path / "lines.txt", LINES)
    cfg = config(path, format="lines", max_length=12, batch_size=2, val_fraction=0.4)
    val = cfg.build("val", seed=0)  # 5 non-empty lines: the last 2 are val
    assert val.block_size == 12 and val.num_examples == 2
    (batch,) = list(val)
    tok = val.tokenizer
    assert batch["input"].shape == batch["target"].shape == (2, 12)
    third = "third one here"  # 15 pairs, truncated to 12
    assert tok.decode(batch["input"][0]) == ("\n" + third)[:12]
    assert tok.decode(batch["target"][0]) == (third + "\n")[:12]
    n = len("last") + 1  # "\nlast\n" gives 5 (input, target) pairs, then padding
    assert tok.decode(batch["input"][1, :n]) == "\nlast" and tok.decode(batch["target"][1, :n]) == "last\n"
    assert (batch["input"][1, n:] == 0).all() and (batch["target"][1, n:] == IGNORE_INDEX).all()
    train = cfg.build("train", seed=0)
    assert train.num_examples == 3
    seen = set()
    for batch in take(train, 3):
        for x, y in zip(batch["input"], batch["target"]):
            real = y != IGNORE_INDEX
            assert tok.decode(x[real])[0] == "\n" and tok.decode(y[real])[-1] == "\n"
            seen.add(tok.decode(y[real]))
    assert seen == {"first\n", "second line\n", "ab\n"}  # "\r" and empty lines are gone


# -- errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "split", "match"),
    [
        ({"block_size": 64}, "train", r"the train split has 44 tokens, fewer than block_size \+ 1 = 65; lower"),
        ({"batch_size": 64}, "train", r"the train split has 44 tokens \(36 windows .*data.batch_size=64"),
        ({"format": "lines", "batch_size": 8}, "train", r"the train split has 4 lines, fewer than one batch"),
        ({"val_fraction": 1e-17}, "val", r"the val split is empty: data.val_fraction=1e-17 of 49 tokens is none"),
    ],
)
def test_too_small_splits_say_which_key_to_change(tmp_path, changes, split, match):
    path = write(tmp_path / "tiny.txt", "ab cd ef\n" * 3 + "ghi jkl mn\n" * 2)  # 49 tokens, 5 lines
    with pytest.raises(ValueError, match=match) as info:
        config(path, **changes).build(split, seed=0)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("split", ["train", "val"])
def test_lines_need_a_non_empty_line(tmp_path, split):
    path = write(tmp_path / "blank.txt", "\n\r\n\n")
    with pytest.raises(ValueError, match=r"blank.txt has no non-empty lines; .*data.format = \"windows\""):
        config(path, format="lines").build(split, seed=0)


@pytest.mark.parametrize(
    "changes",
    [{"val_fraction": 0.0}, {"val_fraction": 1.0}, {"format": "words"}, {"block_size": 0}, {"path": []}, {"path": 3}],
)
def test_bad_options_fail_at_construction(changes):
    with pytest.raises(ValueError):
        TextConfig(**changes)


# -- config ----------------------------------------------------------------


EXPERIMENT = 'name = "lm"\n[model]\nkind = "cnn"\n[data]\nkind = "text"\n'


@pytest.mark.parametrize("path", ['"corpus.txt"', '["a.txt", "b/c.txt"]', None])
def test_config_round_trip(path):
    exp = loads(EXPERIMENT + (f"path = {path}\n" if path else "") + 'format = "lines"\neval_batch_size = 2\n')
    assert isinstance(exp.data.config, TextConfig) and exp.data.config.format == "lines"
    assert exp.data.config.path == (None if path is None else json.loads(path))
    assert loads(dumps(exp)) == exp


def test_config_round_trip_builds_the_same_data(poem):
    exp = loads(EXPERIMENT, {"data.path": [str(poem), str(poem)], "data.block_size": 8})
    again = loads(dumps(exp))
    assert same(take(again.data.config.build("train", seed=0), 2), take(exp.data.config.build("train", seed=0), 2))


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("3", "data.path: expected str or a list of str, got 3"),
        ("true", "data.path: expected str or a list of str, got True"),
        ('["a.txt", 2]', "data.path[1]: expected str, got 2"),
        ("{ x = 1 }", "data.path: expected str or a list of str, got {'x': 1}"),
        ("[]", "data.path: must be a file path or a non-empty list of file paths, got []"),
    ],
)
def test_bad_path_type_is_a_config_error_naming_data_path(value, problem):
    with pytest.raises(ConfigError) as info:
        loads(EXPERIMENT + f"path = {value}\n")
    assert info.value.problems == [problem]


def test_config_errors_name_every_bad_key():
    with pytest.raises(ConfigError) as info:
        loads(EXPERIMENT + 'format = "words"\nval_fraction = 0\nblock_size = 0\n')
    problems = "\n".join(info.value.problems)
    assert "data.format" in problems
    with pytest.raises(ConfigError) as info:
        loads(EXPERIMENT + "val_fraction = 1.5\nblock_size = 0\n")
    assert sorted(p.split(":")[0] for p in info.value.problems) == ["data.block_size", "data.val_fraction"]


def test_relative_paths_start_at_the_current_folder(tmp_path, monkeypatch):
    write(tmp_path / "texts" / "t.txt", POEM)
    monkeypatch.chdir(tmp_path)
    ds = attrs.evolve(config(None), path="texts/t.txt").build("train", seed=0)
    assert ds.vocab_size == len(set(POEM))


def test_a_corpus_too_large_for_memory_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """kind = "text" holds every character in memory: a corpus that cannot fit names the token path
    instead of being read until the system kills the run."""
    import craft.data.text as text

    (tmp_path / "big.txt").write_text("x = 1\n" * 20_000)  # 120 KB: about 4 MB in memory
    config = TextConfig(path=str(tmp_path / "big.txt"), block_size=8, batch_size=2)
    monkeypatch.setattr(text, "read_corpus", lambda paths: pytest.fail("read although it cannot fit"))
    monkeypatch.setattr(text, "available_memory", lambda: 1_000_000)
    with pytest.raises(ValueError, match=r'^data.path: 0.1 MB of text, .*kind = "text" \(about [\d.]+ GB\), more than the '
                                         r"[\d.]+ GB free; stream it into token files instead: craft prepare tokens .*big.txt"):
        config.build("train", seed=0)
    monkeypatch.undo()
    monkeypatch.setattr(text, "available_memory", lambda: 10**9)
    assert config.build("train", seed=0).vocab_size == len(set("x = 1\n"))
