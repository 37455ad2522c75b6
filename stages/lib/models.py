"""The networks (TensorFlow/Keras): pretrained base, pixel preprocessing, dense head, assembled model.

The assembled model takes raw RGB pixels (0-255) of shape (image_size, image_size, 3):
    preprocessing -> base (top cut off) -> pooling -> head
and, for regression, ends with a fixed Rescaling that turns the standardized output back into the
target's unit. No Lambda layers, so it loads with keras.models.load_model(..., safe_mode=True).
With test-time augmentation (fine_tune.tta: flip) the saved model runs that network on the image and on its mirror
image and averages the two outputs, so predict.py and every user of the file get it.
"""
from __future__ import annotations

import io
import json
import tempfile
import warnings
import zipfile
from pathlib import Path

import keras
import numpy as np
from keras import layers

from lib import files
from lib.errors import PipelineError

# Caffe-style preprocessing of VGG16: RGB -> BGR, minus the ImageNet channel means (BGR order).
VGG_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def set_precision(precision: str) -> None:
    """float32, or bfloat16: mixed precision for the models built afterwards (outputs stay float32)."""
    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")


def build_base(name: str, alpha: float, weights: str) -> keras.Model:
    """The convolutional base without its classifier. weights: imagenet | none | path/to/x.weights.h5.

    It is built for any input size; with imagenet weights Keras loads the 224x224 file from its
    cache (~/.keras/models) or downloads it.
    """
    keras_weights = "imagenet" if weights == "imagenet" else None
    application = keras.applications.MobileNetV2 if name == "mobilenet_v2" else keras.applications.VGG16
    options = {"alpha": alpha} if name == "mobilenet_v2" else {}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Weights for input shape")  # intended: any input size
            base = application(input_shape=(None, None, 3), include_top=False, weights=keras_weights, **options)
    except ValueError as exc:
        raise PipelineError(f"base.name={name}, base.alpha={alpha:g}, base.weights={weights}: {exc}") from None
    except Exception as exc:  # the download failed: no network and nothing in the Keras cache
        raise PipelineError(f"cannot get the ImageNet weights of {name} ({exc.__class__.__name__}: {exc}); "
                            "put the weights file in ~/.keras/models (see README, 'Offline ImageNet weights') or set base.weights") from None
    if weights not in ("imagenet", "none"):
        try:
            base.load_weights(weights)
        except (ValueError, OSError) as exc:
            raise PipelineError(f"base.weights {weights} does not fit {name}: {exc}") from None
    return base


def preprocessing(name: str) -> list[layers.Layer]:
    """Raw 0-255 RGB -> what the base was trained on, as plain (serializable) layers."""
    if name == "mobilenet_v2":
        return [layers.Rescaling(1 / 127.5, offset=-1.0, name="scale_to_unit_range")]
    to_bgr = layers.Dense(3, trainable=False, name="rgb_to_bgr_minus_mean")
    to_bgr.build((None, 3))
    to_bgr.set_weights([np.eye(3, dtype=np.float32)[::-1], -VGG_BGR_MEAN])
    return [to_bgr]


def pooling(kind: str) -> layers.Layer:
    return layers.GlobalAveragePooling2D(name="pool") if kind == "avg" else layers.Flatten(name="pool")


def feature_extractor(base: keras.Model, base_name: str, image_size: int, pooling_kind: str, cut: str | None = None) -> keras.Model:
    """Raw pixels -> pooled base features: what the head is trained on.

    With `cut` (a layer of the base) a second output from the same pass: the frozen base's activations at the input
    of that layer (the fine-tune cut, see split_base), what cached fine-tuning trains on."""
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = inputs
    for layer in preprocessing(base_name):
        x = layer(x)
    if cut is None:
        return keras.Model(inputs, pooling(pooling_kind)(base(x, training=False)), name="feature_extractor")
    bottom, top = split_base(base, cut)
    activations = bottom(x, training=False)
    features = pooling(pooling_kind)(top(activations, training=False))
    return keras.Model(inputs, [features, activations], name="feature_and_activation_extractor")


def build_head(n_features: int, units: int, dropout: float, n_outputs: int, task: str) -> keras.Model:
    """pooled features -> Dense(units, relu) -> Dropout -> Dense(n_outputs) (softmax, or linear for regression)."""
    inputs = keras.Input((n_features,), name="features")
    x = layers.Dense(units, activation="relu", name="head_dense")(inputs)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(n_outputs, activation="softmax" if task == "classification" else None, name="head_output")(x)
    return keras.Model(inputs, outputs, name="head")


def assemble(extractor: keras.Model, head: keras.Model) -> keras.Model:
    """Feature extractor + head: raw pixels -> head outputs (standardized for regression)."""
    return keras.Model(extractor.input, head(extractor.output), name="transfer_model")


def export(model: keras.Model, encoding: dict, tta: str = "none") -> keras.Model:
    """The model users load: regression outputs go back to the target's unit (x * std + mean).

    tta: flip averages the outputs (class probabilities, or standardized targets) of the image and its mirror image."""
    if tta == "flip":
        pixels = keras.Input(model.input.shape[1:], name="image")
        mirrored = pixels
        for layer in mirror(model.input.shape[2]):
            mirrored = layer(mirrored)
        outputs = layers.Average(name="mean_over_flips")([model(pixels), model(mirrored)])
        model = keras.Model(pixels, outputs, name=f"{model.name}_flip_averaged")
    if encoding["task"] == "classification":
        return model
    outputs = layers.Rescaling(encoding["std"], offset=encoding["mean"], name="to_target_unit")(model.output)
    return keras.Model(model.input, outputs, name=model.name)


