"""The networks: base variants, preprocessing, head, unfreezing with frozen BatchNormalization, saving."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from transfer_learning import batches, model_files, networks, packaging, training
from transfer_learning.errors import PipelineError
from transfer_learning.records import Encoding


def call(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """The model on a few images, eagerly: what predict computes, without tracing a function per model (seconds
    each)."""
    out = model(x, training=False)
    return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else np.asarray(out)


@pytest.fixture(scope="module")
def mobilenet():
    return networks.build_base("mobilenet_v2", 0.35, "imagenet")


def test_imagenet_weights_come_from_the_offline_cache(mobilenet):
    random_init = networks.build_base("mobilenet_v2", 0.35, "none")
    first_conv = mobilenet.get_layer("Conv1").get_weights()[0]
    assert first_conv.shape == (3, 3, 3, 16)
    assert not np.allclose(first_conv, random_init.get_layer("Conv1").get_weights()[0])


def test_vgg16_builds_with_caffe_preprocessing_and_random_weights():
    # ImageNet VGG16 weights cannot be downloaded here; the loading path is the same keras.applications call.
    base = networks.build_base("vgg16", 1.0, "none")
    extractor = networks.feature_extractor(base, "vgg16", 32, "flatten")
    assert extractor.output.shape[-1] == 512  # 32 px -> 1x1x512 after five poolings
    to_bgr = extractor.get_layer("rgb_to_bgr_minus_mean")
    out = to_bgr(np.array([[10.0, 20.0, 30.0]], np.float32)).numpy()
    assert np.allclose(out, [[30 - 103.939, 20 - 116.779, 10 - 123.68]], atol=1e-4)


def test_base_weights_from_a_file(tmp_path, mobilenet):
    path = tmp_path / "base.weights.h5"
    mobilenet.save_weights(path)
    loaded = networks.build_base("mobilenet_v2", 0.35, str(path))
    assert np.allclose(loaded.get_layer("Conv_1").get_weights()[0], mobilenet.get_layer("Conv_1").get_weights()[0])


def test_unfreeze_from_keeps_batchnorm_frozen_and_rejects_unknown_layers(mobilenet):
    count = networks.unfreeze_from(mobilenet, "block_16_expand")
    trainable = [layer for layer in mobilenet.layers if layer.trainable and layer.weights]
    assert trainable and all(not isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)
    assert {layer.name for layer in trainable} == {
        "block_16_expand",
        "block_16_depthwise",
        "block_16_project",
        "Conv_1",
    }
    assert count == 4
    assert not mobilenet.get_layer("block_15_expand").trainable
    with pytest.raises(PipelineError, match="'block_99' is not a layer.*block_16_expand"):
        networks.unfreeze_from(mobilenet, "block_99")


def test_frozen_batchnorm_stays_in_inference_mode_during_fit(mobilenet):
    extractor = networks.feature_extractor(mobilenet, "mobilenet_v2", 32, "avg")
    model = networks.assemble(extractor, networks.build_head(1280, 8, 0.0, 2, "classification"))
    networks.unfreeze_from(mobilenet, "block_16_expand")
    bn = mobilenet.get_layer("block_16_project_BN")
    before = [w.copy() for w in bn.get_weights()]
    training.compile_for(
        model, Encoding(task="classification", classes=("a", "b", "c")), "auto", training.optimizer("sgd", 0.01, 0.9)
    )
    x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    model.fit(x, np.arange(16) % 2, epochs=1, batch_size=8, verbose=0)
    for old, new in zip(before, bn.get_weights()):
        assert np.array_equal(old, new), "moving mean/variance must not move"


def test_regression_export_outputs_the_target_unit_and_saves_reproducibly(tmp_path, mobilenet):
    head = networks.build_head(1280, 4, 0.0, 1, "regression")
    model = networks.assemble(networks.feature_extractor(mobilenet, "mobilenet_v2", 32, "avg"), head)
    exported = packaging.package(model, Encoding(task="regression", mean=40.0, std=10.0))
    x = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    assert np.allclose(exported.predict(x, verbose=0), model.predict(x, verbose=0) * 10 + 40, atol=1e-4)
    model_files.save(exported, tmp_path / "a.keras")
    model_files.save(exported, tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    loaded = keras.models.load_model(tmp_path / "a.keras", safe_mode=True)
    assert np.allclose(loaded.predict(x, verbose=0), exported.predict(x, verbose=0), atol=1e-5)


def train_twice(images, lr):
    """Two identical fresh models, one trained end to end on images, one on cached activations.
    -> (end-to-end model, cached-trained model, its top model, the activations)"""
    trained_models = []
    for cached in (False, True):
        keras.utils.set_random_seed(0)
        base = networks.build_base("mobilenet_v2", 0.35, "imagenet")
        head = networks.build_head(1280, 8, 0.0, 3, "classification")
        model = networks.assemble(networks.feature_extractor(base, "mobilenet_v2", 64, "avg"), head)
        networks.unfreeze_from(base, "block_15_expand")
        if cached:
            _, inputs = networks.feature_extractor(base, "mobilenet_v2", 64, "avg", "block_15_expand").predict(
                images, verbose=0
            )
            trained = networks.top_model(base, "block_15_expand", inputs.shape[1:], "avg", head)
        else:
            inputs, trained = images, model
        training.compile_for(
            trained,
            Encoding(task="classification", classes=("a", "b", "c")),
            "auto",
            training.optimizer("sgd", lr, 0.9),
        )
        trained.fit(batches.Batches(inputs, np.arange(len(inputs)) % 3, 8, seed=0), epochs=2, verbose=0)
        trained_models.append(model)
    return trained_models[0], trained_models[1], trained, inputs


def conv_weights(model, name="block_15_expand"):
    """A convolution's kernel in the base nested inside an assembled model."""
    base = next(layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name != "head")
    return base.get_layer(name).get_weights()[0]


