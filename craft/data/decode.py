"""Decoding image files: JPEG, PNG, WebP, BMP, GIF and TIFF to uint8 tensors of one size.

torchvision's decoder where it has one (JPEG, PNG, WebP, GIF), Pillow
otherwise (BMP, TIFF, animated WebP: its first frame, as for a GIF). The kind
is read from the content, not trusted from the name, and a header's pixel
count is checked before anything is inflated. Every kind that carries an EXIF
orientation (a phone's photo stored turned) comes out upright, as
``PIL.ImageOps.exif_transpose`` shows it.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings

import numpy as np
import torch
import torchvision.io  # noqa: F401  (registers the torch.ops.image decoders)
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode
from torchvision.transforms.v2 import functional as F

from craft.data.files import KINDS, MAX_PIXELS, ImageError, dimensions, read_file, shown, sniff, stored_gray
from craft.data.listing import Listing
from craft.data.pngcheck import png_problem
from craft.data.shapes import image_tensor
from craft.data.threads import data_threads
from craft.words import plural

_MODES = {1: ImageReadMode.GRAY, 3: ImageReadMode.RGB}

# The op behind torchvision.io.decode_image. The Python wrapper issues a
# DeprecationWarning on every call (torchvision 0.29 points to TorchCodec);
# per image, that costs more than decoding a 32x32 PNG and serializes the
# decoding threads on the warnings machinery.
_decode = torch.ops.image.decode_image



def read_image(path: str, channels: int = 3, max_pixels: int = MAX_PIXELS) -> Tensor:
    """uint8 ``(channels, H, W)`` of a JPEG, PNG, WebP, BMP, GIF (first frame) or TIFF (first page) file.

    Gray, RGBA and palette images are converted. Raises ValueError naming the
    file when it cannot be decoded: not a regular file, content of another
    kind than its suffix says (a GIF named ``.png``), a header claiming more
    than ``max_pixels`` pixels (checked before anything is inflated), damage.
    """
    named = KINDS.get(os.path.splitext(path)[1].lower())
    return decode_bytes(read_file(path), shown(path), channels, max_pixels, named=named)


def decode_bytes(
    data: bytes, name: str, channels: int = 3, max_pixels: int = MAX_PIXELS, *, named: str | None = None
) -> Tensor:
    """uint8 ``(channels, H, W)`` of the encoded image ``data``; ``name`` says where it came from in messages.

    ``named``: the kind the file's name claims (a value of ``KINDS``), checked against its content.
    """
    if not data:
        raise ImageError(f"cannot decode image {name} (empty file); replace or delete it")
    kind = sniff(data)
    if kind is None:
        raise ImageError(f"cannot decode image {name} (not a {', '.join(sorted(set(KINDS.values())))} file); "
                         f"replace or delete it")  # fmt: skip
    if named is not None and kind != named:
        raise ImageError(
            f"cannot decode image {name}: it holds a {kind} image but its name says {named}; "
            f"rename it to .{kind.lower()}, convert it, or delete it"
        )
    size = dimensions(data, kind)
    if size is not None and size[0] * size[1] > max_pixels:
        if header_damaged(data):  # garbage read as a size: damage, not an image too large
            raise ImageError(f"cannot decode image {name} (its header is damaged); replace or delete it")
        raise ImageError(
            f"cannot decode image {name}: its header claims {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, "
            f"over data.max_pixels = {max_pixels:,}; raise data.max_pixels to read it, or shrink or delete it"
        )
    by_pillow = (
        kind in ("BMP", "TIFF") or (kind == "WebP" and animated_webp(data)) or (kind == "GIF" and gif_by_pillow(data))
    )
    image = _decode_pillow(data, channels) if by_pillow else _decode_torchvision(data, channels, kind)
    if isinstance(image, str):
        raise ImageError(f"cannot decode image {name} ({image}); replace or delete it")
    if kind in ("WebP", "PNG"):  # torchvision turns JPEG and PNG (eXIf) upright, Pillow a TIFF; not these
        image = upright(image, unturned_orientation(data, kind))
    if image.dtype != torch.uint8:  # 16-bit PNGs and TIFFs decode to uint16
        image = F.to_dtype(image, torch.uint8, scale=True)
    if image.ndim != 3 or image.shape[0] != channels:  # never let an odd file reach torch.stack
        raise ImageError(
            f"cannot decode image {name}: it decodes to shape {tuple(image.shape)}, not ({channels}, H, W); "
            f"convert it or delete it"
        )
    return image


def header_damaged(data: bytes) -> bool:
    """Whether Pillow cannot read the header of ``data`` (it reads the header alone, and checks a PNG's
    IHDR checksum): then the size ``dimensions`` read from it is garbage. Asked only of sizes over ``max_pixels``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.open(io.BytesIO(data)).close()
    except Image.DecompressionBombError:  # read, and over Pillow's own limit too: a real size
        return False
    except Exception:  # Pillow raises many kinds (OSError, SyntaxError, struct.error ...) on damage
        return True
    return False


