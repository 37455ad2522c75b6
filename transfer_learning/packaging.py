"""The model users load (models/model.keras), made from the trained network: regression outputs in the target's unit,
and test-time augmentation baked in.

With fine_tune.tta: flip the saved model runs the network on the image and on its mirror image and averages the two
outputs, so predict and every user of the file get it. Plain serializable layers only (safe_mode=True loads them).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from transfer_learning.records import Encoding


def package(model: keras.Model, encoding: Encoding, tta: str = "none") -> keras.Model:
    """The model users load: regression outputs go back to the target's unit (x * std + mean).

    tta: flip averages the outputs (class probabilities, or standardized targets) of the image and its mirror image."""
    if tta == "flip":
        pixels = keras.Input(model.input.shape[1:], name="image")
        mirrored = pixels
        for layer in mirror(model.input.shape[2]):
            mirrored = layer(mirrored)
        outputs = layers.Average(name="mean_over_flips")([model(pixels), model(mirrored)])
        model = keras.Model(pixels, outputs, name=f"{model.name}_flip_averaged")
    if encoding.is_classification:
        return model
    outputs = layers.Rescaling(encoding.std, offset=encoding.mean, name="to_target_unit")(model.output)
    return keras.Model(model.input, outputs, name=model.name)


def mirror(width: int) -> list[layers.Layer]:
    """Layers that flip an (height, width, channels) image left to right: the columns go last, a fixed Dense layer
    reverses them (its kernel is the anti-diagonal identity: every output is one input times 1, exactly), and back.
    Plain serializable layers, unlike a Lambda of tf.reverse, which safe_mode refuses to load."""
    reverse = layers.Dense(width, use_bias=False, trainable=False, name="reverse_columns")
    reverse.build((None, None, None, width))
    reverse.set_weights([np.eye(width, dtype=np.float32)[::-1]])
    return [layers.Permute((1, 3, 2), name="columns_last"), reverse, layers.Permute((1, 3, 2), name="columns_back")]
