"""The networks (Keras): the pretrained base, its pixel preprocessing, the cut for fine-tuning, the dense head.

The trained network takes raw RGB pixels (0-255) of shape (image_size, image_size, 3):
    preprocessing -> base (top cut off) -> pooling -> head
No Lambda layers anywhere, so every saved model loads with keras.models.load_model(..., safe_mode=True). A layer class
new to the project's models must join model_files.ALLOWED, which model_files.load checks first (tests/test_models.py
lists the classes of real saved models against it).
The base is any ImageNet family of keras.applications: the table of families (constructor, preprocessing, sizes,
default cut) is backbones.py, docs/backbones.md.
How the trained network becomes the file users load (test-time augmentation, the target's unit) is packaging.py;
saving and loading .keras files is model_files.py.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
from keras import layers

from transfer_learning import backbones
from transfer_learning.errors import PipelineError


def set_precision(precision: str) -> None:
    """float32, or bfloat16: mixed precision for the models built afterwards (outputs stay float32)."""
    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")


def build_base(
    name: str,
    alpha: float,
    weights: str,
    minimalistic: bool = False,
    image_size: int | None = None,
    fixed_size: bool = False,
) -> keras.Model:
    """The convolutional base of a keras.applications family (backbones.py) without its classifier.
    weights: imagenet | none | path/to/x.weights.h5.

    It is built for any input size, except NASNet (its cells crop by static shapes) and with fixed_size: for image_size
    only. With imagenet weights Keras loads the file from its cache (~/.keras/models) or downloads it.
    """
    family = backbones.get(name)
    keras_weights = "imagenet" if weights == "imagenet" else None
    application = getattr(keras.applications, family.constructor)
    if (family.static or fixed_size) and image_size is None:
        raise PipelineError(f"base.name={name}: the base is built for one input size, and none was given")
    shape = (image_size, image_size, 3) if family.static or fixed_size else (None, None, 3)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Weights for input shape")  # intended: any input size
            base = application(
                input_shape=shape, include_top=False, weights=keras_weights, **family.options(alpha, minimalistic)
            )
    except ValueError as exc:
        raise PipelineError(
            f"base.name={name}, base.alpha={alpha:g}, base.weights={weights}: {' '.join(str(exc).split())}"
        ) from None
    except Exception as exc:  # the download failed: no network and nothing in the Keras cache
        raise PipelineError(
            f"cannot get the ImageNet weights of {name} ({exc.__class__.__name__}: {exc}); "
            "put the weights file in ~/.keras/models (see docs/setup.md) or set base.weights"
        ) from None
    if weights not in ("imagenet", "none"):
        try:
            base.load_weights(weights)
        except (ValueError, OSError) as exc:
            raise PipelineError(f"base.weights {weights} does not fit {name}: {exc}") from None
    return base


def preprocessing(name: str) -> list[layers.Layer]:
    """Raw 0-255 RGB -> what the base was trained on, as plain (serializable) layers: what
    keras.applications.<module>.preprocess_input computes, inside the saved model (backbones.py: preprocess)."""
    style = backbones.get(name).preprocess
    if style == "tf":  # [-1, 1]
        return [layers.Rescaling(1 / 127.5, offset=-1.0, name="scale_to_unit_range")]
    if style == "torch":  # (x / 255 - mean) / std per channel = (x - 255 mean) / sqrt((255 std)^2)
        mean, std = np.array(backbones.IMAGENET_MEAN), np.array(backbones.IMAGENET_STD)
        return [
            layers.Normalization(
                mean=(255 * mean).tolist(), variance=((255 * std) ** 2).tolist(), name="imagenet_mean_std"
            )
        ]
    # a fixed Dense layer: its kernel swaps R and B (every output is one input times 1), its bias the mean
    if style == "caffe":
        to_bgr = layers.Dense(3, trainable=False, name="rgb_to_bgr_minus_mean")
        to_bgr.build((None, 3))
        to_bgr.set_weights([np.eye(3, dtype=np.float32)[::-1], -np.array(backbones.CAFFE_BGR_MEAN, np.float32)])
        return [to_bgr]
    return []  # "none": the base's own Rescaling/Normalization layers do it


def pooling(kind: str) -> layers.Layer:
    return layers.GlobalAveragePooling2D(name="pool") if kind == "avg" else layers.Flatten(name="pool")


def feature_extractor(
    base: keras.Model, base_name: str, image_size: int, pooling_kind: str, cut: str | int | None = None
) -> keras.Model:
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


def cut_index(base: keras.Model, cut: str | int) -> int:
    """The index in base.layers of the first layer to train: fine_tune.unfreeze_from as a layer name, or as a number
    N of layers to freeze (layer N and above train, as the Keras notes count: InceptionV3 249). Checked when the base
    is built (it needs TensorFlow to know the layers), before any training."""
    names = [layer.name for layer in base.layers]
    if isinstance(cut, int):
        if not 1 <= cut < len(names):
            raise PipelineError(
                f"fine_tune.unfreeze_from {cut} is not a layer number of {base.name}: it has {len(names)} layers, "
                f"so freeze between 1 and {len(names) - 1} of them (layer 0 is its input)"
            )
        return cut
    if cut not in names:
        blocks = [n for n in names if n.endswith(("_expand", "_conv1", "Conv_1", "_project"))] or names
        raise PipelineError(
            f"fine_tune.unfreeze_from {cut!r} is not a layer of {base.name}; for example: {', '.join(blocks[:40])} "
            f"(or a number of layers to freeze; `python -m transfer_learning.cuts <base.name>` lists the cuts)"
        )
    return names.index(cut)


def unfreeze_from(base: keras.Model, cut: str | int) -> int:
    """Make the layer at `cut` (a name, or a number of layers to freeze) and every base layer after it trainable, except
    BatchNormalization layers.

    Frozen BN layers run in inference mode in Keras 3 (`trainable=False` implies it), which keeps their moving
    statistics intact while the convolutions around them adapt; this holds in every family. Dropout layers below the cut
    are turned off (EfficientNet's stochastic depth), so the frozen bottom is the same function every epoch.
    LayerNormalization (ConvNeXt) has no statistics to keep, it normalizes each image by itself: above the cut it trains
    (its scale and offset) like any layer, below it is frozen. Returns the number of trainable weights.
    """
    start = cut_index(base, cut)
    base.trainable = True
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= start and not isinstance(layer, layers.BatchNormalization)
        if i < start and isinstance(layer, layers.Dropout):
            # The frozen bottom computes as at inference, like its BatchNormalization: EfficientNet's blocks end in a
            # Dropout (stochastic depth) that a training step would run, though its layers are frozen (Keras passes
            # training=True down to every layer). Off below the cut, the bottom gives the same activations every epoch,
            # so the cached ones are what end-to-end fine-tuning computes; above the cut it still drops.
            layer.rate = 0.0
        if layer.trainable and isinstance(layer, keras.Model):  # a nested block (ConvNeXt's stem and downsampling)
            for inner in layer._flatten_layers(include_self=False):
                inner.trainable = not isinstance(inner, layers.BatchNormalization)
    return len(base.trainable_weights)


def crossings(base: keras.Model) -> list[int]:
    """For each layer number i, how many distinct tensors go from below layers[i] to layers[i] and above (the base's
    output counted as read above every layer): 1 where the frozen bottom's output is one activation, which can be
    cached. One pass over the graph's operations in their order, which include operations that are not layers (the
    `x + y` of a ConvNeXt block's residual connection is not in base.layers); those between two layers go below."""
    operations = base._operations  # topologically sorted: layers and plain operations
    index = {id(operation): i for i, operation in enumerate(operations)}
    last_use = {}  # (producing operation, output number) -> the last operation that reads it
    for i, operation in enumerate(operations):
        for node in operation._inbound_nodes:
            for tensor in node.input_tensors:
                producer, _, k = tensor._keras_history
                if id(producer) in index:  # not a call of the layer outside the base
                    key = (index[id(producer)], k)
                    last_use[key] = max(last_use.get(key, 0), i)
    for tensor in base.outputs:
        producer, _, k = tensor._keras_history
        last_use[(index[id(producer)], k)] = len(operations)
    count = [0] * (len(operations) + 2)
    for (producer, _), reader in last_use.items():  # it crosses every boundary j with producer < j <= reader
        count[producer + 1] += 1
        count[reader + 1] -= 1
    at_operation, running = [], 0
    for j in range(len(operations)):
        running += count[j]
        at_operation.append(running)
    return [at_operation[index[id(layer)]] for layer in base.layers]


def valid_cuts(base: keras.Model) -> list[int]:
    """The layer numbers where the base can be cut for cached activations: one tensor crosses, and the layer there is
    not a BatchNormalization (it stays frozen, so the cut would really start at the layer after it)."""
    return [
        i
        for i, n in enumerate(crossings(base))
        if i >= 1 and n == 1 and not isinstance(base.layers[i], layers.BatchNormalization)
    ]


def nearest_cuts(base: keras.Model, start: int, count: int = 3) -> str:
    """`245 (mixed8), 249 (conv2d_81), ...`: the valid cuts around layer `start`, `count` on each side."""
    valid = valid_cuts(base)
    below = [i for i in valid if i < start][-count:]
    above = [i for i in valid if i > start][:count]
    return ", ".join(f"{i} ({base.layers[i].name})" for i in below + above)


def split_base(base: keras.Model, cut: str | int) -> tuple[keras.Model, keras.Model]:
    """The base cut at the input of the layer at `cut` (a name or a number): base(x) == top(bottom(x)), sharing its
    layers.

    The cut must be a single tensor: not the input layer or the first layer (nothing below them), not a
    layer joining branches (an Add of a residual connection takes two), and no layer above it may read
    an activation from below it (a residual connection jumping over the cut), which is true at the
    first layer of every block.
    """
    start = cut_index(base, cut)
    layer = base.layers[start]
    shown = f"{cut} ({layer.name})" if isinstance(cut, int) else repr(cut)
    top = _top(base, start) if crossings(base)[start] == 1 else None
    if top is None:
        inputs = layer.input
        if start == 0:
            why = " is the input layer of the base, with nothing below it to cache"
        # VGG16's block1_conv1, MobileNetV2's Conv1
        elif all(isinstance(below, layers.InputLayer) for below in base.layers[:start]):
            why = (
                " is the first layer of the base: nothing lies below it, so there is nothing to cache or keep frozen "
                "(every layer would train)"
            )
        elif isinstance(inputs, (list, tuple)) and len(inputs) > 1:
            why = (
                f" takes {len(inputs)} inputs (it joins the branches of a residual connection), so what enters it "
                "is not one activation"
            )
        else:
            why = ": a residual connection jumps over this layer, so the activations below it cannot be cached"
        raise PipelineError(
            f"fine_tune.unfreeze_from {shown}{why}; the nearest cuts that can be cached: "
            f"{nearest_cuts(base, start)} (all: python -m transfer_learning.cuts <base.name> <image size>; "
            "or set fine_tune.cache_activations: false)"
        )
    return keras.Model(base.input, layer.input, name="base_bottom"), top


def _top(base: keras.Model, start: int) -> keras.Model | None:
    """The layers from layers[start] up as a model of its single input, or None if the layers above need anything
    from below."""
    cut = base.layers[start].input
    if isinstance(cut, (list, tuple)):
        return None
    below = {layer.name for layer in base.layers[:start]}
    top = keras.Model(cut, base.output, name="base_top")
    return None if any(layer.name in below for layer in top.layers) else top


def top_model(
    base: keras.Model, cut: str | int, activation_shape: tuple, pooling_kind: str, head: keras.Model
) -> keras.Model:
    """Cached activations -> top of the base -> pooling -> head: what cached fine-tuning trains.

    It shares its layers with `base`, so training it trains the full model's weights too.
    """
    _, top = split_base(base, cut)
    inputs = keras.Input(activation_shape, name="activations")
    return keras.Model(inputs, head(pooling(pooling_kind)(top(inputs))), name="top_model")
