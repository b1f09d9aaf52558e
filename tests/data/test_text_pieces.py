"""A file read in pieces tokenizes as the whole file: the cuts, for every tokenizer's pattern, and their cost."""

from __future__ import annotations

from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from craft.data.text_pieces import is_cut, pieces, val_start

ALPHABET = ["a", "b ", "\n", "    ", "x = 1", "é", "😀", "\t", "\r\n", "#", "中文", "。", "\u3000", "\xa0", ")", "12345", "'s"]


def tiktoken_patterns() -> dict[str, str]:
    """Every tiktoken encoding's pre-tokenizing pattern, read without its files (never downloaded)."""
    pytest.importorskip("tiktoken")
    import tiktoken_ext.openai_public as public

    no_files = {"load_tiktoken_bpe": lambda *a, **k: {}, "data_gym_to_mergeable_bpe_ranks": lambda *a, **k: {}}
    with mock.patch.multiple(public, **no_files):
        return {name: make()["pat_str"].replace("$", r"\Z") for name, make in public.ENCODING_CONSTRUCTORS.items()}


@pytest.fixture(scope="module")
def pretokenizers():
    """name -> text -> its pre-tokens: Hugging Face's byte-level BPE and each tiktoken encoding's pattern."""
    tokenizers = pytest.importorskip("tokenizers")
    regex = pytest.importorskip("regex")
    byte_level = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    split = {"bpe": lambda text: [piece for piece, _ in byte_level.pre_tokenize_str(text)]}
    for name, pattern in tiktoken_patterns().items():
        split[name] = lambda text, p=regex.compile(pattern): p.findall(text)
    return split


def write_pieces(tmp_path_factory, text: str, chunk: int) -> list[str]:
    path = tmp_path_factory.mktemp("p") / "t.txt"
    path.write_bytes(text.encode())
    got = list(pieces(str(path), 0, len(text.encode()), chunk))
    assert "".join(got) == text
    return got


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(ALPHABET), max_size=80), st.integers(1, 24))
def test_pieces_pre_tokenize_as_the_whole_text_for_every_tokenizer(pretokenizers, tmp_path_factory, parts, chunk):
    """Cuts at a newline between visible characters (ASCII or not) or at a space between printable ones
    split no pre-token of a byte-level BPE nor of any tiktoken encoding: the pieces' tokens are the file's."""
    text = "".join(parts)
    got = write_pieces(tmp_path_factory, text, chunk)
    for name, split in pretokenizers.items():
        assert [t for piece in got for t in split(piece)] == split(text), name


def test_crlf_text_is_cut_every_chunk_not_held(tmp_path_factory):
    """\\r\\n line ends (a Windows corpus) have no newline between printable characters: the pieces are
    cut at spaces, about one chunk each, not held until 64 chunks have piled up."""
    text = "".join(f"x{i} = f({i}, 'a b')\r\n" for i in range(3000))
    got = write_pieces(tmp_path_factory, text, 256)
    assert len(got) > 150 and max(map(len, got)) <= 2 * 256


def test_text_in_other_scripts_is_cut_at_its_newlines(tmp_path_factory):
    """Chinese lines (no spaces, no ASCII beside the newline) are cut at a newline between their characters."""
    text = "".join(f"第{i}行的文字。\n他说：“好”\n" for i in range(2000))
    got = write_pieces(tmp_path_factory, text, 256)
    assert len(got) > 100 and max(len(p.encode()) for p in got) <= 2 * 256
    assert all(p.endswith("\n") for p in got[:-1])


@pytest.mark.parametrize(
    ("text", "cut"),
    [("a\nb", True), ("中\n文", True), ("。\n“", True), ("a\r\nb", False), ("a\n b", False), ("a \nb", False),
     ("a\n\u3000", False), ("\xa0\nb", False), ("a\n\n", False)],
)
def test_a_newline_is_a_cut_only_between_visible_characters(text, cut):
    data = text.encode()
    assert is_cut(data, data.index(b"\n") + 1) is cut


# -- where a file's val part begins --------------------------------------------


def test_a_short_files_last_word_is_not_cut_in_two(tmp_path):
    """Thousands of one-line files gave 'line 0 of a tiny fi' to train and 'le' to val, each followed by
    the end-of-text token: words that never occur, in both splits."""
    source = tmp_path / "tiny.txt"
    source.write_bytes(b"line 0 of a tiny file\n")
    assert val_start(str(source), 22, 0.1) == len(b"line 0 of a tiny")


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(st.text(st.sampled_from("abcé中"), min_size=1, max_size=12), min_size=2, max_size=30),
    fraction=st.sampled_from([0.05, 0.1, 0.3, 0.5]),
)
def test_a_file_without_line_starts_in_its_tail_is_cut_at_a_space(tmp_path_factory, words, fraction):
    """One line of words: the val part starts at a space, so no word is split between train and val."""
    data = (" ".join(words) + "\n").encode()
    source = tmp_path_factory.mktemp("line") / "line.txt"
    source.write_bytes(data)
    cut = val_start(str(source), len(data), fraction)
    if int(len(data) * (1 - fraction)) > 0:
        assert 0 < cut < len(data) and data[cut : cut + 1] == b" "
