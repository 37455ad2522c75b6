""".keras files: saved byte-reproducibly and without training configuration, loaded without running code from them.

A .keras file is a zip archive: config.json (the layers, by class name), metadata.json and model.weights.h5. Keras'
safe_mode refuses Lambda layers, but not every class that runs code: keras 3.12's TFSMLayer loads the TensorFlow
SavedModel its config names, and that graph (which may write files, read secrets ...) runs when the model is called
(keras-team/keras#22035 and #23654). So `load` reads config.json itself first and refuses any class outside the few
plain Keras classes this project's models are made of (ALLOWED): a model from elsewhere never reaches Keras' loader.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
import zlib
from pathlib import Path

import keras
from keras.src.saving import serialization_lib  # ObjectSharingScope: not exported, the one Keras' own saving uses

from transfer_learning import files
from transfer_learning.errors import PipelineError

REBUILD = "rerun `dvc repro --force` to rebuild it"
CONFIG_LIMIT = 16 * 2**20  # bytes of config.json: MobileNetV2's model holds about 0.4 MB, VGG16's less


def _layers(*names: str) -> set[tuple]:
    return {("keras.layers", name, None) for name in names}


# Every (module, class_name, registered_name) in the config.json of a model this project writes: models/head.keras and
# models/model.keras of either base (networks.py: MobileNetV2, VGG16, preprocessing, pooling, head), with test-time
# flips and the regression's target unit (packaging.py), in float32 or mixed_bfloat16 (tests/test_models.py lists them
# from real saved models). The project registers no layer of its own; its loss (training.SmoothedSparseCrossentropy)
# is training configuration, which `save` leaves out.
CORE = {
    ("keras.src.models.functional", "Functional", "Functional"),
    (None, "__keras_tensor__", None),  # a layer's input, by the name of the layer that makes it
    ("keras", "DTypePolicy", None),
    *{("keras.initializers", name, None) for name in ("GlorotUniform", "Ones", "Zeros")},
    *_layers(
        "InputLayer",
        "Rescaling",
        "Dense",
        "Dropout",
        "GlobalAveragePooling2D",
        "Flatten",
        "Permute",
        "Average",
        "Conv2D",
        "DepthwiseConv2D",
        "BatchNormalization",
        "ReLU",
        "Add",
        "ZeroPadding2D",
        "MaxPooling2D",
    ),
}
# What the other keras.applications families add (backbones.py; listed from a saved model of one family per
# keras.applications module, tests/test_backbones.py loads them through `load`): plain layers, two of Keras' own
# application layers (ConvNeXt's LayerScale, InceptionResNetV2's CustomScaleLayer: a weight times the input) and the
# ops that `x + y` and `x * y` between tensors become. None holds code or a file name.
APPLICATIONS = {
    ("keras", "Sequential", None),
    *{("keras.initializers", name, None) for name in ("HeNormal", "VarianceScaling")},
    *_layers(
        "Activation",
        "AveragePooling2D",
        "Concatenate",
        "Cropping2D",
        "LayerNormalization",
        "Multiply",
        "Normalization",
        "Reshape",
        "SeparableConv2D",
    ),
    ("keras.src.applications.convnext", "LayerScale", "LayerScale"),
    ("keras.src.applications.inception_resnet_v2", "CustomScaleLayer", "CustomScaleLayer"),
    ("keras.src.ops.numpy", "Add", "Add"),
    ("keras.src.ops.numpy", "Multiply", "Multiply"),
}
ALLOWED = CORE | APPLICATIONS


def save(model: keras.Model, path: Path) -> None:
    """model.save, made byte-reproducible (no save date in the metadata, fixed zip timestamps) and without training
    configuration: a model trained with the project's loss (label smoothing, mixup) must load in plain Keras, which does
    not know that loss, and nothing of the optimizer's state is needed to use it."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.keras"
        model.save(raw)
        with zipfile.ZipFile(raw) as src:
            members = {info.filename: src.read(info.filename) for info in src.infolist()}
        config = json.loads(members["config.json"])
        if has_compile_config(config):
            # Compiled (the model, or a sub-model: fine-tuning end to end trains the assembled model the flip-averaged
            # one nests): the config without compile_config, at any depth; the weights as an uncompiled copy saves them
            # (the same layer variables, none of the optimizer's). The config stays the original's: a copy made from it
            # would not share one dtype policy between its layers, which changes the bytes of every config.
            config = without_compile_config(config)
            uncompiled(model).save(Path(tmp) / "uncompiled.keras")
            with zipfile.ZipFile(Path(tmp) / "uncompiled.keras") as src:
                members["model.weights.h5"] = src.read("model.weights.h5")
        metadata = json.loads(members["metadata.json"])
        metadata.pop("date_saved", None)
        members["metadata.json"] = json.dumps(metadata, sort_keys=True).encode()
        members["config.json"] = json.dumps(renumber_shared_objects(config)).encode()
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as dst:
            for name in sorted(members):
                dst.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), members[name])
    with files.atomic_path(path) as tmp_path:
        tmp_path.write_bytes(buffer.getvalue())


def has_compile_config(config) -> bool:
    if isinstance(config, dict):
        # Keras writes "compile_config": {} for a model never compiled, and skips an empty one when loading
        return bool(config.get("compile_config")) or any(has_compile_config(value) for value in config.values())
    return isinstance(config, list) and any(has_compile_config(value) for value in config)


