"""Tokenizers: word round trips, spacing, unknown words, files of either kind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import ROOT
from craft.data import BOUNDARY, CharTokenizer, UnknownWordsError, WordTokenizer, load_tokenizer
from craft.data import text as text_module
from craft.data import tokenizers as tokenizers_module

WORD = st.text(alphabet="abcxyzé☃😀.,'-_0", min_size=1, max_size=6)
SEPARATOR = st.sampled_from([" ", "\n"])


def test_text_module_still_exports_the_char_tokenizer():
    assert text_module.CharTokenizer is CharTokenizer is tokenizers_module.CharTokenizer
    assert text_module.UnknownCharactersError is tokenizers_module.UnknownCharactersError


def test_both_tokenizers_have_the_boundary_token():
    assert BOUNDARY == "\n"
    assert BOUNDARY in WordTokenizer.from_text("a red circle").words
    assert BOUNDARY in CharTokenizer.from_text("\na red circle\n").chars


@given(st.lists(st.tuples(WORD, SEPARATOR), max_size=12))
def test_word_round_trip_of_single_spaced_text(pieces):
    text = "".join(word + sep for word, sep in pieces)
    text = text.replace(" \n", "\n")  # decode puts no space before a newline
    tok = WordTokenizer.from_text(text)
    ids = tok.encode_tensor(text)
    assert ids.dtype == torch.int64 and tok.encode(text) == ids.tolist()
    assert [tok.words[i] for i in tok.encode(text)] == tokenizers_module.split_words(text)
    assert tok.decode(ids) == tok.decode(ids.tolist()) == text.rstrip(" ")


@given(st.text(alphabet="ab \t\n\r", max_size=30))
def test_decode_normalizes_spacing_and_encode_inverts_it(text):
    tok = WordTokenizer.from_text("a b aa ab ba bb")
    words = tokenizers_module.split_words(text)
    unknown = set(words) - set(tok.words)
    if unknown:  # longer runs of letters: rejected, and only then, naming them
        with pytest.raises(UnknownWordsError) as rejected:
            tok.encode(text)
        assert list(rejected.value.words) == sorted(unknown)
        return
    ids = tok.encode(text)
    decoded = tok.decode(ids)
    assert tok.encode(decoded) == ids and len(ids) == len(words)
    assert "  " not in decoded and " \n" not in decoded and "\n " not in decoded and "\t" not in decoded


def test_decode_spacing_around_boundaries():
    tok = WordTokenizer.from_text("a red circle")
    ids = tok.encode("\n a  red\tcircle \n\n")
    assert [tok.words[i] for i in ids] == ["\n", "a", "red", "circle", "\n", "\n"]
    assert tok.decode(ids) == "\na red circle\n\n"
    assert tok.encode("") == [] and tok.decode([]) == "" and tok.encode_tensor("").shape == (0,)


def test_words_are_sorted_distinct_and_case_sensitive():
    tok = WordTokenizer.from_text("The red circle the circle")
    assert tok.words == ("\n", "The", "circle", "red", "the") and tok.vocab_size == 5
    with pytest.raises(ValueError, match="sorted"):
        WordTokenizer(["b", "a", "\n"])
    with pytest.raises(ValueError, match="without whitespace"):
        WordTokenizer(["\n", "a b"])
    with pytest.raises(ValueError, match="without whitespace"):
        WordTokenizer(["\n", ""])


def test_unknown_words_are_named_in_one_line():
    tok = WordTokenizer.from_text("a red circle")
    with pytest.raises(UnknownWordsError, match=r"2 words not in the vocabulary: 'blue', 'square'.*training captions"):
        tok.encode("a blue square circle blue")
    with pytest.raises(UnknownWordsError) as info:
        tok.encode(" ".join(f"w{k:02d}" for k in range(13)))
    assert isinstance(info.value, ValueError) and info.value.words[:2] == ["w00", "w01"]
    assert "\n" not in str(info.value) and "'w09'" in str(info.value) and "'w10'" not in str(info.value)
    assert "3 more" in str(info.value)


def test_decode_refuses_ids_outside_the_vocabulary():
    tok = WordTokenizer.from_text("a b")
    with pytest.raises(ValueError, match=r"token id -100 .*\[0, 3\)"):
        tok.decode([0, -100])
    with pytest.raises(ValueError, match=r"1-D.*\(1, 2\)"):
        tok.decode(torch.zeros(1, 2, dtype=torch.int64))


TOKENIZERS = [WordTokenizer.from_text("a red\n😀 \"circle\\"), CharTokenizer.from_text("ab\n😀")]


@pytest.mark.parametrize("tok", TOKENIZERS)
def test_save_then_load_tokenizer_gives_the_same_tokenizer(tmp_path, tok):
    tok.save(tmp_path / "tokenizer.json")
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    assert data == (
        {"kind": "word", "words": list(tok.words)} if isinstance(tok, WordTokenizer)
        else {"kind": "char", "chars": list(tok.chars)}
    )
    assert load_tokenizer(tmp_path / "tokenizer.json") == type(tok).load(tmp_path / "tokenizer.json") == tok


@pytest.mark.parametrize(
    ("content", "load", "match"),
    [
        (None, load_tokenizer, "no tokenizer file"),
        ("{not json", load_tokenizer, "not a tokenizer file"),
        ('{"kind": "bpe", "words": ["a"]}', load_tokenizer, r"\"kind\" is 'bpe', expected one of \['char', 'word'\]"),
        ('["a"]', load_tokenizer, "its \"kind\" is None"),
        ('{"kind": "char", "chars": ["a"]}', WordTokenizer.load, "not a word tokenizer"),
        ('{"kind": "word", "words": "a"}', load_tokenizer, "not a word tokenizer"),
        ('{"kind": "word", "words": ["b", "a"]}', load_tokenizer, "sorted"),
        ('{"kind": "word", "words": [3]}', WordTokenizer.load, "without whitespace"),
        ('{"kind": "word", "words": ["a"]}', CharTokenizer.load, "not a character tokenizer"),
    ],
)
def test_load_errors_name_the_file_in_one_line(tmp_path, content, load, match):
    path = tmp_path / "tokenizer.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# -- subword tokenizers (craft.data.bpe) ------------------------------------

BPE_CORPUS = ["def add(a, b):\n    return a + b\n", "class Point:\n    x: int = 0\n", "héllo wörld ☃ 😀\n"] * 20


@pytest.fixture(scope="module")
def bpe_tok():
    pytest.importorskip("tokenizers")
    from craft.data.bpe import train_bpe

    return train_bpe(iter(BPE_CORPUS), 300)


def test_bpe_trains_to_its_vocab_size_and_learns_merges(bpe_tok):
    from craft.data.bpe import END_OF_TEXT

    assert bpe_tok.vocab_size == 300 and bpe_tok.eot == 0 and bpe_tok.decode([0]) == END_OF_TEXT
    text = "def add(a, b):\n    return a + b\n"
    assert len(bpe_tok.encode(text)) < len(text.encode("utf-8")) / 2  # merges, not bytes


@given(st.text(max_size=40))
def test_bpe_round_trips_any_text_byte_level(bpe_tok, text):
    ids = bpe_tok.encode(text)
    assert all(0 <= i < bpe_tok.vocab_size for i in ids)
    assert bpe_tok.decode(ids) == bpe_tok.decode(torch.tensor(ids)) == text


@given(st.lists(st.text(max_size=40), max_size=6))
def test_bpe_encode_batch_gives_each_texts_own_ids(bpe_tok, texts):
    """encode_batch (what craft prepare tokens writes, without the offsets encode works out) is encode, text by text."""
    assert bpe_tok.encode_batch(texts) == [bpe_tok.encode(t) for t in texts]


def test_bpe_reads_a_special_token_in_the_text_as_ordinary_text(bpe_tok):
    """As tiktoken's encode_ordinary: "<|endoftext|>" written in a file does not end a document."""
    ids = bpe_tok.encode("docs mention <|endoftext|> here")
    assert bpe_tok.eot not in ids and bpe_tok.decode(ids) == "docs mention <|endoftext|> here"
    assert bpe_tok.eot not in bpe_tok.encode_batch(["a <|endoftext|>", "b"])[0]


