"""Token files: `prepare_tokens` streams text into nanoGPT's layout; `kind = "tokens"` reads it by memmap."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from craft.data import load_tokenizer
from craft.data.prepare_tokens import prepare_tokens, token_dtype
from craft.data.text_pieces import is_cut, pieces, val_start
from craft.data.text import IGNORE_INDEX
from craft.data.tokens import TokensConfig, permuted

pytest.importorskip("tokenizers")

CODE = '''"""A module."""

import os
import sys
LIMIT = 3


@staticmethod
def walk(top, depth=0):
    """Yield every file."""
    for entry in os.scandir(top):
        if entry.is_dir():
            yield from walk(entry.path, depth + 1)
        else:
            yield entry.path  # café ☃ 😀


class Node:
    name: str = "x"

'''


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A folder of tokens prepared from a ~30 KB file in 512-byte chunks, and that file."""
    root = tmp_path_factory.mktemp("tokens")
    source = write(root / "src" / "code.py", CODE * 60)
    out = root / "out"
    prepare_tokens([str(source)], str(out), vocab_size=400, val_fraction=0.2, chunk_size=512)
    return out, source


# -- prepare ---------------------------------------------------------------------


def test_chunked_tokens_equal_the_whole_file_encoded_at_once(prepared):
    out, source = prepared
    meta = json.loads((out / "meta.json").read_text())
    tok = load_tokenizer(out / "tokenizer.json")
    data = source.read_bytes()
    assert len(list(pieces(str(source), 0, len(data), 512))) > 20  # read in many pieces
    cut = val_start(str(source), len(data), 0.2)
    assert data[cut - 1 : cut] == b"\n" and 0.8 * len(data) <= cut < len(data)  # a line start, after 80% of the bytes
    train = np.fromfile(out / "train.bin", dtype=np.uint16).tolist()
    val = np.fromfile(out / "val.bin", dtype=np.uint16).tolist()
    assert train == tok.encode(data[:cut].decode()) + [tok.eot]
    assert val == tok.encode(data[cut:].decode()) + [tok.eot]
    assert tok.vocab_size <= 400  # at most: a small text runs out of pairs to merge
    assert meta == {
        "dtype": "uint16", "vocab_size": tok.vocab_size, "tokenizer": "bpe", "tokenizer_file": "tokenizer.json", "eot": 0,
        "train_tokens": len(train), "val_tokens": len(val), "files": 1, "left_out_not_utf8": 0, "val_fraction": 0.2,
    }


@given(
    st.lists(st.sampled_from(["a", "b ", "\n", "    ", "x = 1", "é", "😀", "\t", "\r\n", "#"]), max_size=60),
    st.integers(1, 20),
)
def test_pieces_rebuild_the_text_and_cut_only_at_line_starts_or_between_words(tmp_path_factory, parts, chunk):
    text = "".join(parts)
    path = tmp_path_factory.mktemp("p") / "t.txt"
    path.write_bytes(text.encode())
    got = list(pieces(str(path), 0, len(text.encode()), chunk))
    assert "".join(got) == text
    for a, b in zip(got, got[1:]):
        line_start = is_cut((a + b).encode(), len(a.encode()))  # a newline between visible characters
        between_words = b[0] == " " and 0x21 <= ord(a[-1]) <= 0x7E and 0x21 <= ord(b[1]) <= 0x7E
        assert line_start or between_words


