"""The pixels a model sees: phone photos stored turned (EXIF orientation), every pixel mode, as Pillow shows them."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from craft.data.decode import decode_bytes, upright

ORIENTATION = 0x0112  # the EXIF tag


def noise(width: int = 7, height: int = 5, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def encoded(image: Image.Image, fmt: str, orientation: int | None = None, **options) -> bytes:
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def as_pillow_shows(data: bytes) -> torch.Tensor:
    """``(3, H, W)``: Pillow's decode, turned upright by its EXIF orientation, converted to RGB."""
    with Image.open(io.BytesIO(data)) as image:
        shown = ImageOps.exif_transpose(image).convert("RGB")
    return torch.from_numpy(np.array(shown)).permute(2, 0, 1)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_turns_pixels_as_pillow_s_exif_transpose(orientation):
    stored = noise()
    data = encoded(stored, "PNG", orientation)
    pixels = torch.from_numpy(np.array(stored)).permute(2, 0, 1)
    assert torch.equal(upright(pixels, orientation), as_pillow_shows(data))


PHOTO_FORMATS = {  # how a phone or an export tool may store a photo, and the largest difference allowed
    "JPEG": ({"quality": 95}, 2),
    "PNG": ({}, 0),
    "WebP lossless": ({"lossless": True}, 0),
    "WebP": ({"quality": 95}, 3),
    "animated WebP": ({"lossless": True, "save_all": True, "append_images": [noise(seed=1)]}, 0),
    "TIFF": ({}, 0),
}


@pytest.mark.parametrize("orientation", [3, 6, 8, 5])
@pytest.mark.parametrize("fmt", PHOTO_FORMATS)
def test_a_photo_stored_turned_reaches_the_model_upright_in_every_format(fmt, orientation):
    """A phone stores a portrait photo as landscape rows plus an EXIF orientation. torchvision turned JPEG and
    PNG upright, Pillow a TIFF, but a WebP reached the model on its side: one decoder rule for all."""
    options, tolerance = PHOTO_FORMATS[fmt]
    data = encoded(noise(), "WEBP" if "WebP" in fmt else fmt, orientation, **options)
    decoded, expected = decode_bytes(data, fmt), as_pillow_shows(data)
    assert decoded.shape == expected.shape  # 6 and 8 (and 5): 7 rows of 5, not 5 of 7
    assert (decoded.int() - expected.int()).abs().max() <= tolerance
    assert decode_bytes(data, fmt, channels=1).shape == (1, *expected.shape[1:])


@pytest.mark.parametrize("orientation", [0, 9, 1000])
def test_an_orientation_outside_1_to_8_turns_nothing(orientation):
    stored = noise()
    for fmt in ("JPEG", "PNG", "WEBP"):
        assert decode_bytes(encoded(stored, fmt, orientation, quality=95), fmt).shape == (3, 5, 7)


def with_alpha(mode: str) -> Image.Image:
    """``noise()`` in ``mode`` ("LA" or "RGBA") with an alpha that varies from pixel to pixel."""
    alpha = Image.fromarray(np.random.default_rng(1).integers(0, 256, (5, 7), dtype=np.uint8), "L")
    image = noise().convert(mode)
    image.putalpha(alpha)
    return image


def palette(transparency: int | None = None) -> tuple[Image.Image, dict]:
    return noise().convert("P", palette=Image.Palette.ADAPTIVE, colors=16), (
        {} if transparency is None else {"transparency": transparency}
    )


PIXEL_MODES = {  # name: (image, Pillow format, save options)
    "CMYK JPEG": (noise().convert("CMYK"), "JPEG", {"quality": 95}),
    "YCbCr JPEG": (noise().convert("YCbCr"), "JPEG", {"quality": 95}),
    "gray JPEG": (noise().convert("L"), "JPEG", {"quality": 95}),
    "1-bit PNG": (noise().convert("1"), "PNG", {}),
    "1-bit TIFF": (noise().convert("1"), "TIFF", {}),
    "1-bit BMP": (noise().convert("1"), "BMP", {}),
    "palette PNG": (palette()[0], "PNG", {}),
    "palette PNG, a transparent colour": (palette(3)[0], "PNG", palette(3)[1]),
    "palette GIF": (palette()[0], "GIF", {}),
    "palette GIF, a transparent colour": (palette(3)[0], "GIF", palette(3)[1]),
    "palette GIF, transparent colour 0": (palette(0)[0], "GIF", palette(0)[1]),
    "LA PNG": (with_alpha("LA"), "PNG", {}),
    "RGBA PNG": (with_alpha("RGBA"), "PNG", {}),
    "RGBA WebP": (with_alpha("RGBA"), "WEBP", {"lossless": True}),
    "RGBA TIFF": (with_alpha("RGBA"), "TIFF", {}),
    "CMYK TIFF": (noise().convert("CMYK"), "TIFF", {}),
    "gray WebP": (noise().convert("L"), "WEBP", {"lossless": True}),
}


