"""The networks (Keras): the pretrained base, its pixel preprocessing, the cut for fine-tuning, the dense head.

The trained network takes raw RGB pixels (0-255) of shape (image_size, image_size, 3):
    preprocessing -> base (top cut off) -> pooling -> head
No Lambda layers anywhere, so every saved model loads with keras.models.load_model(..., safe_mode=True).
How the trained network becomes the file users load (test-time augmentation, the target's unit) is packaging.py;
saving and loading .keras files is model_files.py.
"""
from __future__ import annotations

import warnings

import keras
import numpy as np
from keras import layers

from transfer_learning.errors import PipelineError

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
                            "put the weights file in ~/.keras/models (see docs/setup.md) or set base.weights") from None
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

    The cut must be a single tensor: not the input layer or the first layer (nothing below them), not a
    layer joining branches (an Add of a residual connection takes two), and no layer above it may read
    an activation from below it (a residual connection jumping over the cut), which is true at the
    first layer of every block.
    """
    check_layer(base, layer_name)
    top = _top(base, layer_name)
    if top is None:
        inputs = base.get_layer(layer_name).input
        below = base.layers[:[layer.name for layer in base.layers].index(layer_name)]
        if isinstance(base.get_layer(layer_name), layers.InputLayer):
            why = " is the input layer of the base, with nothing below it to cache"
        elif all(isinstance(layer, layers.InputLayer) for layer in below):  # VGG16's block1_conv1, MobileNetV2's Conv1
            why = (" is the first layer of the base: nothing lies below it, so there is nothing to cache or keep frozen "
                   "(every layer would train)")
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
