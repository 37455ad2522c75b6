"""Random affine variants of an image, the knobs of Keras' ImageDataGenerator, without TensorFlow.

Each variant's randomness comes from its own seed (augment.seed, image index, copy number), so the
output does not depend on thread scheduling or on how many images come before it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def random_matrix(rng: np.random.Generator, cfg, height: int, width: int) -> np.ndarray:
    """A 3x3 affine map of output pixel coordinates (row, col, 1) to input coordinates."""
    theta = math.radians(rng.uniform(-cfg.rotation, cfg.rotation))
    tx = rng.uniform(-cfg.height_shift, cfg.height_shift) * height
    ty = rng.uniform(-cfg.width_shift, cfg.width_shift) * width
    shear = math.radians(rng.uniform(-cfg.shear, cfg.shear))
    zx, zy = rng.uniform(1 - cfg.zoom, 1 + cfg.zoom, size=2)
    flip = cfg.horizontal_flip and rng.random() < 0.5
    rotate = [[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0], [0, 0, 1]]
    shift = [[1, 0, tx], [0, 1, ty], [0, 0, 1]]
    shear_m = [[1, -math.sin(shear), 0], [0, math.cos(shear), 0], [0, 0, 1]]
    zoom_m = [[zx, 0, 0], [0, zy, 0], [0, 0, 1]]
    mirror = [[1, 0, 0], [0, -1 if flip else 1, 0], [0, 0, 1]]
    center = [[1, 0, (height - 1) / 2], [0, 1, (width - 1) / 2], [0, 0, 1]]
    uncenter = [[1, 0, -(height - 1) / 2], [0, 1, -(width - 1) / 2], [0, 0, 1]]
    return np.array(compose(center, rotate, shift, shear_m, zoom_m, mirror, uncenter))


def compose(*matrices: list) -> list:
    """The product of 3x3 matrices in plain Python floats. Same bits on every CPU: NumPy would hand them to BLAS and
    np.cos/np.sin to SIMD code, both picked by CPU (AVX-512 or AVX2), whose last bits differ; `math` and `*`/`+` do not
    (written out: sum() of floats rounds differently from Python 3.12 on)."""
    product = matrices[0]
    for m in matrices[1:]:
        product = [
            [
                float(product[i][0]) * m[0][j] + float(product[i][1]) * m[1][j] + float(product[i][2]) * m[2][j]
                for j in range(3)
            ]
            for i in range(3)
        ]
    return product


def variant(image: np.ndarray, cfg, seed: tuple[int, ...]) -> np.ndarray:
    """One random variant of an (H, W, 3) uint8 image; edges are filled with the nearest pixel."""
    rng = np.random.default_rng(seed)
    matrix = random_matrix(rng, cfg, *image.shape[:2])
    channels = [
        ndimage.affine_transform(
            image[:, :, c].astype(np.float32), matrix[:2, :2], offset=matrix[:2, 2], order=1, mode="nearest"
        )
        for c in range(image.shape[2])
    ]
    return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)
