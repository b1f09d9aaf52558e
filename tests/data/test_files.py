"""Hostile image folders: links, loops, FIFOs, decompression bombs, files that lie about their kind, formats."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from craft.data import CaptionFolderConfig, ImageFolderConfig
from craft.data.files import MAX_PIXELS, find_files, read_file, sniff
from craft.data.images import list_images, read_image

ROOT = Path(__file__).resolve().parents[2]
needs_links = pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="POSIX links")


def solid(path: Path, value: int, size: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, value, value)).save(path)
    return path


def two_classes(root: Path) -> None:
    for k in range(2):
        solid(root / "a" / f"a_{k}.png", 10 + k)
        solid(root / "b" / f"b_{k}.png", 20 + k)


def in_subprocess(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter: a hang is a timeout, not a stuck test run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)


# -- links, loops, FIFOs ---------------------------------------------------


@needs_links
def test_a_link_up_to_the_root_does_not_relabel_another_class(tmp_path):
    two_classes(tmp_path)
    (tmp_path / "a" / "up").symlink_to("..")
    (tmp_path / "a" / "sideways").symlink_to("../b")
    listing = list_images(tmp_path)
    by_class = {n: sorted(Path(f).name for f, m in zip(listing.files, listing.names) if m == n) for n in "ab"}
    assert by_class == {"a": ["a_0.png", "a_1.png"], "b": ["b_0.png", "b_1.png"]}
    assert listing.left_out["links out of the folder"] == 2


@needs_links
def test_link_loops_end_and_each_real_folder_is_read_once(tmp_path):
    two_classes(tmp_path)
    for name in ("self1", "self2"):
        (tmp_path / "a" / name).symlink_to(".")
    (tmp_path / "b" / "sub").mkdir()
    solid(tmp_path / "b" / "sub" / "b_9.png", 30)
    (tmp_path / "b" / "again").symlink_to("sub")  # inside the class folder: followed, but read once
    (tmp_path / "b" / "loop1").symlink_to("loop2")
    (tmp_path / "b" / "loop2").symlink_to("loop1")
    code = f"from craft.data.images import list_images; print(len(list_images({str(tmp_path)!r}).files))"
    result = in_subprocess(code)  # today: two self-links make the walk exponential (it never ends)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["5"]
    listing = list_images(tmp_path)
    assert listing.left_out["repeated folders"] == 3 and listing.left_out["broken links"] == 2


@needs_links
def test_links_inside_the_folder_or_to_data_elsewhere_are_followed_and_the_root_may_be_a_link(tmp_path):
    two_classes(tmp_path / "real")
    (tmp_path / "elsewhere").mkdir()
    solid(tmp_path / "elsewhere" / "a_7.png", 40)
    (tmp_path / "real" / "a" / "out.png").symlink_to(tmp_path / "elsewhere" / "a_7.png")
    (tmp_path / "real" / "a" / "twin.png").symlink_to("a_0.png")  # the same file twice: listed once
    (tmp_path / "link").symlink_to("real")
    listing = list_images(tmp_path / "link")
    assert [Path(f).name for f in listing.files] == ["a_0.png", "a_1.png", "out.png", "b_0.png", "b_1.png"]
    assert listing.left_out == {"repeated files": 1}


@needs_links
@pytest.mark.parametrize("labels", ["folders", "prefix"])
def test_a_subset_made_of_links_to_data_elsewhere_keeps_every_class(tmp_path, labels):
    """A subset built with ln -s (class folders or files linked to a dataset kept elsewhere): the links were
    left out as 'links out of the folder', so the run trained on the one real class folder, or stopped."""
    two_classes(tmp_path / "store")
    solid(tmp_path / "store" / "c" / "c_0.png", 30)
    subset = tmp_path / "subset"
    subset.mkdir()
    if labels == "folders":
        (subset / "a").symlink_to(tmp_path / "store" / "a")  # a class folder kept elsewhere
        (subset / "b").mkdir()
        (subset / "b" / "b_0.png").symlink_to(tmp_path / "store" / "b" / "b_0.png")  # a file kept elsewhere
        (subset / "b" / "b_1.png").symlink_to(tmp_path / "store" / "b" / "b_1.png")
        (subset / "b" / "up").symlink_to(tmp_path)  # above the subset: it holds every class; not followed
    else:
        for name in ("a_0.png", "b_1.png"):
            (subset / name).symlink_to(tmp_path / "store" / name[0] / name)
    listing = list_images(subset, labels)
    assert sorted(set(listing.names)) == ["a", "b"]
    assert len(listing.files) == (4 if labels == "folders" else 2)
    assert all(read_image(f).shape == (3, 4, 4) for f in listing.files)
    assert listing.left_out == ({"links out of the folder": 1} if labels == "folders" else {})


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_a_fifo_named_like_an_image_is_never_opened(tmp_path):
    two_classes(tmp_path)
    os.mkfifo(tmp_path / "a" / "x.png")
    code = (
        "from craft.data import ImageFolderConfig\n"
        f"ds = ImageFolderConfig(path={str(tmp_path)!r}, batch_size=4, image_size=4, val_fraction=0.0)"
        ".build('train', seed=0)\n"
        "print(ds.num_examples, len(next(ds)['label']))"
    )
    result = in_subprocess(code)  # today: the FIFO is listed and its read blocks forever
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["4", "4"]
    assert list_images(tmp_path).left_out["not regular files"] == 1
    with pytest.raises(ValueError, match=r"x\.png.*not a regular file"):  # read directly: refused, not blocked
        read_file(str(tmp_path / "a" / "x.png"))


# -- decompression bombs ---------------------------------------------------


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A valid PNG header claiming ``width x height`` RGB, and 4 MB of zero rows compressed to a few KB."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(bytes(4 * 2**20), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 8x8 JPEG whose frame header is rewritten to claim ``width x height``."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_a_png_claiming_60000_squared_pixels_is_refused_before_inflating(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb())
    with pytest.raises(ValueError, match=r"bomb\.png.*60000x60000 = 3,600,000,000 pixels.*data\.max_pixels"):
        read_image(str(path))
    with pytest.raises(ValueError, match="not enough image data"):  # raised past the limit: the next check
        read_image(str(path), max_pixels=60000 * 60000)


def test_a_jpeg_claiming_65000_squared_pixels_is_refused(tmp_path):
    path = tmp_path / "bomb.jpg"
    path.write_bytes(jpeg_claiming(65000, 65000))
    with pytest.raises(ValueError, match=r"bomb\.jpg.*65000x65000.*raise data\.max_pixels"):
        read_image(str(path))
    path.write_bytes(jpeg_claiming(8, 8))
    assert read_image(str(path)).shape == (3, 8, 8)


@pytest.mark.parametrize("head", [b"\x89PNG\r\n\x1a\n", b"GIF89a"])
def test_a_damaged_header_is_damage_not_a_size_over_max_pixels(tmp_path, head):
    path = tmp_path / ("bad.png" if head[1:4] == b"PNG" else "bad.gif")
    path.write_bytes(head + b"garbage" * 10)  # read as a size: 1634886241x1734698849 (PNG), 24935x25202 (GIF)
    with pytest.raises(ValueError, match=r"bad\.(png|gif) \(its header is damaged\); replace or delete it") as raised:
        read_image(str(path))
    assert "max_pixels" not in str(raised.value)
    two_classes(tmp_path / "folder")
    (tmp_path / "folder" / "a" / f"a_9{path.suffix}").write_bytes(path.read_bytes())
    cfg = ImageFolderConfig(path=str(tmp_path / "folder"), batch_size=4, image_size=4, val_fraction=0.0,
                            skip_unreadable=True)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable.*a_9\.\w+ \(its header is damaged\)"):
        assert cfg.build("train", seed=0).num_examples == 4


def test_bombs_are_skipped_with_skip_unreadable_and_max_pixels_is_a_config_field(tmp_path):
    two_classes(tmp_path)
    (tmp_path / "a" / "a_9.png").write_bytes(png_bomb())
    cfg = ImageFolderConfig(path=str(tmp_path), batch_size=4, image_size=4, val_fraction=0.0, skip_unreadable=True)
    assert cfg.max_pixels == MAX_PIXELS == 89_478_485
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable.*max_pixels"):
        assert cfg.build("train", seed=0).num_examples == 4
    small = ImageFolderConfig(path=str(tmp_path), batch_size=4, image_size=4, val_fraction=0.0, max_pixels=15)
    with pytest.raises(ValueError, match=r"4x4 = 16 pixels, over data\.max_pixels = 15"):
        next(small.build("train", seed=0))
    assert CaptionFolderConfig(path=str(tmp_path), max_pixels=10).max_pixels == 10
    with pytest.raises(ValueError, match="must be >= 1"):
        ImageFolderConfig(path=str(tmp_path), max_pixels=0)


# -- files that are not what their name says -------------------------------


def animated_gif(size: int = 4, frames: int = 3) -> bytes:
    images = [Image.new("RGB", (size, size), (60 * k, 10, 200)) for k in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:])
    return buffer.getvalue()


def test_an_animated_gif_named_png_is_an_unreadable_file_not_a_stack_error(tmp_path):
    two_classes(tmp_path)
    (tmp_path / "a" / "a_2.png").write_bytes(animated_gif())
    cfg = ImageFolderConfig(path=str(tmp_path), batch_size=5, image_size=4, val_fraction=0.0, num_threads=0)
    with pytest.raises(ValueError, match=r"a_2\.png.*holds a GIF image but its name says PNG; rename it to \.gif"):
        next(cfg.build("train", seed=0))
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        skipping = ImageFolderConfig(**{**cfg.__getstate__(), "skip_unreadable": True, "batch_size": 4})
        assert skipping.build("train", seed=0).num_examples == 4


def test_an_animated_gif_named_gif_gives_its_first_frame(tmp_path):
    path = tmp_path / "moving.gif"
    path.write_bytes(animated_gif())
    assert torch.equal(read_image(str(path)), pillow_pixels(path, "RGB"))  # Pillow opens at the first frame
    assert read_image(str(path), channels=1).shape == (1, 4, 4)


# -- formats ---------------------------------------------------------------


def noise(size: tuple[int, int] = (53, 37), seed: int = 0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=generator)
    return Image.fromarray(pixels.numpy(), "RGB")


def pillow_pixels(path: Path, mode: str) -> torch.Tensor:
    """Pillow's decode of ``path`` converted to ``mode``, as an export's preprocessing.json says to read it: a
    colour JPEG's gray is its RGB's (``convert("L")``), not libjpeg's own luma plane (``draft``: up to 16 apart)."""
    with Image.open(path) as image:
        image = image.convert(mode)
        channels = len(image.getbands())
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        return pixels.view(image.height, image.width, channels).permute(2, 0, 1)