def gif_by_pillow(data: bytes) -> bool:
    """Whether GIF ``data``'s first frame has a transparent colour (a Graphic Control Extension's flag) or
    leaves part of the canvas uncovered. torchvision paints those pixels the GIF's background colour; Pillow
    (an exported model's recipe) keeps the palette's colour there, as a PNG's decoder does."""
    if len(data) < 13:
        return False
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)  # after the global palette
    while pos + 2 < len(data) and data[pos] == 0x21:  # extensions, up to the first image (0x2C)
        if data[pos + 1] == 0xF9 and data[pos + 2] >= 4 and pos + 3 < len(data) and data[pos + 3] & 1:
            return True
        pos += 2
        while pos < len(data) and data[pos]:  # the extension's sub-blocks, to the empty one
            pos += data[pos] + 1
        pos += 1
    if pos + 9 > len(data) or data[pos] != 0x2C:
        return False  # damage: torchvision says what
    left, top, width, height = struct.unpack("<HHHH", data[pos + 1 : pos + 9])
    canvas_width, canvas_height = struct.unpack("<HH", data[6:10])
    return (left, top) != (0, 0) or width < canvas_width or height < canvas_height


def animated_webp(data: bytes) -> bool:
    """Whether WebP ``data`` is animated (its VP8X header's animation flag): torchvision refuses those."""
    return data[12:16] == b"VP8X" and len(data) > 20 and bool(data[20] & 0x02)


def unturned_orientation(data: bytes, kind: str) -> int:
    """The EXIF orientation (1 to 8; 1: as stored) the decoder left unapplied: a WebP's (its VP8X header flags
    EXIF), a PNG's kept in a text chunk (``Raw profile type exif``, as ImageMagick writes it; torchvision reads
    an ``eXIf`` chunk only). Read by Pillow, as ``exif_transpose`` reads it."""
    if not ((kind == "WebP" and data[12:16] == b"VP8X" and len(data) > 20 and data[20] & 0x08)
            or (kind == "PNG" and png_text_exif(data))):  # fmt: skip
        return 1
    try:
        with Image.open(io.BytesIO(data)) as image:
            orientation = image.getexif().get(0x0112, 1)
    except Exception:  # damage: decoding has already said what it could; an unreadable tag turns nothing
        return 1
    return orientation if orientation in range(1, 9) else 1


def png_text_exif(data: bytes) -> bool:
    """Whether PNG ``data`` holds its EXIF in a ``Raw profile type exif`` text chunk and in no ``eXIf`` chunk."""
    pos, found = 8, False
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"eXIf":
            return False
        found = found or (kind in (b"tEXt", b"zTXt", b"iTXt") and data[pos + 8 : pos + 30] == b"Raw profile type exif\0")
        pos += 12 + length
    return found


def upright(image: Tensor, orientation: int) -> Tensor:
    """``(C, H, W)`` ``image`` stored with EXIF ``orientation``, turned as it is meant to be seen
    (as ``PIL.ImageOps.exif_transpose`` turns it); an orientation outside 1 to 8 turns nothing."""
    if orientation in (5, 6, 7, 8):  # the stored rows are the picture's columns
        image = image.transpose(-1, -2)
    flips = {2: (-1,), 3: (-1, -2), 4: (-2,), 6: (-1,), 7: (-1, -2), 8: (-2,)}.get(orientation)
    return image.flip(flips).contiguous() if flips else image


