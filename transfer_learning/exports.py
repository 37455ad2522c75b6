"""Deployable exports of the fine-tuned model (stage export) and the runners that predict with each of them
(`transfer-learning predict --model ...`).

Formats, all in models/export/ (beside them a copy of encoding.json, so the folder is self-contained):
    saved_model/        TensorFlow SavedModel (TF Serving): signature `serving_default` takes float32 pixels (0-255),
                        `serving_uint8` uint8 pixels; both give `probabilities` (or `target`, in its unit)
    model.tflite        TFLite / LiteRT, float32: float32 pixels in, float32 out
    model_int8.tflite   TFLite full-integer: every op int8, calibrated on a seeded sample of the training split;
                        uint8 pixels in (scale 1, zero point 0 when the sample spans 0-255), float32 out
    model.onnx          ONNX (tf2onnx, opset 17): float32 pixels in, float32 out

Reruns give the same bytes for the SavedModel (its fingerprint.pb holds a random UUID: it is cleared, the hashes of
the rest stay) and both TFLite files. model.onnx is not byte-reproducible: tf2onnx merges equal constants (the 0 and
6 of every ReLU6) into one of them picked in an order that changes from process to process, which renames tensors
and reorders the graph; the same network, outputs equal to float rounding. What is compared for it instead is its
outputs: metrics/export.json (test figures, agreement and largest difference to the Keras model) is byte-identical;
its size, which changes by a few bytes, is in metrics/export_speed.json with the timings.
Each runner has what predict needs of a Keras model: input_shape, output_shape and predict_on_batch(float32 pixels).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from transfer_learning import files
from transfer_learning.errors import PipelineError
from transfer_learning.records import Encoding

CALIBRATION_IMAGES = 100  # training images the int8 quantization is calibrated on (a seeded sample)
CALIBRATION_SEED = 0
ONNX_OPSET = 17
BATCH_SIZE = 64  # test images per call when scoring a format (inference.BATCH_SIZE)
SPEED_BATCHES = {1: 16, 32: 3}  # batch size -> timed calls (after one untimed warm-up call): seconds, not minutes

# format -> file or folder in the export folder
FILES = {
    "saved_model": "saved_model",
    "tflite_float32": "model.tflite",
    "tflite_int8": "model_int8.tflite",
    "onnx": "model.onnx",
}
NOT_BYTE_IDENTICAL = ("onnx",)  # formats whose bytes (and size, by a few bytes) change from run to run: see above


def output_name(encoding: Encoding) -> str:
    return "probabilities" if encoding.is_classification else "target"


class Serving(tf.Module):
    """The signatures of the SavedModel over the Keras model's forward pass. Only the model's variables are tracked,
    in its own order (the Keras model itself stays out of the object graph: its variables would be saved twice, and
    TFLite's converter would keep them as variables instead of constants). Keras' ExportArchive lists them as
    collected from traced functions, in an order that changes between runs: other bytes."""

    def __init__(self, model, name: str):
        super().__init__()
        self.model_variables = [v.value for v in model.variables]
        shape = (None, *model.input_shape[1:])

        def serve(pixels):
            return {name: model(pixels, training=False)}

        def serve_uint8(pixels):
            return {name: model(tf.cast(pixels, tf.float32), training=False)}

        self.serve = tf.function(serve, input_signature=[tf.TensorSpec(shape, tf.float32, name="pixels")])
        self.serve_uint8 = tf.function(serve_uint8, input_signature=[tf.TensorSpec(shape, tf.uint8, name="pixels")])


def save_saved_model(model, encoding: Encoding, folder: Path) -> None:
    """A SavedModel folder, written beside as <folder>.tmp and renamed when complete."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        module = Serving(model, output_name(encoding))
        tf.saved_model.save(
            module, str(tmp), signatures={"serving_default": module.serve, "serving_uint8": module.serve_uint8}
        )
        clear_uuid(tmp / "fingerprint.pb")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        files.to_disk(folder.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clear_uuid(fingerprint: Path) -> None:
    """fingerprint.pb holds hashes of the SavedModel's parts (kept) and a random UUID (cleared: reproducible bytes)."""
    from tensorflow.core.protobuf import fingerprint_pb2

    proto = fingerprint_pb2.FingerprintDef.FromString(fingerprint.read_bytes())
    proto.ClearField("uuid")
    fingerprint.write_bytes(proto.SerializeToString(deterministic=True))


def tflite_float32(saved_model: Path) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=["serving_default"])
    return converter.convert()


def tflite_int8(saved_model: Path, calibration: np.ndarray) -> bytes:
    """Full-integer post-training quantization: weights and activations int8, ranges from the calibration images
    (uint8 pixels, one at a time as a float32 batch of one); input uint8 (raw pixels), output float32 (dequantized
    once, at the end: probabilities or the target keep their precision)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=["serving_default"])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None].astype(np.float32)] for image in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.float32
    return converter.convert()


def onnx_bytes(model, encoding: Encoding) -> bytes:
    """ONNX through tf2onnx, from the same forward pass as the SavedModel's serving_default."""
    import tf2onnx

    name = output_name(encoding)
    function = tf.function(lambda pixels: {name: model(pixels, training=False)})
    spec = (tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="pixels"),)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=ONNX_OPSET)
    return proto.SerializeToString(deterministic=True)