def test_fine_tuning_on_cached_activations_trains_the_same_network():
    """The same network, data and batches: the same weights up to float rounding. The frozen bottom runs in another
    graph (inference-only extraction vs inside the training model), which may sum in another order: bit-identical with
    oneDNN's kernels on the CPUs tried, 3e-8 apart with TensorFlow's Eigen kernels. The bound is 100x that, and the
    weights must have moved 100x more than the bound."""
    images = np.random.default_rng(2).uniform(0, 255, (24, 64, 64, 3)).astype("float32")
    end_to_end, cached, top, activations = train_twice(images, lr=0.01)
    initial = networks.build_base("mobilenet_v2", 0.35, "imagenet").get_layer("block_15_expand").get_weights()[0]
    assert np.abs(conv_weights(cached) - initial).max() > 100 * 3e-6, "fine-tuning must move the unfrozen weights"
    np.testing.assert_allclose(conv_weights(cached), conv_weights(end_to_end), rtol=0, atol=3e-6)
    # The saved (full) model computes what the trained top computes: they share their weights.
    np.testing.assert_allclose(call(cached, images), call(top, activations), rtol=0, atol=1e-5)
    np.testing.assert_allclose(call(end_to_end, images), call(cached, images), rtol=0, atol=1e-5)


def test_one_pass_gives_the_heads_features_and_the_activations_at_the_cut():
    """extract-features' two-output model: its features are the whole base's (pooled), its activations are what
    the top of the base continues from. Same kernels, another graph: a stated tolerance, not bits."""
    base = networks.build_base("mobilenet_v2", 0.35, "imagenet")
    images = np.random.default_rng(3).uniform(0, 255, (6, 64, 64, 3)).astype("float32")
    features, activations = call(networks.feature_extractor(base, "mobilenet_v2", 64, "avg", "block_15_expand"), images)
    whole = call(networks.feature_extractor(base, "mobilenet_v2", 64, "avg"), images)
    _, top = networks.split_base(base, "block_15_expand")
    assert features.shape == whole.shape == (6, 1280) and activations.shape == (6, 2, 2, top.input.shape[-1])
    assert np.abs(whole).max() > 0.1, "real features, not zeros"
    np.testing.assert_allclose(features, whole, rtol=0, atol=1e-5)
    np.testing.assert_allclose(call(top, activations).mean(axis=(1, 2)), whole, rtol=0, atol=1e-5)