def _decode_torchvision(data: bytes, channels: int, kind: str) -> Tensor | str:
    """The decoded image, or why it failed.

    GIF: the first frame. One channel: a colour image is decoded RGB and its gray computed (``luma``).
    """
    if kind == "PNG":
        problem = png_problem(data)  # torchvision would crash on these: check first
        if problem is not None:
            return problem
    # Gray from colour is computed here, as Pillow's convert("L") computes it: libjpeg's own gray (a colour
    # JPEG's luma plane, before chroma upsampling) and libpng's differ from it by up to tens of levels.
    mode = _MODES[1 if channels == 1 and stored_gray(data, kind) else 3]
    try:
        image = _decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode.value, True)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return re.sub(r"^.*\.cpp:\d+,\s*", "", reason)  # the decoder's source location says nothing to a user
    image = image[0] if kind == "GIF" and image.ndim == 4 else image  # (frames, 3, H, W) when animated
    return luma(image) if channels == 1 and image.ndim == 3 and image.shape[0] == 3 else image


def luma(rgb: Tensor) -> Tensor:
    """uint8 ``(1, H, W)`` gray of uint8 ``(3, H, W)`` ``rgb`` by ITU-R 601-2, in Pillow's integer arithmetic
    (``convert("L")``: ``(R*19595 + G*38470 + B*7471 + 0x8000) >> 16``), so it equals Pillow's to the level."""
    if rgb.dtype != torch.uint8:  # a 16-bit PNG: to 8 bits first, as Pillow opens it
        rgb = F.to_dtype(rgb, torch.uint8, scale=True)
    r, g, b = rgb.to(torch.int32)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8)[None]


def _decode_pillow(data: bytes, channels: int) -> Tensor | str:
    """BMP, TIFF, animated WebP (torchvision decodes none of them) and GIFs with a transparent colour:
    the first frame, as Pillow converts it.

    16-bit gray comes back uint16 ``(channels, H, W)`` (scaled to 8 bits by the
    caller, as a 16-bit PNG is): Pillow's own conversion clips it at 255.
    32-bit integer and float pixels have no one scale to 8 bits: refused.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode.startswith("I;16"):
                gray = torch.from_numpy(np.asarray(image).astype(np.uint16))[None]  # (1, H, W)
                return gray.expand(channels, -1, -1).contiguous()
            if image.mode in ("I", "F") or image.mode.startswith("I;32"):
                kind = "float" if image.mode == "F" else "32-bit integer"
                return f"{kind} pixels (mode {image.mode!r}) have no one scale to 8 bits: convert to 8 or 16 bits"
            return image_tensor(image.convert("L" if channels == 1 else "RGB"))
    except Exception as e:  # Pillow raises many kinds (OSError, SyntaxError, struct.error ...) on damage
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def load_images(paths: list[str], *, image_size: int, channels: int = 3, max_pixels: int = MAX_PIXELS) -> Tensor:
    """uint8 ``(len(paths), channels, image_size, image_size)``: decoded (``read_image``), converted, resized."""
    return resize_stack([read_image(p, channels, max_pixels) for p in paths], image_size)


def resize_stack(images: list[Tensor], image_size: int) -> Tensor:
    """uint8 ``(len(images), C, image_size, image_size)``: each ``(C, H, W)`` resized (antialiased) and stacked."""
    size = [image_size, image_size]
    if all(im.shape == images[0].shape for im in images):
        # The common case (a folder of equal-sized images): one resize call for the batch.
        batch = torch.stack(images)
        return batch if batch.shape[-2:] == (image_size, image_size) else F.resize(batch, size, antialias=True)
    return torch.stack([F.resize(im, size, antialias=True) if im.shape[-2:] != tuple(size) else im for im in images])


def drop_unreadable(listing: Listing, channels: int, num_threads: int = 0, max_pixels: int = MAX_PIXELS) -> Listing:
    """``listing`` without the files ``read_image`` cannot decode; a warning counts them.

    Decodes every file once (in ``num_threads`` threads), so it costs one pass over the data.
    """

    def problem(path: str) -> str | None:
        try:
            read_image(path, channels, max_pixels)
        except (ValueError, OSError) as e:
            return str(e)
        return None

    if num_threads:
        with data_threads(num_threads, "craft-check") as pool:
            problems = list(pool.map(problem, listing.files))
    else:
        problems = [problem(p) for p in listing.files]
    bad = [m for m in problems if m is not None]
    if not bad:
        return listing
    if len(bad) == len(listing.files):
        raise ValueError(f"none of the images in {listing.folder} can be decoded ({plural(len(bad), 'file')}), e.g. {bad[0]}")
    warnings.warn(
        f"skipped {len(bad)} unreadable of {len(listing.files)} images in {listing.folder} (data.skip_unreadable), "
        f"e.g. {bad[0]}",
        stacklevel=2,
    )
    return listing.subset([i for i, m in enumerate(problems) if m is None])