def test_bpe_saves_the_libraries_own_tokenizer_json(tmp_path, bpe_tok):
    import tokenizers

    bpe_tok.save(tmp_path / "tokenizer.json")
    assert load_tokenizer(tmp_path / "tokenizer.json") == bpe_tok
    other = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))  # another tool reads it as is
    assert other.encode("return a + b").ids == bpe_tok.encode("return a + b")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        bpe_tok.decode([300])


def test_a_tokenizer_is_saved_as_a_file_when_loading_that_file_gives_it_back(tmp_path, bpe_tok):
    from craft.data.bpe import train_bpe
    from craft.data.tokenizers import saved_as

    other_bpe = train_bpe(iter(BPE_CORPUS[1:]), 280)
    for tok, other in [*zip(TOKENIZERS, TOKENIZERS[::-1]), (CharTokenizer.from_text("ab"), CharTokenizer.from_text("ba!")),
                       (bpe_tok, other_bpe)]:
        tok.save(tmp_path / "tokenizer.json")
        assert saved_as(tok, tmp_path / "tokenizer.json")
        assert saved_as(load_tokenizer(tmp_path / "tokenizer.json"), tmp_path / "tokenizer.json")  # a resumed run's
        assert not saved_as(other, tmp_path / "tokenizer.json")


