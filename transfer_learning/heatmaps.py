"""Where the fine-tuned model looked: Grad-CAM class-activation heatmaps (Selvaraju et al., 2017) of the saved model.

The saved model (raw pixels in) is read as it is: the network in it whose layers include a convolutional base (a nested
model with a 4-D output, whatever the base), and in the base its last convolutional feature map: its last layer with
a 4-D output that is not a pooling layer (MobileNetV2: out_relu; VGG16: block5_conv3, before the last max pooling;
every keras.applications family, docs/backbones.md). Grad-CAM weighs each channel of that map by the mean gradient of
the score (the class's logit, before the softmax; regression: the predicted target) and keeps the positive part, so the
map shows what raised the score. With test-time augmentation (fine_tune.tta: flip) the network inside the flip average
is explained, on the image as it is.

- gradcam(): (n, H, W, 3) uint8 images -> (n, h, w) maps in [0, 1] at the feature map's resolution.
- overlay(): a map upsampled onto its image (jet colours, half transparent).
- write(): the overlays of the worst mistakes (or largest errors) and of the most confident correct images per class,
  as grids under plots/evaluate/figures/heatmaps (evaluation.image_grid: PNGs without metadata, the same bytes
  every run). -> the Markdown lines of the review that show them.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from keras import layers

from transfer_learning import evaluation, review
from transfer_learning.errors import PipelineError
from transfer_learning.records import Encoding

MISTAKES = 8  # worst cases shown with their heatmaps
CORRECT_PER_CLASS = 2  # most confident correct test images per class (regression: smallest errors, in all)
CORRECT_MAX = 24  # at most this many correct images (many classes: the first classes)
BATCH = 16  # images per gradient pass
COLUMNS, CELL = 6, 1.6  # the grids: images per row, inches per image (160 pixels)
# Inches of a row above its image, for the three caption lines: with less, matplotlib's tight layout let a two-row
# grid's captions run into the images above them (the mistakes grid on Flowers-17, 0.55 in)
CAPTION = 0.75
# Layers after the last feature map, skipped in the search for it
POOLING = (layers.MaxPooling2D, layers.AveragePooling2D)


class Explainer:
    """The saved model cut at its base's last convolutional feature map, for Grad-CAM."""

    def __init__(self, model: keras.Model):
        found = network_and_base(model)
        if found is None:
            raise PipelineError(
                f"model {model.name}: no convolutional base (a nested model with a 4-D output) in it; "
                "heatmaps need the base (rebuild the model with `dvc repro --force`)"
            )
        self.network, self.base = found
        self.checked = False  # the chain against the network, once: it is the same chain for every batch
        self.feature_layer = last_feature_map(self.base)
        output = self.feature_layer.output
        self.bottom = keras.Model(self.base.input, output, name="base_to_feature_map")
        self.top = (
            None
            if output is self.base.output
            else keras.Model(output, self.base.output, name="feature_map_to_base_output")
        )

    def run(self, x, model: keras.Model | None = None, logits: bool = False, seen: list | None = None):
        """The network's layers in order (a chain: each takes the one before), the feature map appended to `seen`;
        with `logits` the last softmax layer's input instead of its output."""
        model = model or self.network
        chain = [layer for layer in model.layers if not isinstance(layer, layers.InputLayer)]
        for i, layer in enumerate(chain):
            last = logits and i == len(chain) - 1
            if layer is self.base:
                features = self.bottom(x, training=False)
                seen.append(features)
                x = features if self.top is None else self.top(features, training=False)
            elif isinstance(layer, keras.Model):
                x = self.run(x, layer, last, seen)
            elif last and isinstance(layer, layers.Dense) and layer.activation is keras.activations.softmax:
                x = keras.ops.add(keras.ops.matmul(x, layer.kernel), layer.bias)  # the logits: Grad-CAM's class score
            else:
                x = layer(x, training=False)
        return x

    def gradcam(self, images: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
        """Maps in [0, 1] of `images` (n, H, W, 3 uint8) for the class of each row of `targets` (indices; None:
        regression)."""
        import tensorflow as tf

        maps = []
        for start in range(0, len(images), BATCH):
            x = tf.constant(np.asarray(images[start : start + BATCH], dtype=np.float32))
            seen = []
            with tf.GradientTape() as tape:
                out = self.run(x, logits=targets is not None, seen=seen)
                tape.watch(seen[0])
                out = tf.cast(out, tf.float32)
                if targets is None:
                    score = tf.reduce_sum(out)
                else:
                    rows = targets[start : start + BATCH]
                    score = tf.reduce_sum(tf.gather(out, rows, axis=1, batch_dims=1))
            if not self.checked:  # a forward pass of the network: once, not per batch (evaluate's time, issue 29)
                self.check(x, out, targets is not None)
                self.checked = True
            features = tf.cast(seen[0], tf.float32)
            grads = tape.gradient(score, seen[0])
            weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2), keepdims=True)
            cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy()
            peak = cam.max(axis=(1, 2), keepdims=True)
            maps.append(np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0))
        return np.concatenate(maps) if maps else np.zeros((0, 1, 1), np.float32)

    def check(self, x, out, logits: bool) -> None:
        """The chain must be the network: its outputs as the network gives them (else the maps would explain another
        one)."""
        expected = np.asarray(self.network(x, training=False), dtype=np.float32)
        got = np.asarray(keras.ops.softmax(out) if logits else out, dtype=np.float32)
        if not np.allclose(got, expected, atol=1e-3):
            raise PipelineError(
                f"model {self.network.name}: its layers are not one chain from pixels to outputs; "
                "heatmaps cannot be computed for it"
            )


