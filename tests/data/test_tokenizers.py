"""Tokenizers: word round trips, spacing, unknown words, files of either kind."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

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
