"""Where extract-features runs the frozen base (base.runtime): TensorFlow, or LiteRT (TFLite's interpreter, XNNPACK).

The forward pass of the frozen base is all extract-features computes. benchmarks/runtimes.py measured it in every
CPU runtime at hand: TFLite with XNNPACK ran MobileNetV2-0.35 5x faster than TensorFlow under the project's settings
at batch 64 on one thread (benchmarks/README.md). So with `litert` the stage converts its Keras extractor, in memory,
to a float32 TFLite model with the same outputs (the pooled features and, with cached activations, the activations
at the cut) and runs that over the same batches, into the same files.

What it gives up: its outputs differ from TensorFlow's by float rounding (not the same bytes as the `tensorflow`
runtime), and XNNPACK picks its kernels by the CPU's instruction set, so the bytes may differ across CPU kinds. On one
machine they are the same run to run, for any thread count (tests/test_runtimes.py). Training does not run in TFLite:
train-head and fine-tune stay in TensorFlow.
"""

from __future__ import annotations

import re
import warnings
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import tensorflow as tf

from transfer_learning.errors import PipelineError, one_line

SIGNATURE = "serving_default"


def on_runtime(runtime: str, features_only: keras.Model, extractor: keras.Model, threads: int):
    """(features_only, extractor) as they run on `runtime`: the Keras models themselves, or LiteRT ones with the same
    outputs and predict. The extractor (features and, with a cut, activations) is converted once; the features-only
    model then reads the features output of the same TFLite model, whose activations it leaves unread."""
    if runtime == "tensorflow":
        return features_only, extractor
    both = LiteRTModel(tflite_model(extractor), extractor, threads)
    return (both if features_only is extractor else both.first_output(features_only)), both


def tflite_model(model: keras.Model) -> bytes:
    """The Keras model as a float32 TFLite model, in memory: a tf.function of its forward pass (inference mode) whose
    outputs are named after the model's outputs, over the model's variables, which the converter makes constants.
    TFLite's built-in ops only (no TensorFlow ops inside it): a base with others is refused in one line."""
    names = list(model.output_names)
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="pixels")
    forward = tf.function(
        lambda pixels: dict(zip(names, tf.nest.flatten(model(pixels, training=False)))), input_signature=[spec]
    )
    holder = tf.Module()  # tracks the variables (not the Keras model: its variables would stay variables)
    holder.model_variables = [v.value for v in model.variables]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converter = tf.lite.TFLiteConverter.from_concrete_functions([forward.get_concrete_function()], holder)
            return converter.convert()
    except Exception as exc:  # the converter raises ConverterError, ValueError or others for an op it lacks
        missing = sorted(set(re.findall(r"'(tf\.\w+)' op is neither a custom op nor a flex op", str(exc))))
        why = f"TFLite has no built-in op for {', '.join(missing)}" if missing else one_line(exc)[:300]
        raise PipelineError(
            f"base.runtime litert: the base cannot be converted to TFLite ({why}); set base.runtime: tensorflow"
        ) from None


class LiteRTModel:
    """A TFLite model in TensorFlow's interpreter (LiteRT's; XNNPACK runs the float32 ops), with what
    inference.predict_to_npy uses of a Keras model: name, outputs (their shapes) and predict over a PyDataset.

    The interpreter's outputs are read by their names in the model's signature, the Keras model's output names; each
    is checked against the Keras output's shape."""

    def __init__(self, content: bytes, model: keras.Model, threads: int, names: list[str] | None = None, runner=None):
        self.name, self.outputs = model.name, list(model.outputs)
        self.names = names or list(model.output_names)
        if runner is None:
            with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation note: LiteRT's is the same API
                warnings.simplefilter("ignore")
                runner = tf.lite.Interpreter(model_content=content, num_threads=threads).get_signature_runner(SIGNATURE)
        self._runner, self._content, self._threads = runner, content, threads
        details = runner.get_output_details()
        for name, output in zip(self.names, self.outputs):
            if name not in details or tuple(details[name]["shape_signature"][1:]) != tuple(output.shape[1:]):
                raise ValueError(f"the TFLite model of {self.name} has no output {name} of shape {output.shape}")
        ((self._input, _),) = runner.get_input_details().items()

    def first_output(self, model: keras.Model) -> LiteRTModel:
        """The same interpreter, giving only its first output as `model`'s (the features of the extractor)."""
        return LiteRTModel(self._content, model, self._threads, names=self.names[:1], runner=self._runner)

    def predict_on_batch(self, pixels: np.ndarray):
        """float32 pixels -> the model's outputs (one array, or a list in the order of `outputs`)."""
        result = self._runner(**{self._input: np.asarray(pixels, np.float32)})
        values = [result[name] for name in self.names]
        return values if len(values) > 1 else values[0]

    def predict(self, dataset: keras.utils.PyDataset, verbose: int = 0):
        """Every batch of `dataset`, in order, as Keras' predict concatenates them. The next batch is decoded while
        this one runs: with a fast runtime, decoding is most of the time."""
        with ThreadPoolExecutor(1) as ahead:
            pending = ahead.submit(dataset.__getitem__, 0) if len(dataset) else None
            results = []
            for index in range(len(dataset)):
                batch = pending.result()
                if index + 1 < len(dataset):
                    pending = ahead.submit(dataset.__getitem__, index + 1)
                results.append(self.predict_on_batch(batch))
        if len(self.names) == 1:
            return np.concatenate(results)
        return [np.concatenate([result[i] for result in results]) for i in range(len(self.names))]