def test_folders_give_their_text_files_once_and_leave_out_what_is_not_utf8(tmp_path):
    write(tmp_path / "corpus" / "a.py", "x = 1\n")
    write(tmp_path / "corpus" / "sub" / "b.md", "# title\n")
    write(tmp_path / "corpus" / "notes.bin", "ignored\n")
    (tmp_path / "corpus" / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    write(tmp_path / "outside.txt", "secret\n")
    os.symlink(tmp_path / "outside.txt", tmp_path / "corpus" / "link.txt")
    line = prepare_tokens([str(tmp_path / "corpus")], str(tmp_path / "out"), vocab_size=260, val_fraction=0.5)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert (meta["files"], meta["left_out_not_utf8"]) == (2, 1) and "1 not UTF-8, left out" in line
    tok = load_tokenizer(tmp_path / "out" / "tokenizer.json")
    text = "".join(tok.decode(np.fromfile(tmp_path / "out" / f"{s}.bin", dtype=np.uint16).tolist()) for s in ("train", "val"))
    assert "x =" in text and " title" in text and "secret" not in text and "ignored" not in text
    assert text.count("<|endoftext|>") == 4  # one-line files: their val part starts at a space


def test_prepare_refuses_bad_options_and_an_already_prepared_folder(prepared, tmp_path):
    out, source = prepared
    with pytest.raises(ValueError, match="already holds prepared tokens"):
        prepare_tokens([str(source)], str(out))
    with pytest.raises(ValueError, match=r"--tokenizer='wordpiece': use bpe"):
        prepare_tokens([str(source)], str(tmp_path / "o"), tokenizer="wordpiece")
    with pytest.raises(ValueError, match="--val_fraction=1.0"):
        prepare_tokens([str(source)], str(tmp_path / "o"), val_fraction=1.0)
    with pytest.raises(ValueError, match="'nope': no such file or folder"):
        prepare_tokens(["nope"], str(tmp_path / "o"))
    with pytest.raises(ValueError, match="--encoding=gpt2: only for --tokenizer=tiktoken"):
        prepare_tokens([str(source)], str(tmp_path / "o"), encoding="gpt2")  # would be ignored by a BPE
    with pytest.raises(ValueError, match="--vocab_size=500: only for --tokenizer=bpe"):
        prepare_tokens([str(source)], str(tmp_path / "o"), tokenizer="tiktoken", vocab_size=500)
    assert not (tmp_path / "o").exists()


def test_a_saved_tokenizer_encodes_other_text_and_trains_nothing(prepared, tmp_path, monkeypatch):
    """--tokenizer=PATH (a token folder, or its tokenizer.json): a test set's ids are the text encoded with
    that tokenizer, and OUT's tokenizer.json is the same file, so a run trained on the folder reads them as its own."""
    from craft.data import bpe

    out, _ = prepared
    monkeypatch.setattr(bpe, "train_bpe", lambda *a, **k: pytest.fail("a saved tokenizer trains no BPE"))
    text = "def other(y):\n    return [y, 'é', '<|endoftext|>']\n" * 40  # the special token's text is text
    source = write(tmp_path / "test" / "other.py", text)
    tok = load_tokenizer(out / "tokenizer.json")
    for saved in (out, out / "tokenizer.json"):
        test = tmp_path / f"from-{saved.name}"
        line = prepare_tokens([str(source)], str(test), tokenizer=str(saved), val_fraction=0.25)
        assert (test / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
        cut = val_start(str(source), len(text.encode()), 0.25)
        train = np.fromfile(test / "train.bin", dtype=np.uint16).tolist()
        val = np.fromfile(test / "val.bin", dtype=np.uint16).tolist()
        assert train == tok.encode(text.encode()[:cut].decode()) + [tok.eot]
        assert val == tok.encode(text.encode()[cut:].decode()) + [tok.eot]
        meta = json.loads((test / "meta.json").read_text())
        assert meta["tokenizer"] == "bpe" and meta["vocab_size"] == tok.vocab_size and meta["eot"] == tok.eot
        assert meta["tokenizer_from"] == str((out / "tokenizer.json").resolve())
        assert f"encoded with {out / 'tokenizer.json'}" in line
        config = TokensConfig(path=str(test), block_size=8, batch_size=2)
        assert config.resolve() == (tok.vocab_size, "uint16", tok)


def test_options_a_saved_tokenizer_would_ignore_are_refused(prepared, tmp_path):
    out, source = prepared
    with pytest.raises(ValueError, match=r"^--vocab_size=300: not with --tokenizer=.*, a saved tokenizer used as it is"):
        prepare_tokens([str(source)], str(tmp_path / "o"), tokenizer=str(out), vocab_size=300)
    with pytest.raises(ValueError, match=r"^--encoding=gpt2: not with --tokenizer="):
        prepare_tokens([str(source)], str(tmp_path / "o"), tokenizer=str(out), encoding="gpt2")
    with pytest.raises(ValueError, match=r"the folder has no tokenizer.json; give a run folder"):
        prepare_tokens([str(source)], str(tmp_path / "o"), tokenizer=str(source.parent))
    chars = tmp_path / "chars.json"
    chars.write_text('{"kind": "char", "chars": ["a", "b"]}')
    with pytest.raises(ValueError, match=r"is a CharTokenizer, not a BPE or tiktoken tokenizer"):
        prepare_tokens([str(source)], str(tmp_path / "o"), tokenizer=str(chars))
    assert not (tmp_path / "o").exists()


def test_text_that_cannot_fill_both_splits_is_refused_before_anything_is_written(tmp_path):
    write(tmp_path / "empty.txt", "")
    with pytest.raises(ValueError, match="no text to tokenize: the 1 file given is empty"):
        prepare_tokens([str(tmp_path / "empty.txt")], str(tmp_path / "o"), vocab_size=260)
    write(tmp_path / "short" / "e.txt", "é")  # one character: nothing left to cut off for val
    with pytest.raises(ValueError, match=r"no val text: .*--val_fraction=0.1.*raise --val_fraction"):
        prepare_tokens([str(tmp_path / "short")], str(tmp_path / "o"), vocab_size=260)
    assert not (tmp_path / "o").exists()


def test_a_vocabulary_smaller_than_asked_is_said(tmp_path):
    write(tmp_path / "a.txt", "x = 1\ny = 2\n" * 20)
    line = prepare_tokens([str(tmp_path / "a.txt")], str(tmp_path / "o"), vocab_size=5000, val_fraction=0.5)
    assert "too few distinct pairs to merge for the 5,000 asked) from 1 file" in line


def test_ids_are_uint16_unless_the_vocabulary_needs_uint32():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


# -- reading ---------------------------------------------------------------------


@given(st.integers(1, 5000), st.integers(0, 2**40))
def test_permuted_is_a_bijection_of_the_positions(n, key):
    image = permuted(torch.arange(n), n, key)
    assert torch.equal(image.sort().values, torch.arange(n))


def test_train_windows_are_shifted_by_one_and_resume_bitwise(prepared):
    out, _ = prepared
    config = TokensConfig(path=str(out), block_size=16, batch_size=8)
    train = np.fromfile(out / "train.bin", dtype=np.uint16).astype(np.int64)
    unbroken = config.build("train", seed=3)
    assert (unbroken.vocab_size, unbroken.block_size) == (unbroken.tokenizer.vocab_size, 16)
    batches = [next(unbroken) for _ in range(6)]
    for index, b in enumerate(batches):
        windows = np.stack([train[s : s + 17] for s in unbroken.indices(0, index).tolist()])
        assert torch.equal(b["input"], torch.from_numpy(windows[:, :-1]))
        assert torch.equal(b["target"], torch.from_numpy(windows[:, 1:]))
    half = config.build("train", seed=3)
    for _ in range(3):
        next(half)
    resumed = config.build("train", seed=3)
    resumed.load_state_dict(half.state_dict())
    for b in batches[3:]:
        got = next(resumed)
        assert torch.equal(got["input"], b["input"]) and torch.equal(got["target"], b["target"])
    other = next(config.build("train", seed=4))
    assert not torch.equal(other["input"], batches[0]["input"])


def test_ranks_get_disjoint_shares_of_each_global_batch(prepared):
    out, _ = prepared
    config = TokensConfig(path=str(out), block_size=16, batch_size=8)
    whole = config.build("train", seed=0)
    ranks = [config.build("train", seed=0, rank=r, world_size=2) for r in (0, 1)]
    starts = [set(), set()]
    for _ in range(5):
        ours = [next(r) for r in ranks]
        assert torch.equal(torch.cat([b["input"] for b in ours]), next(whole)["input"])
    for r, it in enumerate(ranks):
        for index in range(5):
            starts[r] |= set(it.indices(0, index).tolist())
    assert len(starts[0]) == len(starts[1]) == 20 and not starts[0] & starts[1]


def test_an_epoch_visits_every_window_start_once(tmp_path):
    ids = np.arange(40, dtype=np.uint16)
    ids.tofile(tmp_path / "train.bin")
    ids.tofile(tmp_path / "val.bin")
    batches = TokensConfig(path=str(tmp_path), block_size=4, batch_size=4, vocab_size=64).build("train", seed=0)
    firsts = [int(x) for _ in range(batches.batches_per_epoch) for x in next(batches)["input"][:, 0]]
    assert sorted(firsts) == list(range(36))


def test_val_is_every_target_once_or_evenly_spaced_windows(prepared):
    out, _ = prepared
    val = torch.from_numpy(np.fromfile(out / "val.bin", dtype=np.uint16).astype(np.int64))
    every = TokensConfig(path=str(out), block_size=16, batch_size=8).build("val", seed=0)
    batches = list(every)
    targets = torch.cat([b["target"] for b in batches]).flatten()
    inputs = torch.cat([b["input"] for b in batches]).flatten()
    assert torch.equal(targets[targets != IGNORE_INDEX], val[1:])
    assert torch.equal(inputs[: len(val) - 1], val[:-1])
    assert every.evaluation == f"val: all {len(val) - 1:,} targets of val.bin, in {-(-(len(val) - 1) // 16)} windows of 16"
    few = TokensConfig(path=str(out), block_size=16, batch_size=8, val_windows=5).build("val", seed=0)
    windows = torch.cat([b["input"] for b in few])
    assert windows.shape == (5, 16) and torch.equal(windows[0], val[:16]) and torch.equal(windows[-1], val[-17:-1])
    assert few.evaluation.startswith("val: 5 evenly spaced windows of 16 tokens")


# -- nanoGPT's folders -------------------------------------------------------------


def nanogpt_folder(path, text: str, *, meta: bool):
    """What nanoGPT's shakespeare_char/prepare.py writes: uint16 ids of sorted characters, meta.pkl."""
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    path.mkdir(parents=True, exist_ok=True)
    cut = int(len(ids) * 0.9)
    ids[:cut].tofile(path / "train.bin")
    ids[cut:].tofile(path / "val.bin")
    if meta:
        stoi = {c: i for i, c in enumerate(chars)}
        with open(path / "meta.pkl", "wb") as f:
            pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    return len(chars)


def test_a_nanogpt_folder_reads_with_meta_pkl_or_toml_keys(tmp_path):
    vocab = nanogpt_folder(tmp_path / "chars", "to be or not to be\n" * 50, meta=True)
    batches = TokensConfig(path=str(tmp_path / "chars"), block_size=8, batch_size=4).build("train", seed=0)
    assert batches.vocab_size == vocab and batches.tokenizer.decode(next(batches)["input"][0])
    nanogpt_folder(tmp_path / "bare", "to be or not to be\n" * 50, meta=False)
    with pytest.raises(ValueError, match="data.vocab_size: .* has no meta.json or meta.pkl"):
        TokensConfig(path=str(tmp_path / "bare")).build("train", seed=0)
    bare = TokensConfig(path=str(tmp_path / "bare"), block_size=8, vocab_size=vocab, dtype="uint16")
    assert bare.build("train", seed=0).tokenizer is None
    with pytest.raises(ValueError, match="token id .* >= vocab_size 3; check data.vocab_size and data.dtype"):
        next(TokensConfig(path=str(tmp_path / "bare"), block_size=8, vocab_size=3).build("train", seed=0))


def test_meta_pkl_holding_objects_is_refused(tmp_path):
    nanogpt_folder(tmp_path, "ab" * 100, meta=False)
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 2, "evil": print}, f)
    with pytest.raises(ValueError, match="only plain dicts, strings and numbers are read"):
        TokensConfig(path=str(tmp_path)).build("train", seed=0)


