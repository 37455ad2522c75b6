"""transfer_learning/augmentation.py: seeded random variants of the training images."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from transfer_learning import augmentation


def augment_cfg(**overrides):
    cfg = dict(horizontal_flip=True, rotation=20, width_shift=0.1, height_shift=0.1, shear=10, zoom=0.1)
    return SimpleNamespace(**cfg | overrides)


def test_augmentation_is_seeded_and_identity_without_knobs():
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    first = augmentation.variant(image, augment_cfg(), (0, 1, 0))
    assert first.shape == image.shape and first.dtype == np.uint8
    assert np.array_equal(first, augmentation.variant(image, augment_cfg(), (0, 1, 0)))
    assert not np.array_equal(first, augmentation.variant(image, augment_cfg(), (0, 1, 1)))
    still = augment_cfg(horizontal_flip=False, rotation=0, width_shift=0, height_shift=0, shear=0, zoom=0)
    assert np.array_equal(augmentation.variant(image, still, (0, 0, 0)), image)


def test_horizontal_flip_mirrors():
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :2] = 255
    flip_only = augment_cfg(rotation=0, width_shift=0, height_shift=0, shear=0, zoom=0)
    variants = [augmentation.variant(image, flip_only, (0, 0, c)) for c in range(8)]
    assert any(v[:, -2:].min() == 255 and v[:, :2].max() == 0 for v in variants)