def test_a_cut_crossed_by_a_residual_connection_is_rejected_with_the_valid_cuts(mobilenet):
    with pytest.raises(PipelineError, match="residual connection.*block_11_expand"):
        networks.split_base(mobilenet, "block_11_depthwise")
    bottom, top = networks.split_base(mobilenet, "block_11_expand")
    x = np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    assert np.allclose(call(top, call(bottom, x)), call(mobilenet, x), atol=1e-5)


def test_a_keras_file_with_a_lambda_layer_is_refused(tmp_path):

    marker = tmp_path / "code-ran"
    # a lambda is saved as Python bytecode, which would run on loading without safe_mode
    side_effect = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x * 2)[1]")
    inputs = keras.Input((2,))
    keras.Model(inputs, keras.layers.Lambda(side_effect)(inputs)).save(tmp_path / "evil.keras")
    marker.unlink()
    keras.models.load_model(tmp_path / "evil.keras", safe_mode=False).predict(np.ones((1, 2)), verbose=0)
    assert marker.exists(), "the payload is real"
    marker.unlink()
    with pytest.raises(
        PipelineError,
        match=r"cannot load the model .*evil.keras: it names the class keras.layers.Lambda, "
        "which this project never writes",
    ):
        model_files.load(tmp_path / "evil.keras")
    assert not marker.exists()


def test_the_pipeline_models_have_no_lambda_and_load_in_safe_mode(tmp_path):

    base = networks.build_base("vgg16", 1.0, "none")
    extractor = networks.feature_extractor(base, "vgg16", 32, "avg")
    head = networks.build_head(extractor.output.shape[-1], 8, 0.1, 1, "regression")
    model = packaging.package(networks.assemble(extractor, head), Encoding(task="regression", mean=30.0, std=4.0))
    model_files.save(model, tmp_path / "model.keras")
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        config = archive.read("config.json").decode()
    assert '"class_name": "Lambda"' not in config and "lambda" not in config.lower()
    pixels = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype("float32")
    loaded = model_files.load(tmp_path / "model.keras")
    assert np.allclose(loaded.predict(pixels, verbose=0), model.predict(pixels, verbose=0), atol=1e-5)


