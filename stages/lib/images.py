"""Decoding and resizing images with Pillow (no TensorFlow): the only place pixels are read from files.

Files are untrusted: only the formats of IMAGE_FORMATS are opened (no EPS/Ghostscript or other
plugins), any decoder failure makes the file Unusable (skipped and reported, never a crash), and
Pillow's decompression-bomb guard is set from ingest.max_megapixels (never disabled). Memory stays
bounded: JPEGs are decoded at a reduced scale when that is still large enough, other images are
shrunk before any colour conversion, and only one large image is decoded at a time.
"""
from __future__ import annotations

import contextlib
import io
import re
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's plugins for the extensions sources.IMAGE_EXTENSIONS accepts (JPEG also opens multi-picture MPO files).
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")
# Images whose decoded size is above this take turns, so the threads never hold several at once.
LARGE_PIXELS = 16_000_000
_large = threading.Lock()
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose does).
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}
# Modes that can be shrunk before conversion to RGB (smaller than RGB, or RGB itself).
SHRINK_FIRST = {"L", "LA", "RGB", "RGBA", "CMYK"}

# Images between max_pixels and 2 * max_pixels only warn in Pillow; we skip them ourselves.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


class Unusable(Exception):
    """The file cannot be used as an image; the message is the reason shown in the data report."""


def decode(source: bytes | Path, max_short_side: int, max_pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
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
            if im.format in ("JPEG", "MPO"):  # libjpeg decodes at 1/2, 1/4 or 1/8 scale when that is still large enough
                scale = max_short_side / min(im.size)
                if scale < 1:
                    im.draft(im.mode, (int(im.size[0] * scale) + 1, int(im.size[1] * scale) + 1))
            with _large if im.size[0] * im.size[1] > LARGE_PIXELS else contextlib.nullcontext():
                im.load()
                orientation = exif_orientation(im)
                small = im.convert("L") if im.mode == "1" else im
                small = shrink(small, max_short_side) if small.mode in SHRINK_FIRST else small
                rgb = shrink(to_rgb(small), max_short_side)
    except Unusable:
        raise
    except Image.DecompressionBombError as exc:  # over twice the limit: Pillow refuses to even open it
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        raise Unusable(too_large(f"{int(pixels.group(1)) / 1e6:.3g} megapixels" if pixels else "too many pixels", max_pixels)) from None
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


def check_size(size: tuple[int, int], max_pixels: int) -> None:
    if size[0] * size[1] > max_pixels:
        raise Unusable(too_large(f"{size[0]}x{size[1]} pixels ({size[0] * size[1] / 1e6:.3g} megapixels)", max_pixels))


def too_large(shown: str, max_pixels: int) -> str:
    return f"{shown} is over ingest.max_megapixels={max_pixels / 1e6:g} (decompression-bomb guard); raise it to include this image"


def exif_orientation(im: Image.Image) -> int | None:
    """The EXIF orientation tag, or None (also when the EXIF block is broken: the pixels are still usable)."""
    try:
        orientation = im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001
        return None
    return orientation if isinstance(orientation, int) and orientation in UPRIGHT else None


def one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or exc.__class__.__name__


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha composited on white, 16-bit and float scaled down, CMYK and palettes converted."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(im, dtype=np.float64)
        peak = float(array.max()) if array.size else 0.0
        top = 65535.0 if im.mode.startswith("I;16") or peak > 255 else 1.0 if im.mode == "F" and peak <= 1 else 255.0
        im = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    if im.mode == "1":
        im = im.convert("L")
    if im.mode in ("RGBA", "LA", "La", "RGBa"):
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im.convert("RGBA"))
    return im.convert("RGB")


def shrink(im: Image.Image, max_short_side: int) -> Image.Image:
    """Downscale (never upscale) so the shorter side is at most `max_short_side`, keeping the aspect."""
    short = min(im.size)
    if short <= max_short_side:
        return im
    scale = max_short_side / short
    new_size = (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale)))
    return im.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def fit(pixels: np.ndarray, size: int, mode: str) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8 keeping the aspect: `crop` fills and center-crops, `pad` fits and pads black."""
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