@pytest.mark.parametrize("name", PIXEL_MODES)
def test_every_pixel_mode_reaches_the_model_as_pillow_s_convert_rgb(name):
    """Alpha is dropped (the colour stored under it kept), gray and 1-bit repeated to three channels, CMYK and
    YCbCr converted. A GIF's transparent pixels came out as its background colour (torchvision's rule), not
    the palette's colour there as Pillow and a PNG's decoder give it, so an exported model's recipe
    (``preprocessing.json``: Pillow's convert) fed other pixels than training did."""
    image, fmt, options = PIXEL_MODES[name]
    data = encoded(image, fmt, **options)
    decoded, expected = decode_bytes(data, name), as_pillow_shows(data)
    assert decoded.shape == expected.shape == (3, 5, 7)
    assert torch.equal(decoded, expected)


def test_an_animated_gif_with_a_transparent_colour_gives_its_first_frame_as_pillow_shows_it():
    frames = [palette(3)[0], noise(seed=2).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], transparency=3, duration=50)
    assert torch.equal(decode_bytes(data, "moving.gif"), as_pillow_shows(data))
    assert decode_bytes(data, "moving.gif", channels=1).shape == (1, 5, 7)


def test_a_gif_whose_first_frame_leaves_part_of_the_canvas_gives_pillow_s_pixels_there():
    """A GIF may draw its first frame on part of its canvas; torchvision painted the rest the background
    colour, Pillow (an exported model's recipe) another palette colour."""
    import struct

    small = encoded(palette()[0].crop((0, 0, 4, 4)), "GIF", background=2)
    at = small.index(b"\x2c", 13 + 3 * 2 ** ((small[10] & 7) + 1))  # the first image, after the global palette
    data = bytearray(small)
    data[6:10] = struct.pack("<HH", 7, 5)  # the canvas: 7 x 5
    data[at + 1 : at + 5] = struct.pack("<HH", 2, 1)  # the frame at (2, 1)
    decoded, expected = decode_bytes(bytes(data), "offset.gif"), as_pillow_shows(bytes(data))
    assert decoded.shape == expected.shape == (3, 5, 7) and torch.equal(decoded, expected)


def raw_profile_png(orientation: int, also_exif_chunk: bool = False) -> bytes:
    """A PNG whose EXIF is in a zTXt 'Raw profile type exif' chunk, as ImageMagick writes it (and, asked, an
    eXIf chunk too)."""
    import binascii

    from PIL import PngImagePlugin

    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    raw = b"Exif\x00\x00" + exif.tobytes()
    digits = binascii.hexlify(raw).decode()
    text = f"\nexif\n{len(raw):8d}\n" + "\n".join(digits[k : k + 72] for k in range(0, len(digits), 72)) + "\n"
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", text, zip=True)
    options = {"exif": exif.tobytes()} if also_exif_chunk else {}
    return encoded(noise(), "PNG", pnginfo=info, **options)


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("also_exif_chunk", [False, True])
def test_a_png_with_its_exif_in_a_text_chunk_reaches_the_model_upright(orientation, also_exif_chunk):
    """ImageMagick keeps a converted photo's EXIF in a 'Raw profile type exif' text chunk: Pillow (and datasets'
    Image feature) turn it upright, torchvision read eXIf chunks only. Turned once, never twice."""
    data = raw_profile_png(orientation, also_exif_chunk)
    assert torch.equal(decode_bytes(data, "magick.png"), as_pillow_shows(data))


def gradient(size: int = 64, seed: int = 0) -> Image.Image:
    """A smooth colour gradient with noise: a chroma-subsampled JPEG's own luma plane differs from its RGB's gray."""
    x = np.linspace(0, 1, size)
    pixels = np.stack([np.outer(x, 1 - x) * 4 * 255, np.outer(1 - x, x) * 255, np.outer(x, x) * 255], -1)
    noisy = pixels.astype(int) + np.random.default_rng(seed).integers(-20, 20, pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


GRAY_CASES = {
    "JPEG": ("RGB", "JPEG", {"quality": 95}), "JPEG 4:2:0": ("RGB", "JPEG", {"quality": 50, "subsampling": 2}),
    "JPEG progressive": ("RGB", "JPEG", {"progressive": True}), "JPEG gray": ("L", "JPEG", {}),
    "JPEG CMYK": ("CMYK", "JPEG", {}), "PNG": ("RGB", "PNG", {}), "PNG RGBA": ("RGBA", "PNG", {}),
    "PNG gray": ("L", "PNG", {}), "PNG gray+alpha": ("LA", "PNG", {}), "PNG palette": ("P", "PNG", {}),
    "GIF": ("P", "GIF", {}), "WebP": ("RGB", "WEBP", {}), "BMP": ("RGB", "BMP", {}),
}


@pytest.mark.parametrize("case", GRAY_CASES)
def test_one_channel_is_pillow_s_convert_L_to_the_level(case):
    """channels = 1 decoded a colour JPEG as libjpeg's own luma plane (and a PNG by libpng's weights): up to 24
    levels from Pillow's convert("L"), which docs/vision.md and an export's preprocessing.json ("mode": "L") promise."""
    mode, fmt, options = GRAY_CASES[case]
    for seed in range(3):
        data = encoded(gradient(64 + 13 * seed, seed).convert(mode), fmt, **options)
        with Image.open(io.BytesIO(data)) as image:
            expected = torch.from_numpy(np.array(image.convert("L")))[None]
        assert torch.equal(decode_bytes(data, case, channels=1), expected), (case, seed)
