"""Real image files written by Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_image(path: Path, color, size=(40, 30), mode="RGB", fmt=None, noise_seed=0) -> Path:
    """A real image file: a colored field with some texture, so classes are learnable."""
    rng = np.random.default_rng(noise_seed)
    base = np.array(color, dtype=np.float64)
    pixels = np.clip(base + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").convert(mode).save(path, format=fmt)
    return path