def test_the_toml_must_agree_with_what_the_folder_states(prepared, tmp_path):
    out, _ = prepared
    with pytest.raises(ValueError, match=r"data.vocab_size = 500 but .* says \d+; remove data.vocab_size"):
        TokensConfig(path=str(out), vocab_size=500).build("train", seed=0)
    with pytest.raises(ValueError, match="not a folder"):
        TokensConfig(path=str(tmp_path / "missing")).build("train", seed=0)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "train.bin").write_bytes(b"abc")
    with pytest.raises(ValueError, match="3 bytes is not a whole number of uint16 tokens"):
        TokensConfig(path=str(tmp_path / "odd"), vocab_size=10).build("train", seed=0)


def test_a_byte_order_mark_is_not_tokenized(tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffx = 1\ny = 2\n".encode("utf-8"))
    prepare_tokens([str(tmp_path / "bom.txt")], str(tmp_path / "out"), vocab_size=260, val_fraction=0.4)
    tok = load_tokenizer(tmp_path / "out" / "tokenizer.json")
    train = tok.decode(np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16).tolist())
    val = tok.decode(np.fromfile(tmp_path / "out" / "val.bin", dtype=np.uint16).tolist())
    assert (train, val) == ("x = 1\n<|endoftext|>", "y = 2\n<|endoftext|>")