FORMATS = {  # suffix: (Pillow save options, largest difference from Pillow's own decode)
    ".png": ({}, 0),
    ".bmp": ({}, 0),
    ".tiff": ({}, 0),
    ".tif": ({"compression": "tiff_lzw"}, 0),
    ".gif": ({}, 0),
    ".webp": ({"lossless": True}, 0),
    ".jpg": ({"quality": 90}, 2),  # 0 with torchvision 0.29 and Pillow 13; other libjpeg builds may round apart
}


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_every_format_decodes_to_the_pixels_pillow_gives(tmp_path, suffix, mode):
    options, tolerance = FORMATS[suffix]
    path = tmp_path / f"image{suffix}"
    noise().save(path, **options)
    assert sniff(path.read_bytes()) is not None
    decoded = read_image(str(path), channels=len(mode))
    expected = pillow_pixels(path, mode)
    assert decoded.shape == expected.shape == (len(mode), 37, 53)
    assert (decoded.int() - expected.int()).abs().max() <= tolerance


def test_a_folder_of_every_format_trains_and_its_listing_says_what_it_found(tmp_path):
    (tmp_path / "a").mkdir()
    for k, suffix in enumerate(FORMATS):
        noise(seed=k).save(tmp_path / "a" / f"a_{k}{suffix}", **FORMATS[suffix][0])
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "logo.svg").write_text("<svg/>")
    listing = list_images(tmp_path)
    assert listing.summary() == (
        f"7 images in {tmp_path} (1 BMP, 1 GIF, 1 JPEG, 1 PNG, 2 TIFF, 1 WebP); "
        "left out 1 .svg file, 1 .txt file"
    )
    cfg = ImageFolderConfig(path=str(tmp_path), batch_size=7, image_size=8, val_fraction=0.0)
    train = cfg.build("train", seed=0)
    assert next(train)["image"].shape == (7, 3, 8, 8)
    assert train.summary == listing.summary()  # the loader can print it