def network_and_base(model: keras.Model):
    """(the network holding the base, the base): the first nested model with a 4-D output, searched depth first."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    for layer in nested:
        if len(layer.output.shape) == 4:
            return model, layer
    for layer in nested:
        found = network_and_base(layer)
        if found:
            return found
    return None


def last_feature_map(base: keras.Model) -> layers.Layer:
    """The base's last feature map: its last layer with a 4-D output that is not a pooling layer (VGG: block5_conv3
    before the last max pooling; MobileNetV2: out_relu; ResNet V2: post_relu; ConvNeXt: its final LayerNormalization),
    which every keras.applications family ends with after its last convolution."""
    if not any(hasattr(layer, "kernel_size") for layer in base._flatten_layers(include_self=False)):
        raise PipelineError(f"base {base.name}: no convolution in it; heatmaps need a convolutional base")
    end = len(base.layers) - 1
    while end > 0 and (isinstance(base.layers[end], POOLING) or len(base.layers[end].output.shape) != 4):
        end -= 1
    return base.layers[end]


def upsample(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map to (height, width), bilinear (Pillow: the same numbers every run)."""
    from PIL import Image

    return np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize(size[::-1], Image.Resampling.BILINEAR))


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The map in jet colours over the image (uint8, H x W x 3): red where the score rose most."""
    import matplotlib

    colours = matplotlib.colormaps["jet"](np.clip(upsample(heat, image.shape[:2]), 0, 1))[..., :3] * 255
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * colours, 0, 255).astype(np.uint8)


def correct_cases(actual: np.ndarray, outputs: np.ndarray, encoding: Encoding, paths: np.ndarray) -> pd.DataFrame:
    """The most confident correct test images, CORRECT_PER_CLASS per class in class order (regression: the smallest
    errors), at most CORRECT_MAX; ties in test order. Columns as review.worst_cases."""
    if encoding.is_classification:
        classes = np.asarray(encoding.classes)
        frame = pd.DataFrame(
            {
                "index": np.arange(len(actual)),
                "path": paths,
                "actual": actual,
                "predicted": classes[outputs.argmax(axis=-1)],
                "probability": outputs.max(axis=-1).astype(float),
            }
        )
        frame = frame[frame["predicted"] == frame["actual"]]
        frame = frame.iloc[np.lexsort((frame["index"].to_numpy(), -frame["probability"].to_numpy()))]
        frame = frame.groupby("actual", sort=False).head(CORRECT_PER_CLASS)
        order = frame["actual"].map({name: i for i, name in enumerate(encoding.classes)}).to_numpy()
        frame = frame.iloc[np.lexsort((frame["index"].to_numpy(), -frame["probability"].to_numpy(), order))]
    else:
        frame = review.worst_cases(actual, outputs, encoding, paths)
        frame = frame.iloc[np.lexsort((frame["index"].to_numpy(), frame["error"].abs().to_numpy()))].head(
            CORRECT_PER_CLASS * 4
        )
    return frame.head(CORRECT_MAX).reset_index(drop=True)


def grid(images: np.ndarray, captions: list[str], title: str, path: Path, columns: int = COLUMNS) -> None:
    """evaluation.image_grid in smaller cells (CELL inches, three caption lines over each image): a PR comment shows a
    page of them, not megabytes."""
    evaluation.image_grid(
        images,
        captions,
        title,
        path,
        columns,
        cell=CELL,
        row_height=CELL + CAPTION,
        title_height=0.5,
        fontsizes=(7, 10),
    )


def write(
    model: keras.Model,
    images: np.ndarray,
    *,
    worst: pd.DataFrame,
    correct: pd.DataFrame,
    encoding: Encoding,
    folder: Path,
    report: Path,
) -> list[str]:
    """The heatmap grids of the first MISTAKES rows of `worst` and of `correct` into `folder`; -> the review's
    section."""
    explainer = Explainer(model)
    task = encoding.task
    shown = {"mistakes.png": worst.head(MISTAKES), "correct.png": correct}
    index = {name: i for i, name in enumerate(encoding.classes or [])}  # regression has no classes
    titles = {
        "mistakes.png": review.figure_title(worst, task, MISTAKES).replace(
            "Fine-tuned model:", "Grad-CAM of the fine-tuned model:"
        ),
        "correct.png": "Grad-CAM of the fine-tuned model: its most confident correct test images"
        if task == "classification"
        else "Grad-CAM of the fine-tuned model: the test images with the smallest errors",
    }
    lines = [
        "## Where the fine-tuned model looked",
        "",
        f"Grad-CAM at the last convolutional feature map of the base ({explainer.feature_layer.name}): red where the "
        + ("predicted class's score" if task == "classification" else "predicted target")
        + " rose most.",
        "",
    ]
    for name, cases in shown.items():
        rows = cases["index"].to_numpy()
        pictures = np.asarray(images[rows]) if len(rows) else np.zeros((0,) + images.shape[1:], np.uint8)
        classes = np.array([index[c] for c in cases["predicted"]]) if task == "classification" else None
        maps = explainer.gradcam(pictures, classes)
        path = folder / name
        grid(
            np.stack([overlay(p, m) for p, m in zip(pictures, maps)]) if len(rows) else pictures,
            [review.caption(row, task) for row in cases.itertuples()],
            titles[name],
            path,
        )
        lines += [f"![{titles[name]}]({Path(os.path.relpath(path, Path(report).parent)).as_posix()})", ""]
    return lines[:-1]
