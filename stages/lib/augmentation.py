"""Random affine variants of an image, the knobs of Keras' ImageDataGenerator, without TensorFlow.

Each variant's randomness comes from its own seed (augment.seed, image index, copy number), so the
output does not depend on thread scheduling or on how many images come before it.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def random_matrix(rng: np.random.Generator, cfg, height: int, width: int) -> np.ndarray:
    """A 3x3 affine map of output pixel coordinates (row, col, 1) to input coordinates."""
    theta = np.deg2rad(rng.uniform(-cfg.rotation, cfg.rotation))
    tx = rng.uniform(-cfg.height_shift, cfg.height_shift) * height
    ty = rng.uniform(-cfg.width_shift, cfg.width_shift) * width
    shear = np.deg2rad(rng.uniform(-cfg.shear, cfg.shear))
    zx, zy = rng.uniform(1 - cfg.zoom, 1 + cfg.zoom, size=2)
    flip = cfg.horizontal_flip and rng.random() < 0.5
    rotate = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    shear_m = np.array([[1, -np.sin(shear), 0], [0, np.cos(shear), 0], [0, 0, 1]])
    zoom_m = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    mirror = np.array([[1, 0, 0], [0, -1 if flip else 1, 0], [0, 0, 1]])
    center = np.array([[1, 0, (height - 1) / 2], [0, 1, (width - 1) / 2], [0, 0, 1]])
    uncenter = np.array([[1, 0, -(height - 1) / 2], [0, 1, -(width - 1) / 2], [0, 0, 1]])
    return center @ rotate @ shift @ shear_m @ zoom_m @ mirror @ uncenter


def variant(image: np.ndarray, cfg, seed: tuple[int, ...]) -> np.ndarray:
    """One random variant of an (H, W, 3) uint8 image; edges are filled with the nearest pixel."""
    rng = np.random.default_rng(seed)
    matrix = random_matrix(rng, cfg, *image.shape[:2])
    channels = [
        ndimage.affine_transform(image[:, :, c].astype(np.float32), matrix[:2, :2], offset=matrix[:2, 2], order=1, mode="nearest")
        for c in range(image.shape[2])
    ]
    return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)