def mirror(width: int) -> list[layers.Layer]:
    """Layers that flip an (height, width, channels) image left to right: the columns go last, a fixed Dense layer
    reverses them (its kernel is the anti-diagonal identity: every output is one input times 1, exactly), and back.
    Plain serializable layers, unlike a Lambda of tf.reverse, which safe_mode refuses to load."""
    reverse = layers.Dense(width, use_bias=False, trainable=False, name="reverse_columns")
    reverse.build((None, None, None, width))
    reverse.set_weights([np.eye(width, dtype=np.float32)[::-1]])
    return [layers.Permute((1, 3, 2), name="columns_last"), reverse, layers.Permute((1, 3, 2), name="columns_back")]


def check_layer(base: keras.Model, layer_name: str) -> None:
    names = [layer.name for layer in base.layers]
    if layer_name not in names:
        blocks = [n for n in names if n.endswith(("_expand", "_conv1", "Conv_1", "_project"))] or names
        raise PipelineError(f"fine_tune.unfreeze_from {layer_name!r} is not a layer of {base.name}; for example: {', '.join(blocks)}")


def unfreeze_from(base: keras.Model, layer_name: str) -> int:
    """Make `layer_name` and every base layer after it trainable, except BatchNormalization layers.

    Frozen BN layers run in inference mode in Keras 3 (`trainable=False` implies it), which keeps
    their moving statistics intact while the convolutions around them adapt. Returns the number of
    trainable weights.
    """
    check_layer(base, layer_name)
    start = [layer.name for layer in base.layers].index(layer_name)
    base.trainable = True
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= start and not isinstance(layer, layers.BatchNormalization)
    return len(base.trainable_weights)


def split_base(base: keras.Model, layer_name: str) -> tuple[keras.Model, keras.Model]:
    """The base cut at the input of `layer_name`: base(x) == top(bottom(x)), sharing its layers.

    The cut must be a single tensor: not the input layer (nothing below it), not a layer joining
    branches (an Add of a residual connection takes two), and no layer above it may read an
    activation from below it (a residual connection jumping over the cut), which is true at the
    first layer of every block.
    """
    check_layer(base, layer_name)
    top = _top(base, layer_name)
    if top is None:
        inputs = base.get_layer(layer_name).input
        if isinstance(base.get_layer(layer_name), layers.InputLayer):
            why = " is the input layer of the base, with nothing below it to cache"
        elif isinstance(inputs, (list, tuple)):
            why = f" takes {len(inputs)} inputs (it joins the branches of a residual connection), so what enters it is not one activation"
        else:
            why = ": a residual connection jumps over this layer, so the activations below it cannot be cached"
        valid = [layer.name for layer in base.layers[1:] if not isinstance(layer, layers.BatchNormalization) and _top(base, layer.name)]
        raise PipelineError(f"fine_tune.unfreeze_from {layer_name!r}{why}; "
                            f"pick one of {', '.join(valid)} (or set fine_tune.cache_activations: false)")
    return keras.Model(base.input, base.get_layer(layer_name).input, name="base_bottom"), top


def _top(base: keras.Model, layer_name: str) -> keras.Model | None:
    """The layers from `layer_name` up as a model of its single input, or None if it has no single input (the input layer,
    a layer joining branches) or the layers above need anything from below."""
    cut = base.get_layer(layer_name).input
    if isinstance(cut, (list, tuple)):  # [] for the input layer, two tensors for an Add
        return None
    names = [layer.name for layer in base.layers]
    below = set(names[:names.index(layer_name)])
    top = keras.Model(cut, base.output, name="base_top")
    return None if any(layer.name in below for layer in top.layers) else top


def top_model(base: keras.Model, layer_name: str, activation_shape: tuple, pooling_kind: str, head: keras.Model) -> keras.Model:
    """Cached activations -> top of the base -> pooling -> head: what cached fine-tuning trains.

    It shares its layers with `base`, so training it trains the full model's weights too.
    """
    _, top = split_base(base, layer_name)
    inputs = keras.Input(activation_shape, name="activations")
    return keras.Model(inputs, head(pooling(pooling_kind)(top(inputs))), name="top_model")


def save(model: keras.Model, path: Path) -> None:
    """model.save, made byte-reproducible: no save date in the metadata, fixed zip timestamps."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.keras"
        model.save(raw)
        buffer = io.BytesIO()
        with zipfile.ZipFile(raw) as src, zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in sorted(src.infolist(), key=lambda i: i.filename):
                data = src.read(info.filename)
                if info.filename == "metadata.json":
                    metadata = json.loads(data)
                    metadata.pop("date_saved", None)
                    data = json.dumps(metadata, sort_keys=True).encode()
                elif info.filename == "config.json":
                    data = json.dumps(renumber_shared_objects(json.loads(data))).encode()
                dst.writestr(zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0)), data)
    with files.atomic_path(path) as tmp_path:
        tmp_path.write_bytes(buffer.getvalue())


def renumber_shared_objects(config, ids: dict | None = None):
    """Keras names shared objects (dtype policies) by their Python id(), which changes every run;
    number them 1, 2, ... in order of appearance instead (same sharing, reproducible bytes)."""
    ids = {} if ids is None else ids
    if isinstance(config, dict):
        return {key: ids.setdefault(value, len(ids) + 1) if key == "shared_object_id" else renumber_shared_objects(value, ids)
                for key, value in config.items()}
    if isinstance(config, list):
        return [renumber_shared_objects(value, ids) for value in config]
    return config


def load(path: Path) -> keras.Model:
    """A saved .keras model; safe_mode refuses code hidden in it (Lambda layers)."""
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except (ValueError, TypeError, OSError, KeyError) as exc:
        raise PipelineError(f"cannot load the model {path}: {str(exc).splitlines()[0]}; rerun `dvc repro --force` to rebuild it") from None