def calibration_sample(images: np.ndarray, count: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """A seeded sample of `count` images (all of them if fewer), in their order in the split."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(images), size=min(count, len(images)), replace=False))
    return np.asarray(images[rows])


def in_float32(model):
    """The model computing in float32. One trained under base.precision bfloat16 (mixed precision: float32 variables,
    bfloat16 computation) has bfloat16 ops, which TFLite and ONNX do not run: the same layers and weights, rebuilt
    with every layer's dtype policy float32. A float32 model is returned as it is."""
    import keras

    config = keras.saving.serialize_keras_object(model)
    if '"mixed_bfloat16"' not in json.dumps(config):
        return model

    def float32(node):
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy" and node.get("config", {}).get("name") == "mixed_bfloat16":
                return {**node, "config": {**node["config"], "name": "float32"}}
            return {key: float32(value) for key, value in node.items()}
        return [float32(value) for value in node] if isinstance(node, list) else node

    rebuilt = keras.saving.deserialize_keras_object(float32(config), safe_mode=True)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def export_all(model, encoding: Encoding, calibration: np.ndarray, folder: Path) -> dict[str, Path]:
    """Every format into `folder` -> format: its path. Each file is written atomically."""
    folder = Path(folder)
    model = in_float32(model)
    saved_model = folder / FILES["saved_model"]
    save_saved_model(model, encoding, saved_model)
    written = {"saved_model": saved_model}
    for name, convert in (
        ("tflite_float32", lambda: tflite_float32(saved_model)),
        ("tflite_int8", lambda: tflite_int8(saved_model, calibration)),
        ("onnx", lambda: onnx_bytes(model, encoding)),
    ):
        with quiet(), files.atomic_path(folder / FILES[name]) as tmp:
            tmp.write_bytes(convert())
        written[name] = folder / FILES[name]
    return written


class quiet(warnings.catch_warnings):
    """The converters' and tf.lite.Interpreter's deprecation warnings (LiteRT's Interpreter is the same API)."""

    def __enter__(self):
        super().__enter__()
        warnings.simplefilter("ignore", (UserWarning, DeprecationWarning, FutureWarning))


# ---------------------------------------------------------------- runners (transfer-learning predict, the metrics)


def runner(path: Path, threads: int | None = None):
    """The runner of an export, by its kind: a SavedModel folder, a .tflite or an .onnx file."""
    path = Path(path)
    if path.is_dir():
        return SavedModelRunner(path)
    if path.suffix.lower() == ".tflite":
        return TFLiteRunner(path, threads)
    if path.suffix.lower() == ".onnx":
        return OnnxRunner(path, threads)
    raise PipelineError(
        f"--model {path}: not a model predict can run; give a .keras, .tflite or .onnx file, or a SavedModel folder"
    )


def cannot_load(path: Path, exc: Exception) -> PipelineError:
    return PipelineError(
        f"cannot load the model {path}: {' '.join(str(exc).split())[:300] or exc.__class__.__name__}; "
        "use a file the export stage wrote (`dvc repro export` rebuilds them)"
    )


class SavedModelRunner:
    """A SavedModel's serving_default signature. A SavedModel is a TensorFlow program: load only ones you trust."""

    def __init__(self, folder: Path):
        if not (folder / "saved_model.pb").is_file():
            raise PipelineError(f"--model {folder}: a folder, but not a SavedModel (no saved_model.pb in it)")
        try:
            self._loaded = tf.saved_model.load(str(folder))
            self._fn = self._loaded.signatures["serving_default"]
        except Exception as exc:  # TensorFlow raises many kinds for a damaged or foreign folder
            raise cannot_load(folder, exc) from None
        ((self._input, spec),) = self._fn.structured_input_signature[1].items()
        ((self._output, out),) = self._fn.structured_outputs.items()
        self._dtype = spec.dtype
        self.input_shape, self.output_shape = tuple(spec.shape), tuple(out.shape)

    def predict_on_batch(self, pixels: np.ndarray) -> np.ndarray:
        return self._fn(**{self._input: tf.constant(pixels, self._dtype)})[self._output].numpy()


class TFLiteRunner:
    """A .tflite file in TensorFlow's interpreter (LiteRT's, with XNNPACK), resized to each batch; integer inputs and
    outputs are (de)quantized with the scale and zero point the file gives."""

    def __init__(self, path: Path, threads: int | None = None):
        try:
            with quiet():
                self._interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads)
        except (ValueError, RuntimeError) as exc:
            raise cannot_load(path, exc) from None
        (self._in,) = self._interpreter.get_input_details()
        (self._out,) = self._interpreter.get_output_details()
        self.input_shape = (None, *self._in["shape"][1:].tolist())
        self.output_shape = (None, *self._out["shape"][1:].tolist())
        self._batch = None

    def predict_on_batch(self, pixels: np.ndarray) -> np.ndarray:
        if self._batch != len(pixels):
            self._interpreter.resize_tensor_input(self._in["index"], [len(pixels), *self.input_shape[1:]])
            self._interpreter.allocate_tensors()
            self._batch = len(pixels)
        self._interpreter.set_tensor(self._in["index"], quantize(pixels, self._in))
        self._interpreter.invoke()
        return dequantize(self._interpreter.get_tensor(self._out["index"]), self._out)


