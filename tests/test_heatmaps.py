"""Grad-CAM heatmaps (heatmaps.py): a tiny model taught that one quadrant decides the class looks there; the feature
map is found in every supported base; the grids are the same bytes every run."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
from keras import layers

from transfer_learning import heatmaps, networks, packaging, seeding
from transfer_learning.records import Encoding

SIZE = 32
ENCODING = Encoding(task="classification", classes=("horizontal", "vertical"))


def quadrant_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise everywhere; in the top-left quadrant stripes, horizontal (class 0) or vertical (class 1)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 90, (n, SIZE, SIZE, 3)).astype(np.float32)
    labels = np.arange(n) % 2
    stripes = (np.arange(SIZE // 2) // 2 % 2 * 160).astype(np.float32)
    for image, label in zip(images, labels):
        image[: SIZE // 2, : SIZE // 2] += (stripes[:, None] if label == 0 else stripes[None, :])[..., None]
    return np.clip(images, 0, 255).astype(np.uint8), labels


def tiny_model(outputs: int = 2, task: str = "classification") -> keras.Model:
    """The pipeline's shape on a small scale: pixels -> rescaling -> a nested convolutional base -> pooling -> head."""
    pixels = keras.Input((None, None, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(pixels)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(16, 3, padding="same", name="last_conv")(x)
    x = layers.BatchNormalization(name="last_bn")(x)
    base = keras.Model(pixels, layers.ReLU(name="last_relu")(x), name="tiny_base")
    inputs = keras.Input((SIZE, SIZE, 3), name="pixels")
    features = networks.pooling("avg")(base(layers.Rescaling(1 / 255)(inputs)))
    return keras.Model(inputs, networks.build_head(16, 16, 0.0, outputs, task)(features), name="transfer_model")


@pytest.fixture(scope="module")
def trained():
    seeding.make_deterministic(0)
    model = tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    images, labels = quadrant_images(256, seed=1)
    model.fit(images.astype(np.float32), labels, epochs=6, batch_size=32, verbose=0)
    return model


def test_the_heatmap_peaks_in_the_quadrant_that_decides_the_class(trained):
    images, labels = quadrant_images(16, seed=2)
    probabilities = np.asarray(trained.predict(images.astype(np.float32), verbose=0))
    assert (probabilities.argmax(-1) == labels).mean() >= 0.9, "the model learned the quadrant"
    explainer = heatmaps.Explainer(trained)
    assert explainer.feature_layer.name == "last_relu", (
        "the last convolution with the normalization and activation after it"
    )
    maps = explainer.gradcam(images, probabilities.argmax(-1))
    assert maps.shape == (16, SIZE // 2, SIZE // 2) and maps.max() == pytest.approx(1.0)
    half = maps.shape[1] // 2
    for heat in maps:
        row, col = np.unravel_index(heat.argmax(), heat.shape)
        assert row < half and col < half, "the peak is in the top-left quadrant"
        inside = heat[:half, :half].mean()
        assert (
            inside
            > 2 * np.delete(heat.reshape(-1), [r * heat.shape[1] + c for r in range(half) for c in range(half)]).mean()
        )


def test_the_flip_averaged_model_is_explained_through_the_network_inside_it(trained):
    images, _ = quadrant_images(4, seed=3)
    classes = np.array([0, 1, 0, 1])
    flipped = packaging.package(trained, ENCODING, "flip")
    assert np.allclose(
        heatmaps.Explainer(flipped).gradcam(images, classes), heatmaps.Explainer(trained).gradcam(images, classes)
    )


@pytest.mark.parametrize("name, layer", [("mobilenet_v2", "out_relu"), ("vgg16", "block5_conv3")])
def test_the_feature_map_is_found_in_every_supported_base(name, layer):
    base = networks.build_base(name, 0.35, "none")
    assert heatmaps.last_feature_map(base).name == layer


def test_the_grids_show_mistakes_and_correct_images_the_same_bytes_every_run(trained, tmp_path):
    images, labels = quadrant_images(12, seed=4)
    actual = np.array(ENCODING.classes)[labels]
    outputs = np.asarray(trained.predict(images.astype(np.float32), verbose=0))
    outputs[0] = [0.1, 0.9] if labels[0] == 0 else [0.9, 0.1]  # one made-up mistake
    paths = np.array([f"img_{i}.png" for i in range(12)])
    from transfer_learning import review

    worst = review.worst_cases(actual, outputs, ENCODING, paths)
    correct = heatmaps.correct_cases(actual, outputs, ENCODING, paths)
    assert (
        len(correct) == 2 * heatmaps.CORRECT_PER_CLASS
        and list(correct["actual"]) == ["horizontal"] * 2 + ["vertical"] * 2
    )
    assert 0 in worst["index"].tolist() and 0 not in correct["index"].tolist()
    lines = []
    for folder in ("a", "b"):
        lines.append(
            heatmaps.write(
                trained,
                images,
                worst=worst,
                correct=correct,
                encoding=ENCODING,
                folder=tmp_path / folder,
                report=tmp_path / "reports" / "review.md",
            )
        )
    assert "](../a/mistakes.png)" in "\n".join(lines[0]) and "](../a/correct.png)" in "\n".join(lines[0])
    for name in ("mistakes.png", "correct.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    heatmaps.write(
        trained,
        images,
        worst=worst.iloc[:0],
        correct=pd.DataFrame(columns=correct.columns),
        encoding=ENCODING,
        folder=tmp_path / "c",
        report=tmp_path / "r.md",
    )
    assert (tmp_path / "c" / "mistakes.png").stat().st_size > 0, "no mistake: the title alone"


def test_a_regression_model_is_explained_by_its_predicted_target(tmp_path):
    """Regression has no classes: the gradient of the one output (the CI failure of 2026-12-02: encoding.classes
    None)."""
    from transfer_learning import review

    seeding.make_deterministic(0)
    model = tiny_model(1, "regression")
    encoding = Encoding(task="regression", mean=25.0, std=10.0)
    images, _ = quadrant_images(6, seed=5)
    actual = np.arange(6, dtype=float) * 10
    outputs = np.asarray(model.predict(images.astype(np.float32), verbose=0))
    paths = np.array([f"img_{i}.png" for i in range(6)])
    worst = review.worst_cases(actual, outputs, encoding, paths)
    lines = heatmaps.write(
        model,
        images,
        worst=worst,
        correct=heatmaps.correct_cases(actual, outputs, encoding, paths),
        encoding=encoding,
        folder=tmp_path / "h",
        report=tmp_path / "reports" / "review.md",
    )
    assert "predicted target" in "\n".join(lines)
    assert (tmp_path / "h" / "mistakes.png").stat().st_size > 0 and (tmp_path / "h" / "correct.png").stat().st_size > 0


@pytest.mark.parametrize("count", [3, 8, 24])
def test_no_caption_of_a_grid_runs_into_the_image_above_it(count, monkeypatch):
    """heatmaps.grid with one, two and four rows: each image's three caption lines sit below the image over them (on
    Flowers-17 the mistakes grid, two rows, had its second row's captions over the first row's images)."""
    import matplotlib.pyplot as plt

    from transfer_learning import evaluation

    gaps = []

    def measure(fig, path, top=1.0):
        fig.tight_layout(rect=(0, 0, 1, top))
        fig.canvas.draw()
        axes = [ax for ax in fig.axes if ax.images]
        for above, below in zip(axes, axes[heatmaps.COLUMNS :]):
            gaps.append(above.get_window_extent().y0 - below.title.get_window_extent().y1)  # pixels, y upwards
        plt.close(fig)

    monkeypatch.setattr(evaluation, "save_figure", measure)
    images = np.random.default_rng(0).integers(0, 255, (count, 160, 160, 3), dtype=np.uint8)
    captions = ["image_0176.jpg\ntrue: lily_valley\npredicted: snowdrop (0.41)"] * count
    heatmaps.grid(images, captions, "title", None)
    assert len(gaps) == max(0, count - heatmaps.COLUMNS) and all(gap > 0 for gap in gaps), gaps
