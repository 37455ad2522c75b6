"""Decoding and resizing images with Pillow (no TensorFlow): the only place pixels are read from files.

Files are untrusted: only the formats of IMAGE_FORMATS are opened (no EPS/Ghostscript or other
plugins), any decoder failure makes the file Unusable (skipped and reported, never a crash), and
Pillow's decompression-bomb guard is set from ingest.max_megapixels (never disabled). Images
thinner than 1:MAX_ASPECT_RATIO are skipped too (a 256 x 100,000 strip would take 77 MB of the
snapshot), both before any pixel is read.

Memory is bounded. A decoded image takes at most 4 bytes per pixel in Pillow (its own mode: 1 for
grey and palettes, 2 for 16-bit grey, 4 for RGB, CMYK, 32-bit and float) and nothing else is made
at full size: JPEGs are decoded at a reduced scale when that is still large enough; grey, RGB(A)
and CMYK images are shrunk before their colour conversion; every other mode (palettes, 16-bit,
float) is converted STRIP_PIXELS at a time, each strip reduced as it is converted. Some decoders
hold buffers of their own (DECODE_BYTES_PER_PIXEL). The threads share DECODE_BUDGET bytes: an
image waits until its decoding fits, and one larger than the whole budget (up to
ingest.max_megapixels) decodes alone. So decoding holds at most max(DECODE_BUDGET, the largest
image's pixels x its bytes per pixel), whatever the number of threads. What decoding frees, a loop over many images
hands back to the system now and then (return_freed_memory): otherwise it stays resident, and grows with the images.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import io
import math
import re
import threading
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from transfer_learning.errors import one_line

# Pillow's plugins for the extensions entries.IMAGE_EXTENSIONS accepts (JPEG also opens multi-picture MPO files).
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")
# Bytes all decoding threads may hold at once; an image that needs more decodes alone.
DECODE_BUDGET = 256 * 2**20
# Bytes a pixel takes while a file is decoded, measured with Pillow 12 on 30-megapixel files: Pillow's image (at most
# 4), plus libwebp's canvas and its copy for WebP, libtiff's strip buffers for TIFF.
DECODE_BYTES_PER_PIXEL = {"WEBP": 16, "TIFF": 8}
DEFAULT_BYTES_PER_PIXEL = 4
# Pixels converted at a time in modes that cannot be shrunk first (palettes, 16-bit, float), at up to 26 bytes each
# (16-bit grey through float64).
STRIP_PIXELS = 1_000_000
STRIP_BYTES_PER_PIXEL = 26
# The long side may be at most this many times the short side.
MAX_ASPECT_RATIO = 10
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose does).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Modes that can be shrunk before conversion to RGB (smaller than RGB, or RGB itself); others are converted in strips.
SHRINK_FIRST = {"L", "LA", "RGB", "RGBA", "CMYK"}

# Images between max_pixels and 2 * max_pixels only warn in Pillow; we skip them ourselves.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


class Unusable(Exception):
    """The file cannot be used as an image; the message is the reason shown in the data report."""


class MemoryBudget:
    """Bytes held by all decoding threads together: `taking(n)` waits until n more fit in the budget or, for an
    image larger than the whole budget, until no other image is being decoded."""

    def __init__(self, limit: int):
        self.limit, self.used, self.changed = limit, 0, threading.Condition()

    @contextlib.contextmanager
    def taking(self, size: int) -> Iterator[None]:
        with self.changed:
            self.changed.wait_for(lambda: self.used == 0 or self.used + size <= self.limit)
            self.used += size
        try:
            yield
        finally:
            with self.changed:
                self.used -= size
                self.changed.notify_all()


_budget = MemoryBudget(DECODE_BUDGET)


def decode(source: bytes | str | Path, max_short_side: int, max_pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """An image file (path or bytes) -> (H, W, 3) uint8 RGB, upright, shorter side at most `max_short_side`.

    Returns the pixels and the original upright (width, height). Raises Unusable with the reason.
    """
    if (len(source) if isinstance(source, bytes) else Path(source).stat().st_size) == 0:
        raise Unusable("empty file")
    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow refuses more than twice this before reading any pixel
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=IMAGE_FORMATS) as im:
            stored = im.size
            check_size(stored, max_pixels)
            check_aspect(stored)
            if im.format in ("JPEG", "MPO"):  # libjpeg decodes at 1/2, 1/4 or 1/8 scale when that is still large enough
                scale = max_short_side / min(im.size)
                if scale < 1:
                    im.draft(im.mode, (int(im.size[0] * scale) + 1, int(im.size[1] * scale) + 1))
            with _budget.taking(decoding_bytes(im)):
                im.load()
                orientation = exif_orientation(im)
                if im.mode in SHRINK_FIRST:
                    rgb = shrink(to_rgb(shrink(im, max_short_side)), max_short_side)
                else:
                    rgb = shrink(converted_in_strips(im, max(1, min(im.size) // max_short_side)), max_short_side)
    except Unusable:
        raise
    except Image.DecompressionBombError as exc:  # over twice the limit: Pillow refuses to even open it
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        raise Unusable(
            too_large(f"{int(pixels.group(1)) / 1e6:.3g} megapixels" if pixels else "too many pixels", max_pixels)
        ) from None
    except UnidentifiedImageError:
        raise Unusable("not a readable image: the content is not JPEG, PNG, BMP, GIF, TIFF or WebP") from None
    except (OSError, SyntaxError, EOFError) as exc:
        raise Unusable(f"corrupt or truncated image ({one_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - an untrusted file may break a decoder in any way
        raise Unusable(f"cannot decode image ({exc.__class__.__name__}: {one_line(exc)})") from None
    if orientation:
        rgb = rgb.transpose(UPRIGHT[orientation])
        stored = stored if orientation < 5 else stored[::-1]
    return np.asarray(rgb, dtype=np.uint8), stored


def return_freed_memory() -> None:
    """Hand the memory that decoding freed back to the system (glibc's malloc_trim; elsewhere nothing to do).

    Decoding a photo allocates and frees buffers of every size in the decoding threads' heaps, and what is kept of
    each image (a manifest row, a fingerprint) lands between them: glibc returns only the free space at a heap's top,
    so the rest stays resident and grows with the number of images, not their size. Measured at ingest on 21,760
    Flowers-17 photos: 37 of the heaps' 59 MB free but held (RssAnon 108 MB); after malloc_trim(0), 74 MB. It takes
    well under a millisecond: call it once per batch of images, not per image."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c")), "malloc_trim", None)
    except OSError:
        return None


