"""Sample predictions epoch by epoch (epoch_samples.py): one small dvclive image, rewritten every epoch, the same
bytes every run."""

from __future__ import annotations

import numpy as np
from PIL import Image

from transfer_learning import batches, epoch_samples, live, networks, seeding
from transfer_learning.records import Encoding

ENCODING = Encoding(task="classification", classes=("a", "b", "c"))


def train_with_samples(folder, epochs: int = 2):
    seeding.make_deterministic(0)
    rng = np.random.default_rng(0)
    features, targets = rng.normal(size=(30, 4)).astype(np.float32), np.arange(30) % 3
    pictures = rng.integers(0, 255, (30, 20, 20, 3), dtype=np.uint8)
    head = networks.build_head(4, 8, 0.0, 3, "classification")
    head.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    samples = epoch_samples.Samples.pick("train-head", features, pictures, targets, ENCODING)
    head.fit(
        batches.Batches(features, targets, 10, seed=0),
        epochs=epochs,
        verbose=0,
        shuffle=False,
        callbacks=live.callbacks(folder, samples=samples),
    )
    return samples, folder / "plots" / "images" / epoch_samples.NAME


def test_each_epoch_rewrites_one_small_grid_of_validation_predictions(tmp_path):
    samples, image = train_with_samples(tmp_path / "a")
    assert len(samples.inputs) == epoch_samples.SAMPLES and samples.actual.tolist() == [0, 1, 2, 0, 1, 2, 0, 2], (
        "spread evenly"
    )
    assert [p.name for p in image.parent.iterdir()] == [epoch_samples.NAME], "one file, not one per epoch"
    with Image.open(image) as grid:
        assert grid.size == (
            epoch_samples.COLUMNS * epoch_samples.CELL,
            epoch_samples.HEADER + 2 * (epoch_samples.CELL + epoch_samples.CAPTION),
        )
    assert image.stat().st_size < 200_000, "bounded (random pixels: the worst case for PNG)"
    _, again = train_with_samples(tmp_path / "b")
    assert again.read_bytes() == image.read_bytes()
    _, shorter = train_with_samples(tmp_path / "c", epochs=1)
    assert shorter.read_bytes() != image.read_bytes(), "the title names the epoch"