def test_the_mirror_layers_flip_exactly_and_flip_tta_averages_the_image_and_its_mirror(tmp_path, mobilenet):
    """fine_tune.tta: flip, baked into the saved model: plain layers (no Lambda), so it loads in safe mode."""
    x = np.random.default_rng(4).uniform(0, 255, (3, 32, 40, 3)).astype("float32")  # not square: columns, not rows
    flipped = x
    for layer in packaging.mirror(40):
        flipped = layer(flipped)
    assert np.array_equal(np.asarray(flipped), x[:, :, ::-1]), "a left-right mirror, bit for bit"

    model = networks.assemble(
        networks.feature_extractor(mobilenet, "mobilenet_v2", 32, "avg"),
        networks.build_head(1280, 8, 0.0, 3, "classification"),
    )
    square = x[:, :, :32]
    exported = packaging.package(model, Encoding(task="classification", classes=("a", "b", "c")), "flip")
    plain, mirrored = call(model, square), call(model, square[:, :, ::-1])
    assert not np.allclose(plain, mirrored, atol=1e-3), "the network itself is not mirror-symmetric"
    np.testing.assert_allclose(call(exported, square), (plain + mirrored) / 2, rtol=0, atol=1e-6)
    assert packaging.package(model, Encoding(task="classification", classes=("a", "b", "c")), "none") is model, (
        "tta none: the model as before"
    )

    regression = networks.assemble(
        networks.feature_extractor(mobilenet, "mobilenet_v2", 32, "avg"),
        networks.build_head(1280, 4, 0.0, 1, "regression"),
    )
    exported = packaging.package(regression, Encoding(task="regression", mean=40.0, std=10.0), "flip")
    want = (call(regression, square) + call(regression, square[:, :, ::-1])) / 2 * 10 + 40
    np.testing.assert_allclose(call(exported, square), want, rtol=0, atol=1e-4)
    model_files.save(exported, tmp_path / "a.keras")
    model_files.save(exported, tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    loaded = keras.models.load_model(tmp_path / "a.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(square, verbose=0), want, rtol=0, atol=1e-4)


# The ways fine-tune trains and packages the model: on cached activations (the saved model was never compiled) or end to
# end (it was), each loss with label smoothing and mixup (training.compile_for), test-time flips or not
# (packaging.package). Each loss setting end to end, each axis both ways (a product would take a minute):
# (cached, task, loss, smoothing, mixup, tta)
CONFIGURATIONS = [
    (False, "classification", "auto", 0.0, 0.0, "none"),
    (False, "classification", "auto", 0.1, 0.0, "none"),
    (False, "classification", "auto", 0.1, 0.0, "flip"),
    (False, "classification", "auto", 0.0, 0.2, "flip"),
    (False, "classification", "auto", 0.1, 0.2, "none"),
    (False, "regression", "mse", 0.0, 0.0, "flip"),
    (False, "regression", "huber", 0.0, 0.0, "none"),
    (True, "classification", "auto", 0.1, 0.2, "flip"),
    (True, "regression", "mae", 0.0, 0.0, "none"),
]
PLAIN_KERAS_LOADS = """
import json, sys
import keras, numpy as np
for path in json.loads(sys.argv[1]):
    out = keras.models.load_model(path, safe_mode=True)(np.load(sys.argv[2]), training=False)
    np.save(path + ".npy", np.asarray(out))
assert not any(name.startswith("transfer_learning") for name in sys.modules), "the project was imported"
"""


def test_every_trained_model_saves_without_training_configuration_and_loads_in_plain_keras(tmp_path):
    """Fine-tuning end to end with label smoothing or mixup once saved its compile config with the project's
    SmoothedSparseCrossentropy: plain Keras could not load model.keras ("Could not locate class"), nor evaluate with
    tta: flip. Each configuration is trained a step, packaged and saved as fine-tune does; one process that never
    imported the project loads them all (one, not one each: importing TensorFlow takes seconds)."""
    keras.utils.set_random_seed(0)
    base = networks.build_base("mobilenet_v2", 0.35, "none")
    pixels = np.random.default_rng(5).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "pixels.npy", pixels)
    saved, expected = [], {}
    for cached, task, loss, smoothing, mixup, tta in CONFIGURATIONS:
        encoding = (
            Encoding(task="classification", classes=("a", "b", "c"))
            if task == "classification"
            else Encoding(task="regression", mean=40.0, std=10.0)
        )
        head = networks.build_head(1280, 4, 0.1, encoding.n_outputs, task)
        model = networks.assemble(networks.feature_extractor(base, "mobilenet_v2", 32, "avg"), head)
        networks.unfreeze_from(base, "block_16_expand")
        if cached:
            bottom, _ = networks.split_base(base, "block_16_expand")
            inputs = np.asarray(bottom(pixels / 127.5 - 1))
            trained = networks.top_model(base, "block_16_expand", inputs.shape[1:], "avg", head)
        else:
            inputs, trained = pixels, model
        training.compile_for(
            trained, encoding, loss, training.optimizer("adam", 1e-3), label_smoothing=smoothing, mixup=mixup
        )
        targets = np.arange(4) % 3 if task == "classification" else np.linspace(-1, 1, 4, dtype="float32")
        if training.one_hot_classes(encoding, mixup):
            targets = np.eye(3, dtype="float32")[targets]
        # one step, eagerly: the optimizer's state exists, without tracing a training function
        trained.run_eagerly = True
        trained.fit(inputs, targets, batch_size=4, epochs=1, verbose=0)
        exported = packaging.package(model, encoding, tta)
        path = tmp_path / f"{'cached' if cached else 'end_to_end'}-{task}-{loss}-s{smoothing}-m{mixup}-{tta}.keras"
        model_files.save(exported, path)
        with zipfile.ZipFile(path) as archive:
            # Keras writes "compile_config": {} for a model never compiled
            assert not re.search(r'"compile_config": \{[^}]', archive.read("config.json").decode()), path.name
            assert b"optimizer" not in archive.read("model.weights.h5"), f"{path.name}: the optimizer's state is saved"
        if tta == "flip":  # evaluate loads it so; end to end with label smoothing it once failed to deserialize
            np.testing.assert_allclose(call(model_files.load(path), pixels), call(exported, pixels), rtol=0, atol=1e-5)
        saved.append(str(path))
        expected[str(path)] = call(exported, pixels)
    model_files.save(exported, tmp_path / "again.keras")  # the last one was compiled: still reproducible bytes
    assert (tmp_path / "again.keras").read_bytes() == Path(saved[-1]).read_bytes()

    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_KERAS_LOADS, json.dumps(saved), str(tmp_path / "pixels.npy")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1]
    for path in saved:
        np.testing.assert_allclose(np.load(path + ".npy"), expected[path], rtol=0, atol=1e-5, err_msg=Path(path).name)