def without_compile_config(config):
    if isinstance(config, dict):
        return {key: without_compile_config(value) for key, value in config.items() if key != "compile_config"}
    if isinstance(config, list):
        return [without_compile_config(value) for value in config]
    return config


def uncompiled(model: keras.Model) -> keras.Model:
    """A copy of the model that was never compiled, with the model's variables (weights, BatchNormalization statistics,
    dropout seeds; model.variables holds no optimizer or metric state)."""
    with serialization_lib.ObjectSharingScope():  # layers shared between sub-models stay shared (one set of weights)
        config = without_compile_config(serialization_lib.serialize_keras_object(model))
    with serialization_lib.ObjectSharingScope():
        copy = serialization_lib.deserialize_keras_object(config, safe_mode=True)
    for source, target in zip(model.variables, copy.variables, strict=True):
        target.assign(source)
    return copy


def renumber_shared_objects(config, ids: dict | None = None):
    """Keras names shared objects (dtype policies) by their Python id(), which changes every run;
    number them 1, 2, ... in order of appearance instead (same sharing, reproducible bytes)."""
    ids = {} if ids is None else ids
    if isinstance(config, dict):
        return {
            key: ids.setdefault(value, len(ids) + 1)
            if key == "shared_object_id"
            else renumber_shared_objects(value, ids)
            for key, value in config.items()
        }
    if isinstance(config, list):
        return [renumber_shared_objects(value, ids) for value in config]
    return config


def load(path: Path) -> keras.Model:
    """A saved .keras model, checked before Keras reads it (check_archive: a zip archive, intact, of the classes this
    project writes); safe_mode also refuses code hidden in it (Lambda layers)."""
    check_archive(Path(path))
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except (ValueError, TypeError, OSError, KeyError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise PipelineError(
            f"cannot load the model {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; {REBUILD}"
        ) from None


def check_archive(path: Path) -> None:
    """A PipelineError unless `path` is an intact zip archive whose config.json names only ALLOWED classes."""
    if not path.is_file():
        raise PipelineError(
            f"cannot load the model {path}: {'it is a folder' if path.is_dir() else 'no such file'}; {REBUILD}"
        )
    not_keras = f"cannot load the model {path}: not a Keras model file (a zip archive)"
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # every member against its checksum: a flipped byte or a truncated copy
            if damaged is not None:
                raise PipelineError(
                    f"cannot load the model {path}: the file is damaged ({damaged} fails its checksum); "
                    f"copy it again or {REBUILD}"
                )
            info = archive.getinfo("config.json")
            if info.file_size > CONFIG_LIMIT:
                raise PipelineError(
                    f"{not_keras}: its config.json holds {info.file_size / 2**20:.0f} MB, more than the "
                    f"{CONFIG_LIMIT // 2**20} MB a model of this project needs; {REBUILD}"
                )
            config = json.loads(archive.read(info).decode("utf-8"))
    except KeyError:
        raise PipelineError(f"{not_keras}: it holds no config.json; {REBUILD}") from None
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        UnicodeDecodeError,
        ValueError,
        RecursionError,
        NotImplementedError,
        RuntimeError,
    ) as exc:  # NotImplementedError: an unknown compression; RuntimeError: an encrypted member
        raise PipelineError(
            f"{not_keras}; it is damaged, truncated or another kind of file ({type(exc).__name__}): "
            f"copy it again or {REBUILD}"
        ) from None
    except OSError as exc:
        raise PipelineError(f"cannot load the model {path}: cannot read it ({exc.strerror or exc})") from None
    if not isinstance(config, dict) or (config.get("module"), config.get("class_name")) != (
        "keras.src.models.functional",
        "Functional",
    ):
        raise PipelineError(
            f"{not_keras}: its config.json describes no Keras model of this project (a Functional model); {REBUILD}"
        )
    # Keras drops the model's own compile_config unread when loading with compile=False (old models carry one)
    config = {key: value for key, value in config.items() if key != "compile_config"}
    refused = first_refused_class(config)
    if refused is not None:
        module, class_name, registered_name = (str(part)[:80] if part is not None else None for part in refused)
        named = ".".join(part for part in (module, class_name) if part) or "without a name"
        if registered_name and registered_name != class_name:
            named += f" (registered as {registered_name})"
        raise PipelineError(
            f"cannot load the model {path}: it names the class {named}, which this project never writes "
            "(its models hold only plain Keras layers); a model from elsewhere can run code when it is loaded "
            "or called: use a model this project trained (`dvc repro`)"
        )


def first_refused_class(config) -> tuple | None:
    """The first (module, class_name, registered_name) outside ALLOWED among the objects of a config (any dict naming a
    class, a module or a registered name: all Keras' deserializer looks up). Walked with a stack, not recursion."""
    stack = [config]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if {"class_name", "module", "registered_name"} & value.keys():
                key = (value.get("module"), value.get("class_name"), value.get("registered_name"))
                if not all(part is None or isinstance(part, str) for part in key) or key not in ALLOWED:
                    return key
            stack.extend(reversed(list(value.values())))
        elif isinstance(value, list):
            stack.extend(reversed(value))
    return None
