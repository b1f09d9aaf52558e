"""What `craft prepare tokens SRC...` reads: each file once, and what it leaves out said, compressed files as such."""

from __future__ import annotations

import gzip
import os

import pytest

from craft.data.prepare_tokens import prepare_tokens
from craft.data.text_sources import source_files, utf8_files

pytest.importorskip("tokenizers")


def test_a_file_reached_by_two_names_is_read_once(tmp_path):
    (tmp_path / "corpus").mkdir()
    text = tmp_path / "corpus" / "a.txt"
    text.write_text("x = 1\n")
    os.symlink(text, tmp_path / "link.txt")
    names = [str(text), str(tmp_path / "corpus" / ".." / "corpus" / "a.txt"), str(tmp_path / "link.txt"),
             str(tmp_path / "corpus")]
    assert source_files(names) == [str(text)]


def test_a_folder_says_what_it_leaves_out(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("kept\n")
    (tmp_path / "book").write_text("no suffix\n")
    (tmp_path / "shard.txt.gz").write_bytes(gzip.compress(b"compressed\n"))
    assert source_files([str(tmp_path)]) == [str(tmp_path / "notes.txt")]
    err = capsys.readouterr().err
    assert f"left out of {tmp_path}: " in err and "name others one by one" in err
    assert "1 .gz file" in err and "1 file without a suffix" in err
    (tmp_path / "notes.txt").unlink()
    with pytest.raises(ValueError, match=r"no text files .* in this folder; found only 1 .*file.*, 1 .*file"):
        source_files([str(tmp_path)])


def test_compressed_files_are_named_as_such_with_the_fix(tmp_path, capsys):
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"some text\n" * 50))
    (tmp_path / "b.txt").write_text("plain text here\n" * 50)
    assert utf8_files([str(tmp_path / "a.txt.gz"), str(tmp_path / "b.txt")]) == [str(tmp_path / "b.txt")]
    assert "left out, compressed (gzip); decompress them first (gunzip -k FILE): " in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"no UTF-8 text in .*a.txt.gz'; they are compressed \(gzip\); decompress"):
        prepare_tokens([str(tmp_path / "a.txt.gz")], str(tmp_path / "out"), vocab_size=260)