def quantize(values: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if not np.issubdtype(dtype, np.integer):
        return np.asarray(values, dtype=dtype)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(np.asarray(values, np.float32) / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    if not np.issubdtype(values.dtype, np.integer):
        return values
    scale, zero_point = detail["quantization"]
    return (values.astype(np.float32) - zero_point) * scale


class OnnxRunner:
    """An .onnx file in ONNX Runtime (CPU)."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own exception types
            raise cannot_load(path, exc) from None
        (self._in,) = self._session.get_inputs()
        (self._out,) = self._session.get_outputs()
        self.input_shape = tuple(d if isinstance(d, int) else None for d in self._in.shape)
        self.output_shape = tuple(d if isinstance(d, int) else None for d in self._out.shape)

    def predict_on_batch(self, pixels: np.ndarray) -> np.ndarray:
        return self._session.run([self._out.name], {self._in.name: np.asarray(pixels, np.float32)})[0]


# ---------------------------------------------------------------- the metrics


def outputs_of(model, images: np.ndarray) -> np.ndarray:
    """The model (a Keras model or a runner) over memory-mapped uint8 images, BATCH_SIZE at a time."""
    return outputs_of_each({"model": model}, images)["model"]


def outputs_of_each(models: dict, images: np.ndarray) -> dict[str, np.ndarray]:
    """Each model (name: a Keras model or a runner) over the same uint8 images, BATCH_SIZE at a time: each batch is
    read once (an image_sets.ImageSet decodes its files as they are read) and given to every model in turn, rather
    than the files decoded again for every format. Memory: a batch of images, and every model's outputs."""
    outputs = {name: [] for name in models}
    for start in range(0, len(images), BATCH_SIZE):
        pixels = np.asarray(images[start : start + BATCH_SIZE], np.float32)
        for name, model in models.items():
            outputs[name].append(np.asarray(model.predict_on_batch(pixels)))
    return {name: np.concatenate(batches) for name, batches in outputs.items()}


def quality(outputs: np.ndarray, reference: np.ndarray, actual: np.ndarray, encoding: Encoding) -> dict:
    """Test accuracy (or MAE), top-1 agreement with the Keras model's outputs, the largest absolute difference to them.
    actual: the encoded targets (class indices, or the standardized target); outputs in the model's unit."""
    difference = float(np.max(np.abs(outputs.astype(np.float64) - reference.astype(np.float64))))
    if encoding.is_classification:
        labels = outputs.argmax(axis=-1)
        return {
            "accuracy": round(float(np.mean(labels == actual)), 6),
            "agreement": round(float(np.mean(labels == reference.argmax(axis=-1))), 6),
            "max_abs_difference": float(f"{difference:.6g}"),
        }
    target = np.asarray(actual, np.float64).reshape(-1) * encoding.std + encoding.mean
    return {
        "mae": round(float(np.mean(np.abs(outputs.reshape(-1) - target))), 6),
        "max_abs_difference": float(f"{difference:.6g}"),
    }


def size_bytes(path: Path) -> int:
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def speed_sample(images: np.ndarray) -> np.ndarray:
    """The images speed times the formats on (the first of the split, decoded once for all of them)."""
    return np.asarray(images[: max(SPEED_BATCHES)])


def speed(model, images: np.ndarray) -> dict:
    """Images per second at each batch size of SPEED_BATCHES, after one untimed call (tracing, allocation).
    images: a speed_sample (decoded), or any uint8 images (the first of them are used)."""
    figures = {}
    for batch, calls in SPEED_BATCHES.items():
        pixels = np.resize(np.asarray(images[:batch], np.float32), (batch, *images.shape[1:]))  # repeats if too few
        model.predict_on_batch(pixels)
        start = time.perf_counter()
        for _ in range(calls):
            model.predict_on_batch(pixels)
        figures[f"images_per_second_batch_{batch}"] = round(batch * calls / (time.perf_counter() - start), 1)
    return figures