def decoding_bytes(im: Image.Image) -> int:
    """What decoding `im` (opened, not loaded) holds at its peak: the image and the decoder's buffers, and a strip."""
    pixels = im.size[0] * im.size[1]
    strip = 0 if im.mode in SHRINK_FIRST else min(pixels, STRIP_PIXELS) * STRIP_BYTES_PER_PIXEL
    return pixels * DECODE_BYTES_PER_PIXEL.get(im.format, DEFAULT_BYTES_PER_PIXEL) + strip


def check_size(size: tuple[int, int], max_pixels: int) -> None:
    if size[0] * size[1] > max_pixels:
        raise Unusable(too_large(f"{size[0]}x{size[1]} pixels ({size[0] * size[1] / 1e6:.3g} megapixels)", max_pixels))


def check_aspect(size: tuple[int, int]) -> None:
    ratio = max(size) / max(1, min(size))
    if ratio > MAX_ASPECT_RATIO:
        raise Unusable(
            f"{size[0]}x{size[1]} pixels is thinner than 1:{MAX_ASPECT_RATIO} (the long side is {ratio:.3g} times "
            "the short "
            "side); crop it to include it"
        )


def too_large(shown: str, max_pixels: int) -> str:
    return (
        f"{shown} is over ingest.max_megapixels={max_pixels / 1e6:g} (decompression-bomb guard); raise it to "
        "include this image"
    )


def exif_orientation(im: Image.Image) -> int | None:
    """The EXIF orientation tag, or None (also when the EXIF block is broken: the pixels are still usable)."""
    try:
        orientation = im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001
        return None
    return orientation if isinstance(orientation, int) and orientation in UPRIGHT else None


def to_rgb(im: Image.Image, top: float | None = None) -> Image.Image:
    """Any Pillow mode -> RGB: alpha composited on white, 16-bit and float scaled down, CMYK and palettes converted.

    `top`: the value that becomes 255 in 16-bit, 32-bit and float images (default: from this image's own peak)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(im, dtype=np.float64)
        top = intensity_top(im) if top is None else top
        im = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    if im.mode == "1":
        im = im.convert("L")
    if im.mode in ("RGBA", "LA", "La", "RGBa"):
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im.convert("RGBA"))
    return im.convert("RGB")


def intensity_top(im: Image.Image) -> float:
    """16-bit images span 0-65535; 32-bit ones too if their peak is above 255; float ones 0-1 if their peak is at
    most 1."""
    peak = float(im.getextrema()[1]) if im.mode in ("I", "F") else 0.0
    return 65535.0 if im.mode.startswith("I;16") or peak > 255 else 1.0 if im.mode == "F" and peak <= 1 else 255.0


def converted_in_strips(im: Image.Image, factor: int) -> Image.Image:
    """`im` (any mode) -> RGB reduced `factor` times (box average), converted STRIP_PIXELS at a time: a palette or
    16-bit image never exists at full size in RGBA or float64 (17 and 26 bytes a pixel when converted whole)."""
    width, height = im.size
    top = intensity_top(im) if im.mode in ("I;16", "I;16B", "I;16L", "I", "F") else None
    out = Image.new("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
    # whole blocks of `factor` rows: the same as reducing at once
    rows = max(1, STRIP_PIXELS // width // factor) * factor
    for start in range(0, height, rows):
        strip = to_rgb(im.crop((0, start, width, min(start + rows, height))), top)
        out.paste(strip.reduce(factor) if factor > 1 else strip, (0, start // factor))
    return out


def shrink(im: Image.Image, max_short_side: int) -> Image.Image:
    """Downscale (never upscale) so the shorter side is at most `max_short_side`, keeping the aspect."""
    short = min(im.size)
    if short <= max_short_side:
        return im
    scale = max_short_side / short
    new_size = (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale)))
    return im.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def square(pixels: np.ndarray, size: int, mode: str) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8 keeping the aspect: `crop` fills and center-crops, `pad` fits and
    pads black."""
    im = Image.fromarray(pixels, "RGB")
    if mode == "crop":
        out = ImageOps.fit(im, (size, size), method=Image.Resampling.BICUBIC)
    else:
        out = pad(im, size)
    return np.asarray(out, dtype=np.uint8)


def pad(im: Image.Image, size: int) -> Image.Image:
    """ImageOps.pad to a black square, but a very thin image keeps at least one pixel (Pillow would make it 0 wide)."""
    width, height = im.size
    if width >= height:
        new_size = (size, max(1, round(height / width * size)))
    else:
        new_size = (max(1, round(width / height * size)), size)
    resized = im.resize(new_size, Image.Resampling.BICUBIC)
    out = Image.new("RGB", (size, size), (0, 0, 0))
    out.paste(resized, (round((size - new_size[0]) * 0.5), round((size - new_size[1]) * 0.5)))
    return out