def test_a_file_of_one_long_line_is_split_and_cut_exactly(tmp_path):
    """text8's layout: no newline at all. The val split still gets the file's end, and pieces cut
    (after LONGEST chunks without a newline) before a space give the whole file's tokens."""
    words = ["anarchism", "originated", "as", "a", "term", "of", "abuse", "1793", "(first)", "café"]
    text = " ".join(words[(i * 7) % len(words)] for i in range(3000))
    source = tmp_path / "text8.txt"
    source.write_text(text, encoding="utf-8")
    size = len(text.encode())
    cut = val_start(str(source), size, 0.1)
    assert int(0.9 * size) <= cut < size and text.encode()[cut : cut + 1] == b" "
    got = list(pieces(str(source), 0, cut, chunk_size=16))
    assert len(got) > 1 and "".join(got) == text.encode()[:cut].decode()
    out = tmp_path / "out"
    prepare_tokens([str(source)], str(out), vocab_size=300, val_fraction=0.1, chunk_size=16)
    tok = load_tokenizer(out / "tokenizer.json")
    train = np.fromfile(out / "train.bin", dtype=np.uint16).tolist()
    val = np.fromfile(out / "val.bin", dtype=np.uint16).tolist()
    assert train == tok.encode(text.encode()[:cut].decode()) + [tok.eot]
    assert val == tok.encode(text.encode()[cut:].decode()) + [tok.eot] and len(val) > 100


