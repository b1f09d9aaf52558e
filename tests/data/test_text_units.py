"""Text units (tiktoken's: tests/data/test_tokenizers.py, in a Python with its local files): how many characters or bytes each token id stands for, so bits are per character or byte."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from craft.data.text_units import text_units
from craft.data.tokenizers import CharTokenizer, WordTokenizer

CORPUS = ["def f(x):\n    return x + 1\n", "héllo wörld ☃ 😀 日本語\n", "the cat sat on the mat\n"] * 20


@pytest.fixture(scope="module")
def bpe_tok():
    pytest.importorskip("tokenizers")
    from craft.data.bpe import train_bpe

    return train_bpe(iter(CORPUS), 300)


@given(st.text(max_size=60))
def test_a_byte_level_bpe_s_token_sizes_add_up_to_the_text_s_utf8_bytes(bpe_tok, text):
    unit, sizes = text_units(bpe_tok, bpe_tok.vocab_size)
    assert unit == "byte"
    assert int(sizes[bpe_tok.encode(text)].sum()) == len(text.encode("utf-8"))


def test_the_end_of_text_token_is_no_text_and_ids_past_the_tokenizer_are_none(bpe_tok):
    unit, sizes = text_units(bpe_tok, bpe_tok.vocab_size + 5)  # a padded vocabulary (data.vocab_size)
    assert len(sizes) == bpe_tok.vocab_size + 5 and sizes[bpe_tok.eot] == 0 and not sizes[bpe_tok.vocab_size:].any()


def test_characters_are_one_each_and_words_or_other_models_have_no_fixed_size(bpe_tok):
    chars = CharTokenizer.from_text("abc\n")
    unit, sizes = text_units(chars, chars.vocab_size)
    assert unit == "character" and sizes.tolist() == [1.0] * 4
    assert text_units(WordTokenizer.from_text("a red circle"), 4) is None
    assert text_units(None, 10) is None
    from craft.data.bpe import BPETokenizer

    data = json.loads(bpe_tok.json)
    data["decoder"] = {"type": "WordPiece", "prefix": "##", "cleanup": True}  # a token's text depends on its place
    assert text_units(BPETokenizer(json.dumps(data)), bpe_tok.vocab_size) is None
