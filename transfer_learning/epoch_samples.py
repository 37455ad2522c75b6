"""Sample predictions, epoch by epoch: a fixed grid of validation images with the labels the model being trained gives
them, logged as a dvclive image (live.callbacks) by train-head and fine-tune.

One small PNG per stage, <dvclive folder>/plots/images/predictions.png (SAMPLES images of CELL pixels, about 400 x 270),
rewritten at the end of every epoch, as dvclive's step images are: the file always shows the last finished epoch
(named in its title), `dvc plots` and VS Code's DVC extension show it as the run goes, and a run leaves one file,
not one per epoch. The grid is drawn with Pillow alone (no matplotlib: a few milliseconds an epoch) and saved by
dvclive without metadata, so a rerun writes the same bytes. No epoch is trained (epochs: 0): no image.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from transfer_learning.records import Encoding

SAMPLES = 8  # validation images in the grid: spread evenly over the split, the same every epoch and run
COLUMNS = 4
CELL = 96  # pixels per image
CAPTION = 28  # pixels under each image: true and predicted label
HEADER = 18
NAME = "predictions.png"


@dataclass(frozen=True)
class Samples:
    """The grid's rows: what the trained model reads (features, activations or images), the pictures, the true
    labels."""

    stage: str
    inputs: np.ndarray
    pictures: np.ndarray
    actual: np.ndarray  # encoded: class indices or standardized targets
    encoding: Encoding

    @classmethod
    def pick(
        cls, stage: str, inputs: np.ndarray, pictures: np.ndarray, actual: np.ndarray, encoding: Encoding
    ) -> Samples:
        rows = (
            np.unique(np.linspace(0, len(inputs) - 1, min(SAMPLES, len(inputs))).astype(int))
            if len(inputs)
            else np.zeros(0, int)
        )
        return cls(
            stage,
            np.asarray(inputs[rows], dtype=np.float32),
            np.asarray(pictures[rows]),
            np.asarray(actual[rows]),
            encoding,
        )

    def label(self, encoded) -> str:
        if self.encoding.is_classification:
            return str(self.encoding.classes[int(encoded)])
        return f"{float(encoded) * self.encoding.std + self.encoding.mean:.3g}"

    def callback(self, live) -> keras.callbacks.Callback:
        return SamplePredictions(self, live)


def grid(samples: Samples, outputs: np.ndarray, epoch: int):
    """The PIL image: each picture with its true and predicted label (green if right, red if wrong)."""
    from PIL import Image, ImageDraw, ImageFont

    rows = -(-len(samples.pictures) // COLUMNS)
    image = Image.new("RGB", (COLUMNS * CELL, HEADER + rows * (CELL + CAPTION)), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=11)
    draw.text((4, 3), f"{samples.stage}: validation samples after epoch {epoch + 1}", fill="black", font=font)
    for i, (picture, actual, output) in enumerate(zip(samples.pictures, samples.actual, outputs)):
        x, y = i % COLUMNS * CELL, HEADER + i // COLUMNS * (CELL + CAPTION)
        image.paste(Image.fromarray(picture).resize((CELL - 4, CELL - 4), Image.Resampling.BILINEAR), (x + 2, y + 2))
        predicted = output.argmax() if samples.encoding.is_classification else output.reshape(-1)[0]
        right = samples.encoding.is_classification and predicted == actual
        draw.text((x + 3, y + CELL), f"true: {samples.label(actual)[:14]}", fill="black", font=font)
        draw.text(
            (x + 3, y + CELL + 13),
            f"pred: {samples.label(predicted)[:14]}",
            font=font,
            fill="black" if not samples.encoding.is_classification else "darkgreen" if right else "red",
        )
    return image


class SamplePredictions(keras.callbacks.Callback):
    """At each epoch's end, the grid of the model as it is then, into dvclive (before dvclive's own callback ends the
    step). The model is called directly (not predict): no distributed function, so the chief alone can run it."""

    def __init__(self, samples: Samples, live):
        super().__init__()
        self.samples, self.live = samples, live

    def on_epoch_end(self, epoch, logs=None):
        if not len(self.samples.inputs):
            return
        outputs = np.asarray(self.model(self.samples.inputs, training=False), dtype=np.float32)
        self.live.log_image(NAME, grid(self.samples, outputs, epoch))
