"""Messy image folders and CSVs: every odd file decodes or is skipped with its reason; only a source that
cannot make a dataset fails, with one line saying what to do. All files are real, written by the tests."""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import FAST, ROOT, make_image, make_project, run_stage, stage_project
from lib import images, sources, splitting
from lib.errors import PipelineError

MAX_PIXELS = 50_000_000


def decode(path: Path, max_short_side: int = 256, max_pixels: int = MAX_PIXELS):
    return images.decode(path, max_short_side, max_pixels)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(path: Path, width: int, height: int, row: bytes, bit_depth: int = 8, color_type: int = 0, chunks: bytes = b"") -> Path:
    """A PNG written row by row (a 12000x9000 one costs a row of memory, not the image); every row is `row`.
    `chunks` go before the pixels (a palette: PLTE, its transparency: tRNS)."""
    z = zlib.compressobj(9)
    data = b"".join(z.compress(b"\0" + row) for _ in range(height)) + z.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))
                     + chunks + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b""))
    return path


def gray16_png(path: Path, width: int, height: int) -> Path:
    """16-bit grey: decoded as float64 at full size it took 26 bytes a pixel."""
    return png(path, width, height, (bytes(range(256)) * (2 * width // 256 + 1))[:2 * width], bit_depth=16)


def transparent_palette_png(path: Path, width: int, height: int) -> Path:
    """A palette with a transparent colour: converted to RGBA and composited at full size it took 17 bytes a pixel."""
    palette = png_chunk(b"PLTE", bytes(range(256)) * 3) + png_chunk(b"tRNS", bytes([0]) + bytes([255]) * 255)
    return png(path, width, height, (bytes(range(256)) * (width // 256 + 1))[:width], color_type=3, chunks=palette)


def jpeg_bytes(size=(64, 64), seed=0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def ppm_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, "PPM")
    return buffer.getvalue()


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"

# name -> (bytes of a file that has an image extension but is not a usable image, reason in the report)
BROKEN = {
    "empty.jpg": (b"", "empty file"),
    "truncated.jpg": (jpeg_bytes()[:600], "corrupt or truncated image"),
    "page.png": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "not a readable image"),
    "notes.JPG": (b"just some text\n", "not a readable image"),
    "netpbm.png": (ppm_bytes(), "not a readable image: the content is not JPEG, PNG"),  # only the whitelisted formats
    "vector.jpg": (EPS, "not a readable image"),  # the EPS plugin would run Ghostscript
}


@pytest.mark.parametrize("name", BROKEN)
def test_broken_files_are_unusable_with_the_reason(tmp_path, name):
    content, reason = BROKEN[name]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(images.Unusable, match=f"^{reason}"):
        decode(tmp_path / name)


def test_truncated_png_and_bad_crc_are_unusable(tmp_path):
    good = png(tmp_path / "good.png", 300, 200, bytes(range(256)) + bytes(44)).read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "crc.png").write_bytes(good[:-20] + bytes([good[-20] ^ 0xFF]) + good[-19:])
    for name in ("cut.png", "crc.png"):
        with pytest.raises(images.Unusable, match="^corrupt or truncated image"):
            decode(tmp_path / name)


def color_at(pixels: np.ndarray, y: int, x: int) -> tuple:
    return tuple(int(v) for v in pixels[y, x])


def test_every_color_mode_becomes_rgb(tmp_path):
    red = (220, 30, 30)
    cases = {}
    cases["gray.png"] = Image.new("L", (20, 10), 90)
    cases["bilevel.png"] = Image.new("1", (20, 10), 1)
    cases["palette.png"] = Image.new("RGB", (20, 10), red).convert("P", palette=Image.Palette.ADAPTIVE)
    transparent = Image.new("P", (20, 10), 0)
    transparent.putpalette([0, 0, 0, 255, 0, 0])
    transparent.info["transparency"] = 0
    cases["palette_alpha.png"] = transparent
    cases["rgba.png"] = Image.new("RGBA", (20, 10), (255, 0, 0, 0))  # fully transparent: white
    cases["la.png"] = Image.new("LA", (20, 10), (0, 255))
    cases["cmyk.jpg"] = Image.new("CMYK", (20, 10), (0, 255, 255, 0))  # red in CMYK
    cases["gray16.png"] = Image.fromarray(np.full((10, 20), 32896, np.uint16))  # 32896/65535 -> 128
    cases["float.tif"] = Image.fromarray(np.full((10, 20), 0.5, np.float32), "F")
    cases["rgb.bmp"] = Image.new("RGB", (20, 10), red)
    cases["rgb.webp"] = Image.new("RGB", (20, 10), red)
    cases["rgb.tiff"] = Image.new("RGB", (20, 10), red)
    expected = {"gray.png": (90, 90, 90), "bilevel.png": (255, 255, 255), "palette.png": red, "palette_alpha.png": (255, 255, 255),
                "rgba.png": (255, 255, 255), "la.png": (0, 0, 0), "cmyk.jpg": (255, 0, 0), "gray16.png": (128, 128, 128),
                "float.tif": (128, 128, 128), "rgb.bmp": red, "rgb.webp": red, "rgb.tiff": red}
    for name, im in cases.items():
        im.save(tmp_path / name, **({"lossless": True} if name.endswith(".webp") else {}))
        pixels, size = decode(tmp_path / name)
        assert pixels.shape == (10, 20, 3) and pixels.dtype == np.uint8 and size == (20, 10), name
        assert np.allclose(color_at(pixels, 5, 10), expected[name], atol=6), f"{name}: {color_at(pixels, 5, 10)}"


def test_16_bit_rgb_png_is_scaled_to_8_bits(tmp_path):
    row = struct.pack(">3H", 65535, 32896, 0) * 16  # 16 pixels of (1.0, 0.5, 0.0)
    pixels, _ = decode(png(tmp_path / "deep.png", 16, 4, row, bit_depth=16, color_type=2))
    assert color_at(pixels, 2, 8) == (255, 128, 0)


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (12, 12), (255, 0, 0)), Image.new("RGB", (12, 12), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(tmp_path / "anim.gif").n_frames == 2
    pixels, _ = decode(tmp_path / "anim.gif")
    assert pixels[..., 0].min() > 200 and pixels[..., 2].max() < 50


@pytest.mark.parametrize("orientation, top_color", [(1, "red left"), (3, "blue left"), (6, "red top"), (8, "blue top")])
def test_exif_rotated_photos_are_upright(tmp_path, orientation, top_color):
    stored = np.zeros((30, 60, 3), np.uint8)
    stored[:, :30] = (255, 0, 0)  # left half red, right half blue, as stored in the file
    stored[:, 30:] = (0, 0, 255)
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    pixels, size = decode(tmp_path / "photo.jpg")
    first_half = pixels[:, :15] if top_color.endswith("left") else pixels[:15]
    assert size == ((60, 30) if orientation < 5 else (30, 60)) and pixels.shape[1::-1] == size
    channel = 0 if top_color.startswith("red") else 2
    assert first_half[..., channel].mean() > 200 and first_half[..., 2 - channel].mean() < 50


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_broken_exif_does_not_lose_the_image(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 8), (0, 200, 0)).save(buffer, "JPEG", exif=b"Exif\0\0MM\0*\0\0\0\x08\xff\xff garbage")
    (tmp_path / "bad_exif.jpg").write_bytes(buffer.getvalue())
    pixels, size = decode(tmp_path / "bad_exif.jpg")
    assert size == (16, 8) and pixels[..., 1].mean() > 150


def test_tiny_and_very_thin_images_fit_both_ways(tmp_path):
    make_image(tmp_path / "dot.png", (10, 200, 10), size=(1, 1))
    pixels, size = decode(tmp_path / "dot.png")
    assert size == (1, 1) and pixels.shape == (1, 1, 3)
    for shape in [(1, 1, 3), (1, 3000, 3), (3000, 1, 3), (2, 5, 3)]:
        strip = np.full(shape, 200, np.uint8)
        for mode in ("crop", "pad"):
            out = images.square(strip, 32, mode)
            assert out.shape == (32, 32, 3) and out.dtype == np.uint8, (shape, mode)
            assert out.max() == 200, f"{shape} {mode}: the image must not vanish"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_guard_is_set_from_the_param_and_reported(tmp_path):
    bomb = png(tmp_path / "bomb.png", 30000, 30000, b"", color_type=0)  # 900 megapixels claimed, no real rows
    with pytest.raises(images.Unusable, match=r"^900 megapixels is over ingest.max_megapixels=50 \(decompression-bomb guard\)"):
        decode(bomb)
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS, "Pillow's guard is set from ingest.max_megapixels, never disabled"
    big = make_image(tmp_path / "big.png", (1, 1, 1), size=(300, 200))
    with pytest.raises(images.Unusable, match=r"^300x200 pixels \(0.06 megapixels\) is over ingest.max_megapixels=0.05"):
        images.decode(big, 256, 50_000)


HUGE_SCRIPT = """
import resource, sys
from pathlib import Path
sys.path.insert(0, {stages!r})
from lib import images

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

images.decode(Path({small!r}), 256, 180_000_000)  # warm up the decoders
start = peak_mb()
pixels, size = images.decode(Path({jpeg!r}), 256, 180_000_000)
print("jpeg", pixels.shape, size, peak_mb() - start)
start = peak_mb()
pixels, size = images.decode(Path({png!r}), 256, 180_000_000)
print("png", pixels.shape, size, peak_mb() - start)
try:
    images.decode(Path({png!r}), 256, 100_000_000)
except images.Unusable as exc:
    print("skipped", exc)
"""


def test_a_12000x9000_image_is_shrunk_with_bounded_memory(tmp_path):
    """JPEG: decoded at 1/8 scale (a few MB). PNG: decoded once in its own mode (1 byte a pixel for gray) and
    shrunk before the RGB conversion; over ingest.max_megapixels it is skipped before any pixel is read."""
    huge_png = png(tmp_path / "huge.png", 12000, 9000, bytes([200]) * 12000)
    Image.new("L", (12000, 9000), 60).save(tmp_path / "huge.jpg", quality=50)
    small = make_image(tmp_path / "small.jpg", (1, 2, 3))
    script = HUGE_SCRIPT.format(stages=str(ROOT / "stages"), small=str(small), jpeg=str(tmp_path / "huge.jpg"), png=str(huge_png))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    jpeg, png_line, skipped = (line.split(" ", 1)[1] for line in out)
    assert jpeg.startswith("(256, 341, 3) (12000, 9000)") and float(jpeg.split()[-1]) < 30, jpeg
    assert png_line.startswith("(256, 341, 3) (12000, 9000)") and float(png_line.split()[-1]) < 160, png_line  # 108 MB of gray
    assert skipped == "12000x9000 pixels (108 megapixels) is over ingest.max_megapixels=100 (decompression-bomb guard); raise it to include this image"


def test_thin_images_are_skipped_before_decoding(tmp_path):
    """max_short_side capped only the short side: this 25 KB PNG of 256 x 100,000 added 77 MB to pixels.u8."""
    strip = png(tmp_path / "strip.png", 256, 100_000, bytes(256))
    assert strip.stat().st_size < 100_000
    with pytest.raises(images.Unusable, match=r"^256x100000 pixels is thinner than 1:10 \(the long side is 391 times the short side\); "
                                              r"crop it to include it$"):
        decode(strip)
    with pytest.raises(images.Unusable, match=r"^3000x1 pixels is thinner than 1:10"):
        decode(png(tmp_path / "line.png", 3000, 1, bytes(3000)))
    pixels, size = decode(png(tmp_path / "panorama.png", 2560, 256, bytes(2560)))  # 1:10 is kept
    assert size == (2560, 256) and pixels.shape == (256, 2560, 3)


def test_palette_and_16_bit_images_are_converted_in_strips_like_whole(tmp_path):
    """Converting strip by strip (and reducing each) gives the picture a whole conversion gives."""
    for name, make in (("gray16.png", gray16_png), ("palette.png", transparent_palette_png)):
        path = make(tmp_path / name, 1500, 1200)
        pixels, size = decode(path, max_short_side=200)
        with Image.open(path) as im:
            whole = np.asarray(images.shrink(images.to_rgb(im), 200), dtype=np.int16)
        assert size == (1500, 1200) and pixels.shape == whole.shape == (200, 250, 3)
        assert np.abs(pixels - whole).mean() < 3, name  # box-reduced, then resampled: within a few levels


INGEST_PEAK = """
import resource, subprocess, sys
result = subprocess.run([sys.executable, "stages/ingest.py"], capture_output=True, text=True)
print(result.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
"""


def ingest_peak_mb(project: Path) -> int:
    """Peak memory (RSS) of the ingest stage in `project`, in MB, with two decoding threads."""
    out = subprocess.run([sys.executable, "-c", INGEST_PEAK], cwd=project, capture_output=True, text=True, check=True,
                         env={**os.environ, "PIPELINE_WORKERS": "2"}).stdout.split()
    assert out[0] == "0", "ingest failed"
    return int(out[1])


# Ingest's peak memory: Python, NumPy, pandas and Pillow (about 100 MB), the snapshots in flight, and decoding, which
# holds at most images.DECODE_BUDGET (256 MB) for all threads together, or one larger image alone (README, Troubleshooting).
INGEST_MEMORY_MB = 400


def test_ingest_memory_stays_bounded_on_images_costly_to_convert(tmp_path):
    """A 16-bit grey and a transparent palette PNG of 30 megapixels each (a few hundred KB as files): converted at
    full size they took 750 and 490 MB, and with two threads both at once."""
    source = tmp_path / "images"
    gray16_png(source / "grey" / "deep.png", 6000, 5000)
    transparent_palette_png(source / "palette" / "glass.png", 6000, 5000)
    for c, name in enumerate(("grey", "palette")):
        for i in range(3):
            make_image(source / name / f"{i}.png", (80 * c, 90, 90), noise_seed=10 * c + i)
    project = stage_project(tmp_path, {"data.source": str(source), "ingest.max_megapixels": 100})
    peak = ingest_peak_mb(project)
    assert peak < INGEST_MEMORY_MB, f"ingest peaked at {peak} MB"
    assert len(pd.read_csv(project / "data/ingested/manifest.csv")) == 8


# ---------------------------------------------------------------- listing a folder of class folders

def messy_folder(root: Path, outside: Path) -> dict:
    """Three odd class names with usable images of every kind, plus every kind of junk. -> expected skips."""
    for c, name in enumerate(["with space", "ünïcode", "dots.in.name", "NA"]):
        for i in range(4):
            make_image(root / name / f"img_{i}.png", (60 * c, 200 - 40 * c, 90), noise_seed=10 * c + i)
    make_image(root / "with space" / "UPPER.JPEG", (0, 0, 0), size=(8, 8))
    make_image(root / "with space" / "nested" / "deeper" / "x.Png", (0, 0, 0), size=(8, 8), noise_seed=5)
    Image.new("L", (9, 9), 10).save(root / "ünïcode" / "gray.png")
    Image.new("RGBA", (9, 9), (1, 2, 3, 100)).save(root / "ünïcode" / "alpha.png")
    Image.new("CMYK", (9, 9), (0, 0, 255, 0)).save(root / "dots.in.name" / "cmyk.jpg")
    Image.new("RGB", (5, 5), (1, 1, 1)).save(root / "dots.in.name" / "anim.gif", save_all=True,
                                               append_images=[Image.new("RGB", (5, 5), (9, 9, 9))])
    make_image(root / "NA" / "tiny.bmp", (5, 5, 5), size=(1, 1))
    (root / "with space" / "inside_link.png").symlink_to(root / "NA" / "img_0.png")  # inside the root: followed
    (root / "NA" / "linked_folder").symlink_to(root / "with space" / "nested", target_is_directory=True)  # inside: followed
    expected = {
        "Thumbs.db": "file outside any class folder",
        ".DS_Store": "hidden file",
        ".trash": "hidden folder",
        "empty class/": "no image file in this class folder; the class is left out",
        "with space/zero.jpg": "empty file",
        "with space/cut.jpg": "corrupt or truncated image",
        "with space/page.png": "not a readable image",
        "with space/README.txt": "not an image file extension",
        "with space/Thumbs.db": "not an image file extension",
        "with space/.DS_Store": "hidden file",
        "with space/._img_0.png": "hidden file",
        "with space/.cache": "hidden folder",
        "ünïcode/escape.png": "link points outside data.source",
        "ünïcode/loop.png": "broken link (a loop)",
        "ünïcode/dangling.png": "broken link",
        "ünïcode/fifo.png": "not a regular file",
        "ünïcode/back_up": "link to a folder that contains it (a loop)",
        "dots.in.name/notes.jpg": "not a readable image",
    }
    (root / "Thumbs.db").write_bytes(b"\0" * 64)
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    make_image(root / ".trash" / "old.png", (1, 1, 1))
    (root / "empty class").mkdir()
    (root / "with space" / "zero.jpg").write_bytes(b"")
    (root / "with space" / "cut.jpg").write_bytes(jpeg_bytes()[:500])
    (root / "with space" / "page.png").write_text("<html>moved</html>")
    (root / "with space" / "README.txt").write_text("readme")
    (root / "with space" / "Thumbs.db").write_bytes(b"\0" * 64)
    (root / "with space" / ".DS_Store").write_bytes(b"\0" * 64)
    (root / "with space" / "._img_0.png").write_bytes(b"\0\5\26\7 AppleDouble")
    make_image(root / "with space" / ".cache" / "thumb.png", (1, 1, 1))
    make_image(outside / "secret.png", (1, 1, 1))
    (root / "ünïcode" / "escape.png").symlink_to(outside / "secret.png")
    (root / "ünïcode" / "loop.png").symlink_to(root / "ünïcode" / "loop.png")
    (root / "ünïcode" / "dangling.png").symlink_to(root / "ünïcode" / "gone.png")
    os.mkfifo(root / "ünïcode" / "fifo.png")  # reading it would block forever
    (root / "ünïcode" / "back_up").symlink_to(root / "ünïcode", target_is_directory=True)
    (root / "dots.in.name" / "notes.jpg").write_text("not a jpeg")
    make_image(root / "with space" / 'new\nline, "quoted".png', (3, 3, 3), size=(7, 7))  # usable: CSV and JSON quote it
    make_image(root / "dots.in.name" / os.fsdecode(b"caf\xe9.png"), (4, 4, 4))  # Latin-1 bytes, not UTF-8
    expected["dots.in.name/caf\ufffd.png"] = "the name is not valid UTF-8; rename it"
    return expected


FOUND_BY_DECODING = {"with space/zero.jpg", "with space/cut.jpg", "with space/page.png", "dots.in.name/notes.jpg"}


def reasons_match(skipped: dict, expected: dict) -> None:
    assert set(skipped) == set(expected), f"unexpected: {set(skipped) ^ set(expected)}"
    for path, reason in expected.items():
        assert skipped[path].startswith(reason), f"{path}: {skipped[path]!r} does not start with {reason!r}"


def test_messy_folder_lists_every_image_and_says_why_for_the_rest(tmp_path):
    expected = messy_folder(tmp_path / "images", tmp_path / "outside")
    items, skipped = sources.class_folders(tmp_path / "images")
    reasons_match({s.path: s.reason for s in skipped}, {p: r for p, r in expected.items() if p not in FOUND_BY_DECODING})
    paths = {i.path: i.label for i in items}
    assert FOUND_BY_DECODING < set(paths), "files that only decoding can judge are listed, then skipped by ingest"
    assert paths["with space/UPPER.JPEG"] == "with space" and paths["with space/nested/deeper/x.Png"] == "with space"
    assert paths["with space/inside_link.png"] == "with space" and paths["NA/linked_folder/deeper/x.Png"] == "NA"
    assert paths['with space/new\nline, "quoted".png'] == "with space"
    assert {i.label for i in items} == {"with space", "ünïcode", "dots.in.name", "NA"}
    assert not any("secret" in p or "trash" in p or "cache" in p for p in paths)
    assert [i.path for i in items] == sorted((i.path for i in items), key=lambda p: Path(p).parts), "a stable order"


def test_a_folder_without_class_folders_or_a_missing_source_is_an_error(tmp_path):
    (tmp_path / "flat").mkdir()
    make_image(tmp_path / "flat" / "a.png", (1, 2, 3))
    with pytest.raises(PipelineError, match=r"has no class folders; put the images of each class in .*/flat/<class name>/"):
        sources.list_source(str(tmp_path / "flat"), "", "classification", "image", "label")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="has no class folders"):
        sources.list_source(str(tmp_path / "empty"), "", "classification", "image", "label")
    with pytest.raises(PipelineError, match="data.source .*nowhere does not exist"):
        sources.list_source(str(tmp_path / "nowhere"), "", "classification", "image", "label")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(PipelineError, match="data.txt is not a folder$"):
        sources.list_source(str(tmp_path / "data.txt"), "", "classification", "image", "label")
    (tmp_path / "labels.csv").write_text("image,label\n")
    with pytest.raises(PipelineError, match=f"labels.csv is not a folder; for a CSV use data.source={tmp_path} and data.csv=labels.csv"):
        sources.list_source(str(tmp_path / "labels.csv"), "", "classification", "image", "label")
    with pytest.raises(PipelineError, match=f"data.csv missing.csv is not a file in data.source {tmp_path}"):
        sources.list_source(str(tmp_path), "missing.csv", "classification", "image", "label")


# ---------------------------------------------------------------- CSV manifests

def write_csv(path: Path, text: str, encoding="utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def test_csv_errors_name_the_column_and_the_fix(tmp_path):
    make_image(tmp_path / "d" / "a.png", (1, 1, 1))
    wrong = write_csv(tmp_path / "d" / "wrong.csv", "file,species\na.png,cat\n")
    with pytest.raises(PipelineError, match=r"wrong.csv has no column 'image' \(data.path_column\); its columns are file, species"):
        sources.list_source(str(wrong.parent), wrong.name, "classification", "image", "label")
    text = write_csv(tmp_path / "d" / "text.csv", "image,age\na.png,young\na.png,old\na.png,\n")
    with pytest.raises(PipelineError, match=r"column 'age' \(data.target_column\) has no numbers \(row 2: 'young'\); "
                                            r"data.task=regression needs a numeric target, or set data.task=classification"):
        sources.list_source(str(text.parent), text.name, "regression", "image", "age")
    header_only = write_csv(tmp_path / "d" / "header.csv", "image,label\n")
    with pytest.raises(PipelineError, match="header.csv has no rows"):
        sources.list_source(str(header_only.parent), header_only.name, "classification", "image", "label")
    empty = write_csv(tmp_path / "d" / "empty.csv", "")
    with pytest.raises(PipelineError, match="not a readable CSV"):
        sources.list_source(str(empty.parent), empty.name, "classification", "image", "label")
    latin = write_csv(tmp_path / "d" / "latin.csv", "image,label\na.png,caf\u00e9\n", encoding="latin-1")
    with pytest.raises(PipelineError, match="not a readable CSV"):
        sources.list_source(str(latin.parent), latin.name, "classification", "image", "label")


def test_csv_rows_are_skipped_with_their_row_number(tmp_path):
    root = tmp_path / "d"
    make_image(root / "imgs" / "a.png", (1, 1, 1))
    make_image(root / "imgs" / "b.png", (2, 2, 2))
    make_image(tmp_path / "outside.png", (1, 1, 1))
    (root / "imgs" / "link.png").symlink_to(tmp_path / "outside.png")
    csv = write_csv(root / "labels.csv", "\ufeffimage , age\n"  # Excel's BOM and a space in the header
                    "imgs/a.png,3.5\n"
                    "imgs\\b.png,1234567.25\n"  # a Windows path
                    "imgs/a.png,3.5\n"
                    "../outside.png,4\n"
                    f"{tmp_path / 'outside.png'},4\n"
                    "imgs/../../outside.png,4\n"
                    "imgs/link.png,4\n"
                    "imgs/missing.png,4\n"
                    "imgs/b.png,twelve\n"
                    "imgs/b.png,nan\n"
                    "imgs,5\n")
    items, skipped = sources.list_source(str(csv.parent), csv.name, "regression", "image", "age")
    assert [(i.path, i.label) for i in items] == [("imgs/a.png", 3.5), ("imgs/b.png", 1234567.25)]
    assert [s.reason for s in skipped] == [
        "row 4: the same file as row 2",
        "row 5: path escapes the CSV's folder",
        "row 6: absolute path; paths must be relative to the CSV's folder",
        "row 7: path escapes the CSV's folder",
        "row 8: path escapes the CSV's folder",
        "row 9: file not found",
        "row 10: target 'twelve' is not a finite number written with digits 0-9 (like 12.5 or -3e2)",
        "row 11: target 'nan' is not a finite number written with digits 0-9 (like 12.5 or -3e2)",
        "row 12: not a regular file",
    ]


# ---------------------------------------------------------------- what is left must make a dataset

def frame(labels, hashes=None):
    hashes = hashes or [f"h{i}" for i in range(len(labels))]
    return pd.DataFrame({"label": labels, "pixels_sha256": hashes, "group": hashes})


def test_a_class_too_small_for_the_split_is_named_with_the_size_needed():
    m = frame(["big"] * 30 + ["small"] * 4 + ["dup"] * 5, [f"h{i}" for i in range(34)] + ["same"] * 5)
    with pytest.raises(PipelineError, match=r"^'dup' has 1 distinct images; split.val=0.2 and split.test=0.2 need at least 3 "
                                            r"\(one in each split\): add images to it or remove it"):
        splitting.assign(m, splitting.strata(m, "classification", 10), 0.2, 0.2, seed=0)
    m = frame(["big"] * 30 + ["small"] * 4)  # 4 images fit 0.2/0.2, but not 0.45/0.45; 9 and more always do
    splitting.assign(m, splitting.strata(m, "classification", 10), 0.2, 0.2, seed=0)
    with pytest.raises(PipelineError, match=r"'small' has 4 distinct images; .* need at least 9"):
        splitting.assign(m, splitting.strata(m, "classification", 10), 0.45, 0.45, seed=0)
    m = frame(list(np.arange(12.0)))
    with pytest.raises(PipelineError, match=r"'target bin 1 of 6' has 2 distinct images; .*: lower split.bins or add images"):
        splitting.assign(m, splitting.strata(m, "regression", 6), 0.2, 0.2, seed=0)


# ---------------------------------------------------------------- the real stages on a messy folder

def hostile_additions(root: Path) -> dict:
    """More of what a real folder holds, on top of messy_folder: the same picture under two labels and in two formats,
    a re-encoded copy, a strip, images costly to decode, branching links and look-alike class names. -> expected skips."""
    for c, name in enumerate(["with space", "ünïcode", "dots.in.name", "NA"]):  # enough images left in every class
        for i in range(4, 8):
            make_image(root / name / f"img_{i}.png", (60 * c, 200 - 40 * c, 90), noise_seed=10 * c + i)
    conflict = "an image with conflicting labels is left out, every copy of it"
    Image.open(root / "NA" / "img_4.png").save(root / "ünïcode" / "relabeled.bmp")  # the same pixels, another label
    Image.open(root / "dots.in.name" / "img_5.png").save(root / "dots.in.name" / "img_5.bmp")  # a copy, same label: kept
    Image.open(root / "dots.in.name" / "img_6.png").save(root / "dots.in.name" / "img_6.jpg", quality=95)  # a near-duplicate
    png(root / "NA" / "strip.png", 256, 100_000, bytes(256))
    gray16_png(root / "with space" / "deep16.png", 6000, 5000)  # 30 megapixels each: hundreds of MB if converted whole
    transparent_palette_png(root / "ünïcode" / "glass.png", 6000, 5000)
    levels = root / "dots.in.name" / "levels"
    for i in range(6):  # six levels, each with two links to the next: walked through both, 64 copies
        make_image(levels / str(i) / f"level_{i}.png", (i, 90, 200 - 9 * i), size=(12, 12), noise_seed=300 + i)
        if i < 5:
            for link in ("x", "y"):
                (levels / str(i) / link).symlink_to(levels / str(i + 1), target_is_directory=True)
    for i in range(3):  # "café" as one precomposed letter and as e + a combining accent: one class
        make_image(root / "caf\u00e9" / f"a{i}.png", (90, 40, 40 + i), noise_seed=400 + i)
        make_image(root / "cafe\u0301" / f"b{i}.png", (90, 40, 90 + i), noise_seed=410 + i)
    expected = {
        "NA/img_4.png": f"the same picture as ünïcode/relabeled.bmp (labeled 'ünïcode'): {conflict}",
        "ünïcode/relabeled.bmp": f"the same picture as NA/img_4.png (labeled 'NA'): {conflict}",
        "with space/inside_link.png": f"the same picture as NA/img_0.png (labeled 'NA'): {conflict}",  # links into another class
        "NA/img_0.png": f"the same picture as with space/inside_link.png (labeled 'with space'): {conflict}",
        "NA/linked_folder/deeper/x.Png": f"the same picture as with space/nested/deeper/x.Png (labeled 'with space'): {conflict}",
        "with space/nested/deeper/x.Png": f"the same picture as NA/linked_folder/deeper/x.Png (labeled 'NA'): {conflict}",
        "NA/strip.png": "256x100000 pixels is thinner than 1:10",
    }
    for i in range(5):
        expected[f"dots.in.name/levels/{i}/x"] = f"link to a folder already listed as dots.in.name/levels/{i + 1}/"
        expected[f"dots.in.name/levels/{i}/y"] = f"link to a folder already listed as dots.in.name/levels/{i + 1}/"
    return expected


DVC_PEAK = """
import resource, subprocess, sys
result = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(result.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
sys.stderr.write(result.stdout + result.stderr)
"""


@pytest.mark.e2e
def test_ingest_to_normalize_on_a_messy_folder_reports_every_skipped_file(tmp_path):
    source = tmp_path / "images"
    expected = messy_folder(source, tmp_path / "outside") | hostile_additions(source)
    png(source / "NA" / "huge.png", 12000, 9000, bytes([7]) * 12000)
    expected["NA/huge.png"] = "12000x9000 pixels (108 megapixels) is over ingest.max_megapixels=100"
    # DVC hashes data.source before ingest runs: it stops at a link loop, a broken link or a name that is not UTF-8, and
    # waits forever on a named pipe (README, Troubleshooting). Ingest's own reasons for them are checked without DVC, above.
    for name in ("loop.png", "dangling.png", "fifo.png"):
        (source / "ünïcode" / name).unlink()
        del expected[f"ünïcode/{name}"]
    (source / "dots.in.name" / os.fsdecode(b"caf\xe9.png")).unlink()
    del expected["dots.in.name/caf\ufffd.png"]
    project = make_project(tmp_path, FAST | {"data.source": str(source), "ingest.max_megapixels": 100})
    result = subprocess.run([sys.executable, "-c", DVC_PEAK, "dvc", "repro", "normalize"], cwd=project, capture_output=True, text=True,
                            env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                                 "DVC_NO_ANALYTICS": "1", "PIPELINE_WORKERS": "2"})
    status, peak = result.stdout.split()
    assert status == "0" and "Traceback" not in result.stderr, result.stderr
    assert int(peak) < INGEST_MEMORY_MB, f"a process of dvc repro (dvc itself, ingest, split, normalize) peaked at {peak} MB"
    report = json.loads((project / "metrics/data.json").read_text(encoding="utf-8"))
    skipped = {s["path"]: s["reason"] for s in report["skipped_files"]}
    reasons_match(skipped, expected)
    assert report["skipped"] == len(expected)
    assert report["classes"] == {"NA": 7, "café": 6, "dots.in.name": 18, "with space": 11, "ünïcode": 11}
    assert report["duplicates"] == 1  # dots.in.name/img_5 as PNG and BMP
    assert report["near_duplicates"] == [{"paths": ["dots.in.name/img_6.jpg", "dots.in.name/img_6.png"], "labels": ["dots.in.name"]}]
    manifest = pd.read_csv(project / "data/ingested/manifest.csv", keep_default_na=False)
    assert manifest["label"].tolist().count("NA") == 7, "a class named NA stays a class name"
    encoding = json.loads((project / "data/normalized/encoding.json").read_text(encoding="utf-8"))
    assert encoding["classes"] == ["NA", "café", "dots.in.name", "with space", "ünïcode"]
    counts = {name: len(np.load(project / f"data/normalized/{name}_targets.npy")) for name in ("train", "val", "test")}
    assert sum(counts.values()) == 53 and min(counts.values()) >= 9
    split = pd.read_csv(project / "data/split/split.csv").set_index("path")["split"]
    assert 'with space/new\nline, "quoted".png' in split.index
    assert split["dots.in.name/img_5.png"] == split["dots.in.name/img_5.bmp"] and split["dots.in.name/img_6.png"] == split["dots.in.name/img_6.jpg"]


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_no_usable_image_fails_clearly_and_still_writes_the_report(tmp_path):
    junk = tmp_path / "junk"
    (junk / "cats").mkdir(parents=True)
    (junk / "cats" / "a.jpg").write_bytes(b"")
    (junk / "cats" / "b.png").write_text("<html></html>")
    project = stage_project(tmp_path, {"data.source": str(junk)})
    line = one_error_line(run_stage(project, "ingest"))
    assert line.startswith(f"error: data.source {junk}: no usable image (2 skipped, e.g. cats/a.jpg: empty file; cats/b.png: not a readable image")
    assert line.endswith("every one is in metrics/data.json)")
    report = json.loads((project / "metrics/data.json").read_text())
    assert report["images"] == 0 and [s["path"] for s in report["skipped_files"]] == ["cats/a.jpg", "cats/b.png"]
    assert not (project / "data/ingested/manifest.csv").exists() and not list(project.rglob("*.tmp"))


def test_one_usable_class_fails_at_split_naming_it(tmp_path):
    source = tmp_path / "src"
    for i in range(5):
        make_image(source / "cats" / f"{i}.png", (9, 9, 9), noise_seed=i)
    (source / "dogs").mkdir()
    (source / "dogs" / "broken.jpg").write_bytes(jpeg_bytes()[:300])
    project = stage_project(tmp_path, {"data.source": str(source)})
    assert run_stage(project, "ingest").returncode == 0
    line = one_error_line(run_stage(project, "split"))
    assert line == ("error: the data has only one usable class ('cats'); classification needs at least 2 "
                    "(skipped files are listed in metrics/data.json)")
    skipped = {s["path"]: s["reason"] for s in json.loads((project / "metrics/data.json").read_text())["skipped_files"]}
    assert skipped["dogs/"] == "no usable image of this class; the class is left out"
    assert skipped["dogs/broken.jpg"].startswith("corrupt or truncated image")