def classes_named(config) -> set[tuple]:
    """Every (module, class_name, registered_name) a config.json names: what Keras' deserializer looks up."""
    if isinstance(config, list):
        return set().union(*map(classes_named, config)) if config else set()
    if not isinstance(config, dict):
        return set()
    named = (
        {(config.get("module"), config.get("class_name"), config.get("registered_name"))}
        if "class_name" in config
        else set()
    )
    return named.union(*map(classes_named, config.values()))


def test_the_classes_the_loader_allows_are_those_of_the_projects_models(tmp_path, mobilenet):
    """model_files.ALLOWED is listed from real saved models: both bases, both poolings, both tasks, test-time flips, the
    head alone (models/head.keras); every one of them loads, and the list holds nothing they do not need."""
    vgg = networks.build_base("vgg16", 1.0, "none")
    found = set()
    for base, name, pooling, encoding, tta in (
        (vgg, "vgg16", "flatten", Encoding(task="regression", mean=3.0, std=2.0), "flip"),
        (mobilenet, "mobilenet_v2", "avg", Encoding(task="classification", classes=("a", "b")), "none"),
    ):
        extractor = networks.feature_extractor(base, name, 32, pooling)
        head = networks.build_head(extractor.output.shape[-1], 4, 0.1, encoding.n_outputs, encoding.task)
        training.compile_for(
            head, encoding, "auto", training.optimizer("adam", 1e-3), label_smoothing=0.1
        )  # as train-head saves it
        for model, file in (
            (head, "head.keras"),
            (packaging.package(networks.assemble(extractor, head), encoding, tta), "model.keras"),
        ):
            model_files.save(model, tmp_path / file)
            with zipfile.ZipFile(tmp_path / file) as archive:
                found |= classes_named(json.loads(archive.read("config.json")))
            model_files.load(tmp_path / file)
    assert found == model_files.CORE, (
        "the two bases' models hold exactly the core classes (the others: test_backbones.py)"
    )


def test_bfloat16_lifts_the_avx2_kernel_cap_that_has_no_bfloat16_convolutions():
    """Under the project's ONEDNN_MAX_CPU_ISA=AVX2 oneDNN has no bfloat16 kernels, yet TensorFlow hands it bfloat16
    convolutions on every AVX-512 CPU: extract-features with base.precision bfloat16 died there ("could not create a
    primitive descriptor"). settings.kernels_for lifts the cap for that pass (before its first op), float32 keeps it.
    A fresh process, as a stage is: oneDNN reads the cap once. (On a CPU without AVX-512 it passes either way.)"""
    snippet = """
import os
from transfer_learning import networks, settings
assert settings.kernels_for("float32") is None and os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"
print(settings.kernels_for("bfloat16"), os.environ["ONEDNN_MAX_CPU_ISA"])
import keras, numpy as np
networks.set_precision("bfloat16")
model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
print(model.predict(np.ones((2, 8, 8, 3), "float32"), verbose=0).shape)
"""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "TF_ENABLE_ONEDNN_OPTS": "1"}
    result = subprocess.run([sys.executable, "-c", snippet], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "has no bfloat16 ones) ALL\n(2, 6, 6, 4)" in result.stdout, result.stdout
