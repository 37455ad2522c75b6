"""Decoding and resizing images with Pillow (no TensorFlow): the only place pixels are read from files."""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# We check the pixel count ourselves (ingest.max_megapixels) and report the file as skipped.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


class Unusable(Exception):
    """The file cannot be used as an image; the message is the reason shown in the data report."""


def decode(data: bytes, max_short_side: int, max_pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Bytes of an image file -> (H, W, 3) uint8 RGB, upright, shorter side at most `max_short_side`.

    Returns the pixels and the original (width, height) as stored in the file. Raises Unusable.
    """
    if not data:
        raise Unusable("empty file")
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with Image.open(io.BytesIO(data)) as im:
            size = im.size
            if size[0] * size[1] > max_pixels:
                raise Unusable(f"{size[0]}x{size[1]} pixels is over ingest.max_megapixels; raise it to include this image")
            if im.format == "JPEG":  # let libjpeg decode at 1/2, 1/4 or 1/8 scale when that is still large enough
                scale = max_short_side / min(size)
                if scale < 1:
                    im.draft("RGB", (int(size[0] * scale) + 1, int(size[1] * scale) + 1))
            im.load()
            rgb = to_rgb(ImageOps.exif_transpose(im))
    except Unusable:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise Unusable(f"not a readable image ({exc.__class__.__name__})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise Unusable(f"corrupt or truncated image ({exc})") from None
    return np.asarray(shrink(rgb, max_short_side), dtype=np.uint8), size


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha composited on white, 16-bit scaled down, CMYK and palettes converted."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or array.max() > 255 else 255.0
        im = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
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
        out = ImageOps.pad(im, (size, size), method=Image.Resampling.BICUBIC, color=(0, 0, 0))
    return np.asarray(out, dtype=np.uint8)