def test_an_existing_token_folder_is_not_overwritten_without_the_flag(tmp_path):
    """nanoGPT's folder has train.bin and val.bin but no meta.json: still someone's data."""
    nanogpt_folder(tmp_path / "ng", "to be or not to be\n" * 50, meta=False)
    before = (tmp_path / "ng" / "train.bin").read_bytes()
    write(tmp_path / "a.txt", CODE)
    with pytest.raises(ValueError, match=r"already holds prepared tokens \(train.bin, val.bin\).*--overwrite"):
        prepare_tokens([str(tmp_path / "a.txt")], str(tmp_path / "ng"), vocab_size=300)
    assert (tmp_path / "ng" / "train.bin").read_bytes() == before
    prepare_tokens([str(tmp_path / "a.txt")], str(tmp_path / "ng"), vocab_size=300, overwrite=True)
    assert (tmp_path / "ng" / "meta.json").is_file()
    with pytest.raises(ValueError, match="is a file; OUT must be a folder"):
        prepare_tokens([str(tmp_path / "a.txt")], str(tmp_path / "a.txt"), vocab_size=300)


def test_glob_patterns_name_files_and_out_inside_a_source_is_not_read(tmp_path):
    write(tmp_path / "texts" / "one.txt", "x = 1\n")
    write(tmp_path / "texts" / "deep" / "two.txt", "y = 2\n")
    write(tmp_path / "texts" / "skip.md", "# not matched\n")
    out = tmp_path / "texts" / "tokens"
    prepare_tokens([str(tmp_path / "texts" / "**" / "*.txt")], str(out), vocab_size=260, val_fraction=0.5)
    assert json.loads((out / "meta.json").read_text())["files"] == 2
    prepare_tokens([str(tmp_path / "texts")], str(out), vocab_size=260, val_fraction=0.5, overwrite=True)
    assert json.loads((out / "meta.json").read_text())["files"] == 3  # not its own tokenizer.json and meta.json
    with pytest.raises(ValueError, match="'.*nomatch/\\*.txt': the pattern matches no file or folder"):
        prepare_tokens([str(tmp_path / "nomatch" / "*.txt")], str(tmp_path / "o"))
    with pytest.raises(ValueError, match="every source file is inside OUT .*; write the tokens to a folder of their own"):
        prepare_tokens([str(tmp_path / "texts" / "one.txt")], str(tmp_path / "texts"), overwrite=True)


