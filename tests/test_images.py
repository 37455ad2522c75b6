"""transfer_learning/images.py: decoding untrusted image files with Pillow (every mode to upright RGB, bounded
memory, reasons for what cannot be used) and squaring them for the model."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.bad_files import BROKEN, gray16_png, png, transparent_palette_png
from support.images import make_image
from transfer_learning import images

MAX_PIXELS = 50_000_000


def decode(path: Path, max_short_side: int = 256, max_pixels: int = MAX_PIXELS):
    return images.decode(path, max_short_side, max_pixels)


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
    expected = {
        "gray.png": (90, 90, 90),
        "bilevel.png": (255, 255, 255),
        "palette.png": red,
        "palette_alpha.png": (255, 255, 255),
        "rgba.png": (255, 255, 255),
        "la.png": (0, 0, 0),
        "cmyk.jpg": (255, 0, 0),
        "gray16.png": (128, 128, 128),
        "float.tif": (128, 128, 128),
        "rgb.bmp": red,
        "rgb.webp": red,
        "rgb.tiff": red,
    }
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
    with pytest.raises(
        images.Unusable, match=r"^900 megapixels is over ingest.max_megapixels=50 \(decompression-bomb guard\)"
    ):
        decode(bomb)
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS, "Pillow's guard is set from ingest.max_megapixels, never disabled"
    big = make_image(tmp_path / "big.png", (1, 1, 1), size=(300, 200))
    with pytest.raises(
        images.Unusable, match=r"^300x200 pixels \(0.06 megapixels\) is over ingest.max_megapixels=0.05"
    ):
        images.decode(big, 256, 50_000)


HUGE_SCRIPT = """
import resource
from pathlib import Path
from transfer_learning import images

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
    script = HUGE_SCRIPT.format(small=str(small), jpeg=str(tmp_path / "huge.jpg"), png=str(huge_png))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    jpeg, png_line, skipped = (line.split(" ", 1)[1] for line in out)
    assert jpeg.startswith("(256, 341, 3) (12000, 9000)") and float(jpeg.split()[-1]) < 30, jpeg
    # 108 MB of gray
    assert png_line.startswith("(256, 341, 3) (12000, 9000)") and float(png_line.split()[-1]) < 160, png_line
    assert skipped == (
        "12000x9000 pixels (108 megapixels) is over ingest.max_megapixels=100 (decompression-bomb guard); "
        "raise it to include this image"
    )


def test_thin_images_are_skipped_before_decoding(tmp_path):
    """max_short_side capped only the short side: this 25 KB PNG of 256 x 100,000 added 77 MB to pixels.u8."""
    strip = png(tmp_path / "strip.png", 256, 100_000, bytes(256))
    assert strip.stat().st_size < 100_000
    with pytest.raises(
        images.Unusable,
        match=r"^256x100000 pixels is thinner than 1:10 \(the long side is 391 times the short side\); "
        r"crop it to include it$",
    ):
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


def test_decode_makes_rgb_upright_and_bounded(tmp_path):
    gray = make_image(tmp_path / "gray.png", (90, 90, 90), size=(50, 20), mode="L")
    pixels, size = decode(gray)
    assert pixels.shape == (20, 50, 3) and pixels.dtype == np.uint8 and size == (50, 20)

    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red -> white
    rgba.save(tmp_path / "alpha.png")
    assert (decode(tmp_path / "alpha.png")[0] == 255).all()

    big = make_image(tmp_path / "big.jpg", (10, 200, 10), size=(900, 600))
    pixels, size = decode(big, max_short_side=100)
    assert size == (900, 600) and min(pixels.shape[:2]) == 100 and pixels.shape[1] == 150

    rotated = Image.new("RGB", (60, 30), (0, 0, 255))
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    rotated.save(tmp_path / "rotated.jpg", exif=exif)
    assert decode(tmp_path / "rotated.jpg")[0].shape == (60, 30, 3)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"<html>not an image</html>", "not a readable image"),
    ],
)
def test_unusable_files_say_why(tmp_path, content, reason):
    path = tmp_path / "x.jpg"
    path.write_bytes(content)
    with pytest.raises(images.Unusable, match=reason):
        decode(path)


def test_truncated_jpeg_is_unusable(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    with pytest.raises(images.Unusable, match="corrupt or truncated"):
        images.decode(buffer.getvalue()[:400], 256, MAX_PIXELS)


def test_fit_crop_and_pad_keep_the_aspect():
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :10] = 255  # white stripe on the left quarter
    cropped = images.square(wide, 16, "crop")
    padded = images.square(wide, 16, "pad")
    assert cropped.shape == padded.shape == (16, 16, 3)
    assert cropped[:, 0].mean() < 10, "center crop cuts the left stripe off"
    assert padded[0].max() == 0 and padded[8, 0].min() > 200, "pad keeps the stripe and adds black bars"


FRAGMENTED_HEAP = """
import sys
from transfer_learning import images

def anon_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon")) / 1024

# what decoding many images leaves: buffers freed, each with a small object kept after it (a row, a fingerprint)
kept, buffers = [], []
for i in range(500):
    buffers.append(bytes([i % 256]) * 100_000)  # under glibc's mmap threshold: in the heap, every page written
    kept.append(bytes([i % 256]) * 600)  # over pymalloc's 512 bytes: in the heap too, after the buffer
del buffers
held = anon_mb()
images.return_freed_memory()
print(held, anon_mb())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists() or sys.platform != "linux", reason="reads RssAnon (Linux)")
def test_memory_freed_between_kept_objects_goes_back_to_the_system():
    """ingest's memory grew with the number of photos decoded, not only with what it keeps of each: glibc held the
    freed decoding buffers between the small objects kept (21,760 photos: 37 of 59 MB of heap free but resident).
    return_freed_memory hands them back. In a fresh process, so that the heap holds only this test's pattern."""
    held, after = map(
        float,
        subprocess.run(
            [sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, check=True
        ).stdout.split(),
    )
    assert held - after > 30, f"{held:.0f} MB resident after freeing 50 MB of buffers, {after:.0f} MB after the trim"