def test_a_folder_of_only_unsupported_files_is_one_clear_line(tmp_path):
    for k in range(3):
        (tmp_path / f"drawing_{k}.svg").write_text("<svg/>")
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 8)
    for labels in ("prefix", "folders"):
        with pytest.raises(ValueError, match=r"no images .* found only 3 \.svg files, 1 \.mp4 file; add or convert some$"):
            list_images(tmp_path, labels)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "cat.svg").write_text("<svg/>")
    with pytest.raises(ValueError, match=r"class folder .*cat has no images .*\(1 \.svg file\)"):
        list_images(tmp_path)


def test_find_files_counts_what_it_leaves_out(tmp_path):
    solid(tmp_path / "x.PNG", 1)
    (tmp_path / "README").write_text("hi")
    (tmp_path / ".hidden.png").write_bytes(b"")
    found = find_files(tmp_path)
    assert [Path(f).name for f in found.files] == ["x.PNG"]
    assert found.left_out == {"files without a suffix": 1}


@pytest.mark.parametrize("suffix, options", [(".webp", {"lossless": True}), (".webp", {"quality": 80}), (".gif", {}),
                                             (".bmp", {}), (".tiff", {}), (".png", {}), (".jpg", {})])  # fmt: skip
def test_every_format_is_checked_against_max_pixels_from_its_header(tmp_path, suffix, options):
    path = tmp_path / f"image{suffix}"
    noise((53, 37)).save(path, **options)
    assert read_image(str(path), max_pixels=53 * 37).shape == (3, 37, 53)
    with pytest.raises(ValueError, match=r"53x37 = 1,961 pixels, over data\.max_pixels = 1,960"):
        read_image(str(path), max_pixels=53 * 37 - 1)