def test_an_empty_token_file_says_so(tmp_path):
    nanogpt_folder(tmp_path, "ab" * 100, meta=True)
    (tmp_path / "val.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="val.bin: empty, no tokens"):
        TokensConfig(path=str(tmp_path), block_size=4, batch_size=2).build("val", seed=0)


def test_a_missing_token_folder_says_how_to_write_one(tmp_path):
    with pytest.raises(ValueError, match=r"not a folder; .*`craft prepare tokens SRC\.\.\. .*data/stdlib` writes one"):
        TokensConfig(path=str(tmp_path / "data" / "stdlib")).build("train", seed=0)


def test_a_path_that_is_no_token_folder_says_what_it_lacks_not_what_meta_would_say(tmp_path):
    """An image folder was told to set data.vocab_size (it has no meta.json); a file, to write tokens over itself
    (`craft prepare tokens SRC... README.md`): each now says what the path is and lacks."""
    (tmp_path / "shapes" / "circle").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"'.*shapes' has no train.bin and no val.bin: not a token folder; give the "
                       r"folder holding train.bin and val.bin \(`craft prepare tokens SRC\.\.\. NEW_FOLDER` writes one"):
        TokensConfig(path=str(tmp_path / "shapes")).build("val", seed=0)
    write(tmp_path / "README.md", "# a file\n")
    with pytest.raises(ValueError, match=r"README.md' is a file; data.path must be a folder of token files \(train.bin "
                       r"and val.bin\): `craft prepare tokens SRC\.\.\. NEW_FOLDER`"):
        TokensConfig(path=str(tmp_path / "README.md")).build("val", seed=0)
    vocab = nanogpt_folder(tmp_path / "chars", "to be or not to be\n" * 50, meta=True)
    with pytest.raises(ValueError, match=f"val.bin' is a token file; give the folder holding it: data.path = '{tmp_path / 'chars'}'"):
        TokensConfig(path=str(tmp_path / "chars" / "val.bin")).build("val", seed=0)
    (tmp_path / "chars" / "train.bin").unlink()  # a test set needs val.bin alone
    assert TokensConfig(path=str(tmp_path / "chars"), block_size=8).build("val", seed=0).vocab_size == vocab
    with pytest.raises(ValueError, match="'.*chars' has no train.bin: not a token folder"):
        TokensConfig(path=str(tmp_path / "chars"), block_size=8).build("train", seed=0)


def test_an_interrupted_prepare_leaves_no_partial_files(tmp_path, monkeypatch):
    import craft.data.prepare_tokens as prep

    write(tmp_path / "a.txt", CODE * 20)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "flush", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_tokens([str(tmp_path / "a.txt")], str(tmp_path / "out"), vocab_size=300, chunk_size=256)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_ids_of_another_width_than_stated_are_refused_not_trained_on(prepared, tmp_path):
    """uint16 ids rewritten as uint32 read (as meta.json's uint16) as each id and a 0: every window stays
    in the vocabulary, so only the count meta.json states, or the zeros, show it."""
    out, _ = prepared
    wide = tmp_path / "wide"
    wide.mkdir()
    for name in ("meta.json", "tokenizer.json"):
        (wide / name).write_bytes((out / name).read_bytes())
    for split in ("train", "val"):
        np.fromfile(out / f"{split}.bin", dtype=np.uint16).astype(np.uint32).tofile(wide / f"{split}.bin")
    with pytest.raises(ValueError, match=r"train.bin: [\d,]+ uint16 tokens .* but meta.json says train_tokens = [\d,]+; "
                                         r"the file holds uint32 ids"):
        TokensConfig(path=str(wide), block_size=8, batch_size=2).build("train", seed=0)
    (wide / "meta.json").unlink()  # nanoGPT's bare folder: the TOML's dtype is all there is
    (wide / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match=r'every second id is 0, as uint32 ids read as uint16 are; set data.dtype = "uint32"'):
        TokensConfig(path=str(wide), block_size=8, batch_size=2, vocab_size=400, dtype="uint16").build("val", seed=0)
    batches = TokensConfig(path=str(wide), block_size=8, batch_size=2, vocab_size=400, dtype="uint32").build("train", seed=0)
    assert next(batches)["input"].shape == (2, 8)
