"""craft.data.pngcheck: damaged PNGs are found before torchvision's decoder crashes on them."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import pytest
from PIL import Image

from craft.data.images import read_image
from craft.data.pngcheck import _ADAM7, png_problem


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def zero_rows(width: int, height: int, depth: int = 8, colour: int = 2, interlace: int = 0) -> bytes:
    """The raw rows (filter byte 0, then zeros) of an image, in every Adam7 pass if interlaced."""
    bits = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour] * depth
    passes = [(width, height)] if not interlace else [
        (-(-(width - x0) // dx), -(-(height - y0) // dy)) for x0, y0, dx, dy in _ADAM7
    ]
    return b"".join((b"\x00" + bytes(-(-w * bits // 8))) * h for w, h in passes if w and h)


def png(width: int, height: int, depth: int = 8, colour: int = 2, interlace: int = 0, rows: bytes | None = None) -> bytes:
    """A PNG of zeros (``rows``: the raw filtered rows to compress instead)."""
    if rows is None:
        rows = zero_rows(width, height, depth, colour, interlace)
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace))
    palette = chunk(b"PLTE", bytes(48)) if colour == 3 else b""
    return b"\x89PNG\r\n\x1a\n" + header + palette + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"])
def test_pillows_pngs_pass(mode):
    out = io.BytesIO()
    Image.effect_mandelbrot((13, 7), (-2, -1.5, 1, 1.5), 30).convert(mode).save(out, "PNG")
    assert png_problem(out.getvalue()) is None


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (13, 7), (9, 17)])
@pytest.mark.parametrize("depth, colour", [(1, 0), (4, 3), (8, 2), (16, 6)])
def test_interlaced_and_plain_pngs_pass_and_one_byte_short_does_not(size, depth, colour):
    for interlace in (0, 1):
        good = png(*size, depth, colour, interlace)
        assert png_problem(good) is None
        raw = zero_rows(*size, depth, colour, interlace)
        assert "not enough image data" in png_problem(png(*size, depth, colour, interlace, rows=raw[:-1]))


def test_a_bad_filter_byte_is_a_value_error_not_a_crash(tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(png(4, 2, rows=b"\x07" + bytes(12) + b"\x00" + bytes(12)))
    # In a child process: without the check, torchvision's decoder dies with SIGSEGV.
    code = f"from craft.data.images import read_image\ntry: read_image({str(path)!r})\nexcept ValueError as e: print(e)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "bad row filter byte" in result.stdout


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:-30], "truncated"),
    (lambda d: d.replace(b"IDAT", b"IDAT", 1)[:41] + bytes([d[41] ^ 1]) + d[42:], "CRC mismatch"),
])
def test_truncated_and_damaged_image_data(tmp_path, damage, message):
    path = tmp_path / "x.png"
    path.write_bytes(damage(png(8, 8)))
    with pytest.raises(ValueError, match=message):
        read_image(str(path))


@pytest.mark.parametrize("interlace", [0, 1])
def test_the_check_inflates_in_chunks_and_finds_a_bad_row_anywhere(monkeypatch, interlace):
    from craft.data import pngcheck

    monkeypatch.setattr(pngcheck, "CHUNK", 1000)  # rows of 301 bytes straddle every chunk boundary
    raw = bytearray(zero_rows(100, 40, interlace=interlace))
    assert png_problem(png(100, 40, interlace=interlace, rows=bytes(raw))) is None
    inflated = []
    real = zlib.decompressobj

    def counting():
        inflate = real()

        class Counted:
            def decompress(self, data, limit):
                out = inflate.decompress(data, limit)
                inflated.append(len(out))
                return out

            @property
            def unconsumed_tail(self):
                return inflate.unconsumed_tail

        return Counted()

    monkeypatch.setattr(pngcheck.zlib, "decompressobj", counting)
    assert png_problem(png(100, 40, interlace=interlace, rows=bytes(raw))) is None
    assert max(inflated) <= 1000 and sum(inflated) == len(raw)
    raw[len(raw) - 301] = 9  # the filter byte of the last row (of the last pass)
    assert "bad row filter byte" in png_problem(png(100, 40, interlace=interlace, rows=bytes(raw)))
