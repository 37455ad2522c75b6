"""base.runtime litert (transfer_learning/runtimes.py): extract-features' frozen pass as a TFLite model gives
TensorFlow's features and cached activations to float rounding, the same bytes every run and with any thread count,
and a base TFLite cannot run is one line."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from transfer_learning import backbones, inference, networks, runtimes
from transfer_learning.errors import PipelineError

SIZE = 32  # the smallest input MobileNetV2 takes: seconds, not minutes
# largest |litert - tensorflow| as a fraction of the largest |tensorflow| output: measured 5e-6 (features) and 3e-6
# (activations) on these images, 3e-5 and 8e-6 on the digits at 96 px (benchmarks/README.md)
TOLERANCE = 5e-5


@pytest.fixture(scope="module")
def extractors():
    """The default base (MobileNetV2-0.35, the offline ImageNet weights) at 32 px: features only, and features with
    the activations at a fine-tune cut, as extract-features builds them."""
    base = networks.build_base("mobilenet_v2", 0.35, "imagenet", False, SIZE)
    features_only = networks.feature_extractor(base, "mobilenet_v2", SIZE, "avg")
    cut = backbones.cut("mobilenet_v2", "block_16_expand")
    return features_only, networks.feature_extractor(base, "mobilenet_v2", SIZE, "avg", cut)


@pytest.fixture(scope="module")
def converted(extractors) -> bytes:
    """The extractor as a TFLite model (the stage's conversion, once: seconds on a loaded machine)."""
    return runtimes.tflite_model(extractors[1])


def images(rows: int = 70) -> np.ndarray:
    """Random uint8 pictures: 70 rows are a batch of 64 and one of 6 in predict_to_npy."""
    return np.random.default_rng(0).integers(0, 256, (rows, SIZE, SIZE, 3), dtype=np.uint8)


def extract(tmp_path, name: str, model) -> list[np.ndarray]:
    """predict_to_npy, as the stage calls it: one .npy per output of the model."""
    files = [tmp_path / f"{name}-{i}.npy" for i in range(len(model.outputs))]
    inference.predict_to_npy(model, images(), files, np.float32, desc=name)
    return [np.load(file) for file in files]


def test_litert_gives_tensorflows_features_and_activations_to_float_rounding_the_same_bytes_every_run(
    tmp_path, extractors, converted
):
    features_only, extractor = extractors
    tensorflow = extract(tmp_path, "tensorflow", extractor)
    # two runs, each in a new interpreter: on 1 and on 2 threads
    first, second = (
        extract(tmp_path, f"litert-{threads}", runtimes.LiteRTModel(converted, extractor, threads))
        for threads in (1, 2)
    )
    for reference, litert, again in zip(tensorflow, first, second):
        assert litert.shape == reference.shape and litert.dtype == np.float32
        assert np.abs(litert - reference).max() <= TOLERANCE * np.abs(reference).max()
        assert litert.tobytes() == again.tobytes()
    assert not np.array_equal(first[0], tensorflow[0]), "TFLite rounds otherwise: if equal, the test ran TensorFlow"
    # the test split: the features-only model reads the features output of the same TFLite model, to the bytes
    (test_features,) = extract(
        tmp_path, "features", runtimes.LiteRTModel(converted, extractor, 2).first_output(features_only)
    )
    assert test_features.tobytes() == second[0].tobytes()


def test_the_runtime_choice_converts_each_model_once_and_tensorflow_leaves_them_as_they_are():
    pixels = keras.Input((8, 8, 3), name="pixels")
    small = keras.Model(pixels, keras.layers.GlobalAveragePooling2D(name="pool")(keras.layers.Conv2D(4, 3)(pixels)))
    alone, same = runtimes.on_runtime("litert", small, small, 1)
    assert alone is same and alone.names == ["pool"]
    x = np.random.default_rng(0).uniform(0, 255, (5, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(alone.predict_on_batch(x), small.predict_on_batch(x), rtol=1e-5, atol=1e-5)
    assert runtimes.on_runtime("tensorflow", small, small, 1) == (small, small)


class Svd(keras.layers.Layer):
    """An op TFLite has no built-in kernel for (it would need TensorFlow's own ops inside the interpreter)."""

    def call(self, x):
        return tf.linalg.svd(tf.reshape(x, (-1, 4, 4)), compute_uv=False)


def test_a_base_tflite_cannot_convert_is_one_line_naming_base_runtime_and_the_fix():
    pixels = keras.Input((4, 4, 1), name="pixels")
    model = keras.Model(pixels, Svd()(pixels))
    with pytest.raises(PipelineError) as info:
        runtimes.on_runtime("litert", model, model, 1)
    assert str(info.value) == (
        "base.runtime litert: the base cannot be converted to TFLite (TFLite has no built-in op for tf.Svd); "
        "set base.runtime: tensorflow"
    )