def test_a_missing_package_names_the_extra_to_install(monkeypatch):
    import sys

    from craft.data import bpe

    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match=r"pip install 'craft\[bpe\]'") as caught:
        bpe.train_bpe(iter(["a"]), 300)
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)  # the CLI's one line


def test_tiktoken_without_local_files_says_how_and_never_downloads(tmp_path, monkeypatch):
    pytest.importorskip("tiktoken")
    import socket

    from craft.data.bpe import TiktokenTokenizer

    def no_network(*args, **kwargs):
        raise AssertionError("tiktoken reached for the network")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ValueError, match=r"'r50k_base' are not in its cache .* set TIKTOKEN_CACHE_DIR") as caught:
        TiktokenTokenizer("r50k_base")
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="unknown tiktoken encoding 'gpt3'; known: .*gpt2"):
        TiktokenTokenizer("gpt3")


ROUND_TRIP = """
import json, sys
from craft.data import load_tokenizer
from craft.data.bpe import TiktokenTokenizer
from craft.data.text_units import text_units

tok = TiktokenTokenizer(sys.argv[1])
texts = ["def the(self):\\n    return self.x", "héllo ☃ 😀 <|endoftext|>", ""]
ids = [tok.encode(text) for text in texts]
tok.save(sys.argv[2])
unit, sizes = text_units(tok, tok.vocab_size)
print(json.dumps({"vocab_size": tok.vocab_size, "eot": tok.eot, "ids": ids, "the": tok.encode(" the"),
                  "decoded": [tok.decode(i) for i in ids], "loaded": load_tokenizer(sys.argv[2]) == tok,
                  "unit": unit, "eot_bytes": float(sizes[tok.eot]), "bytes": [float(sizes[i].sum()) for i in ids]}))
"""


def test_tiktoken_from_local_files_round_trips(local_tiktoken, tmp_path):
    """craft's tiktoken loading on an encoding whose files are only in the local cache (written by the
    fixture), in a fresh Python with the network cut off: encode, decode, save and load the json."""
    saved = tmp_path / "tokenizer.json"
    done = subprocess.run(
        [sys.executable, "-c", ROUND_TRIP, local_tiktoken, str(saved)], capture_output=True, text=True, timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["decoded"] == ["def the(self):\n    return self.x", "héllo ☃ 😀 <|endoftext|>", ""]
    assert out["loaded"] and json.loads(saved.read_text()) == {"kind": "tiktoken", "encoding": "craft_test"}
    assert out["eot"] == out["vocab_size"] - 1 > 256 and out["the"] == [258]  # " t", " th", " the": merges 256-258
    assert out["eot"] not in out["ids"][1]  # the text "<|endoftext|>" is ordinary text, not the special token
    assert len(out["ids"][0]) < len("def the(self):\n    return self.x")
    # bits per byte count each token's bytes (craft.data.text_units): they add up to the text's, end of text none
    assert out["unit"] == "byte" and out["eot_bytes"] == 0
    assert out["bytes"] == [len(text.encode()) for text in out["decoded"]]