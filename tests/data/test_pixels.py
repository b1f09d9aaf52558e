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