@pytest.mark.parametrize("dtype", ["<u2", ">u2"])
def test_a_16_bit_tiff_decodes_as_the_same_16_bit_png_does(tmp_path, dtype):
    import numpy as np

    levels = np.arange(0, 65536, 4099, dtype=np.uint16).reshape(4, 4)  # 0 ... 61485: Pillow's convert clips them at 255
    Image.fromarray(levels.astype(dtype)).save(tmp_path / "wide.tiff")
    Image.fromarray(levels).save(tmp_path / "wide.png")
    for channels in (1, 3):
        tiff, png = read_image(str(tmp_path / "wide.tiff"), channels), read_image(str(tmp_path / "wide.png"), channels)
        assert tiff.shape == (channels, 4, 4) and torch.equal(tiff, png)
    assert read_image(str(tmp_path / "wide.tiff"), 1)[0, 0].tolist() == [0, 16, 32, 48]  # scaled, not clipped


def test_a_float_tiff_is_refused_by_name_not_decoded_to_black(tmp_path):
    import numpy as np

    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "depth.tiff")
    with pytest.raises(ValueError, match=r"depth\.tiff \(float pixels \(mode 'F'\) .*convert to 8 or 16 bits"):
        read_image(str(tmp_path / "depth.tiff"))


def test_an_animated_webp_gives_its_first_frame_as_a_gif_does(tmp_path):
    frames = [noise((16, 12), seed=k) for k in range(3)]
    frames[0].save(tmp_path / "moving.webp", save_all=True, append_images=frames[1:], lossless=True, duration=50)
    assert torch.equal(read_image(str(tmp_path / "moving.webp")), pillow_pixels(tmp_path / "moving.webp", "RGB"))
    assert read_image(str(tmp_path / "moving.webp"), channels=1).shape == (1, 12, 16)


def test_jpegs_named_jfif_or_jpe_as_browsers_save_them_are_read_not_left_out(tmp_path):
    """A folder of images saved from a browser holds .jfif files: they were left out as '.jfif files'."""
    (tmp_path / "a").mkdir()
    for k, suffix in enumerate((".jfif", ".JFIF", ".jpe", ".jpg")):
        noise(seed=k).save(tmp_path / "a" / f"a_{k}{suffix}", "JPEG")
    listing = list_images(tmp_path)
    assert len(listing.files) == 4 and not listing.left_out
    assert listing.summary() == f"4 images in {tmp_path} (4 JPEG)"
    assert read_image(listing.files[0]).shape == (3, 37, 53)


def test_what_a_mac_leaves_in_a_folder_or_zip_is_neither_a_class_nor_an_image(tmp_path):
    """A zip made on a Mac holds __MACOSX/<class>/._x.jpg beside the class folders: the run stopped with
    'class folder .../__MACOSX has no images'. .DS_Store and ._x.jpg were already skipped."""
    two_classes(tmp_path)
    for where in (tmp_path / "__MACOSX" / "a", tmp_path / "a" / "__MACOSX"):
        where.mkdir(parents=True)
        (where / "._a_0.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
        (where / "a_9.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "a" / "._a_0.png").write_bytes(b"\x00\x05\x16\x07")
    listing = list_images(tmp_path)
    assert sorted(set(listing.names)) == ["a", "b"] and len(listing.files) == 4 and not listing.left_out
    assert all(read_image(f).shape == (3, 4, 4) for f in listing.files)


def test_counts_of_one_read_in_the_singular():
    from collections import Counter

    from craft.data.listing import describe_left_out
    from craft.words import plural

    assert (plural(1, "image"), plural(32000, "image"), plural(1, "class", "classes"), plural(0, "class", "classes")) == (
        "1 image", "32,000 images", "1 class", "0 classes"
    )
    reasons = ["links out of the folder", "broken links", "not regular files", "files without a suffix", ".txt files",
               "repeated files", "repeated folders", "images beside the class folders"]
    assert describe_left_out(Counter({reason: 1 for reason in reasons})) == (
        "1 link out of the folder, 1 broken link, 1 file that is not regular, 1 file without a suffix, 1 .txt file, "
        "1 repeated file, 1 repeated folder, 1 image beside the class folders"
    )
    assert describe_left_out(Counter({".txt files": 2, "broken links": 3})) == "3 broken links, 2 .txt files"
