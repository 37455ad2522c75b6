"""The export stage and its formats: a small real Keras model (saved as fine-tune saves one) goes through
`python -m stages.export` twice; every export but model.onnx is byte-identical across the two runs (ONNX: its
metrics are), and `transfer-learning predict`
runs each format with the labels of the Keras model within the agreement and output difference metrics/export.json
records. The snippets of docs/using-the-model.md load each export with no project code."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from support.projects import ROOT, predict_cli, run_stage, split_images, stage_project
from transfer_learning import exports, model_files, packaging
from transfer_learning.records import Encoding, ImageFiles, Preparation

SIZE = 32
CLASSES = ["cat", "dog", "owl"]
PREPARATION = {"max_short_side": 256, "max_megapixels": 180.0, "image_size": SIZE, "resize": "pad"}
FORMATS = ["saved_model", "tflite_float32", "tflite_int8", "onnx"]


def tiny_model(outputs: int, task: str) -> keras.Model:
    """A small network shaped like the real one (pixel scaling, convolution, BatchNormalization, pooling, dense
    head)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(
        inputs, keras.layers.Dense(outputs, activation="softmax" if task == "classification" else None)(x)
    )


def sample_images(count: int, seed: int) -> np.ndarray:
    """Images with a class-like color each, so that the outputs differ from image to image."""
    rng = np.random.default_rng(seed)
    colors = rng.integers(0, 256, (count, 1, 1, 3))
    return np.clip(colors + rng.normal(0, 40, (count, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)


def project_with_a_model(tmp_path: Path, model: Path) -> Path:
    """What the export stage reads: models/model.keras (a copy of `model`) and encoding.json, normalize's lists of the
    train and test images (PNG files of SIZE px: decoded, they are the pixels as written) and the test targets."""
    project = stage_project(tmp_path)
    (project / "models").mkdir()
    shutil.copy(model, project / "models/model.keras")
    (project / "models/encoding.json").write_text(
        json.dumps({"task": "classification", "classes": CLASSES, "input": PREPARATION})
    )
    normalized = project / "data/normalized"
    normalized.mkdir(parents=True)
    for split, pictures in (("train", sample_images(120, 1)), ("test", sample_images(40, 2))):
        rows = []
        for i, picture in enumerate(pictures):
            file = project / "images" / f"{split}_{i:03d}.png"
            file.parent.mkdir(exist_ok=True)
            Image.fromarray(picture).save(file)
            rows.append({"path": file.name, "file_sha256": hashlib.sha256(file.read_bytes()).hexdigest()})
        pd.DataFrame(rows).to_csv(normalized / f"{split}_images.csv", index=False)
    ImageFiles(source="images", csv="", preparation=Preparation(**PREPARATION)).write(normalized / "images.json")
    np.save(normalized / "test_targets.npy", np.random.default_rng(3).integers(0, 3, 40))
    return project


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The export stage run in two copies of one project (two processes): [first, second]."""
    model = tmp_path_factory.mktemp("model") / "model.keras"
    model_files.save(tiny_model(3, "classification"), model)  # one file: Keras names a second model's layers otherwise
    projects = []
    for name in ("first", "second"):
        project = project_with_a_model(tmp_path_factory.mktemp(name), model)
        result = run_stage(project, "export")
        assert result.returncode == 0, result.stderr[-3000:]
        projects.append(project)
    return projects


def contents(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
    }


def test_every_format_is_written_the_same_bytes_twice_and_measured(exported):
    first, second = exported
    files = contents(first / "models/export")
    assert {"model.tflite", "model_int8.tflite", "model.onnx", "encoding.json", "saved_model/saved_model.pb"} <= set(
        files
    )
    again = contents(second / "models/export")
    assert files.pop("model.onnx") and again.pop("model.onnx"), "ONNX: written, not byte-reproducible (exports.py)"
    assert files == again, "a rerun gives the same bytes"
    metrics = json.loads((first / "metrics/export.json").read_text())
    assert (second / "metrics/export.json").read_text() == (first / "metrics/export.json").read_text()
    assert list(metrics) == ["keras", *FORMATS]
    for name in FORMATS:  # model.onnx's size changes run to run: with the timings
        assert set(metrics[name]) == {"accuracy", "agreement", "max_abs_difference"} | (
            {"size_bytes"} if name != "onnx" else set()
        ), name
    assert (
        metrics["tflite_float32"]["agreement"]
        == metrics["onnx"]["agreement"]
        == metrics["saved_model"]["agreement"]
        == 1.0
    )
    assert (
        metrics["saved_model"]["max_abs_difference"] < 1e-5 and metrics["tflite_float32"]["max_abs_difference"] < 1e-4
    )
    speed = json.loads((first / "metrics/export_speed.json").read_text())  # timings: present, never asserted
    assert list(speed) == ["keras", *FORMATS] and set(speed["onnx"]) == {
        "images_per_second_batch_1",
        "images_per_second_batch_32",
        "size_bytes",
    }


cli = predict_cli  # transfer-learning predict, in this process: its exit status


def read(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))[1:]


def by_class(row: list[str]) -> dict[str, str]:
    return dict(zip(row[1::2], row[2::2]))


def test_predict_runs_every_export_with_the_keras_labels_within_the_recorded_tolerance(exported, tmp_path):
    """The test images as PNG files (32 px: prepared as they are), predicted by each format through the command line."""
    project = exported[0]
    images = split_images(project).astype(np.uint8)
    folder = tmp_path / "new"
    folder.mkdir()
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    metrics = json.loads((project / "metrics/export.json").read_text())
    assert cli(folder, "-o", tmp_path / "keras.csv", "--model", project / "models/model.keras") == 0
    keras_rows = read(tmp_path / "keras.csv")
    export = project / "models/export"
    for name in FORMATS:
        out = tmp_path / f"{name}.csv"
        assert cli(folder, "-o", out, "--model", export / exports.FILES[name]) == 0, name  # encoding.json beside it
        rows = read(out)
        assert [row[0] for row in rows] == [row[0] for row in keras_rows]
        agreeing = np.mean([row[1] == ours[1] for row, ours in zip(keras_rows, rows)])
        assert agreeing >= metrics[name]["agreement"], name
        difference = max(
            abs(float(ours[c]) - float(theirs[c]))  # class by class (the CSV lists them by probability)
            for ours, theirs in ((by_class(row), by_class(keras)) for row, keras in zip(rows, keras_rows))
            for c in CLASSES
        )
        # the CSV rounds to 6 decimals
        assert difference <= metrics[name]["max_abs_difference"] + 2e-6, (name, difference)


def test_a_regression_exports_to_the_target_unit_in_every_format(tmp_path):
    encoding = Encoding(task="regression", mean=50.0, std=10.0)
    model = packaging.package(tiny_model(1, "regression"), encoding)
    images = sample_images(16, 4)
    written = exports.export_all(model, encoding, images, tmp_path)
    reference = exports.outputs_of(model, images)
    for name, path in written.items():
        runner = exports.runner(path)
        assert runner.input_shape == (None, SIZE, SIZE, 3) and runner.output_shape == (None, 1), name
        figures = exports.quality(
            exports.outputs_of(runner, images), reference, (reference.reshape(-1) - 50) / 10, encoding
        )
        assert set(figures) == {"mae", "max_abs_difference"}, name
        assert figures["max_abs_difference"] < (1.0 if name == "tflite_int8" else 1e-3), (name, figures)


class Counted:
    """uint8 images that count how many images are read from them (an ImageSet decodes its files on every read)."""

    def __init__(self, images: np.ndarray):
        self.images, self.read = images, 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        self.read += len(self.images[key])
        return self.images[key]


def test_the_test_images_are_read_once_for_every_format():
    """The export stage scores every format on the test images batch by batch: each image read (decoded) once."""
    models = {name: tiny_model(3, "classification") for name in ("keras", "other")}
    images = Counted(sample_images(70, 5))  # two batches: 64 and 6
    outputs = exports.outputs_of_each(models, images)
    assert images.read == 70
    for name, model in models.items():
        np.testing.assert_array_equal(outputs[name], exports.outputs_of(model, images.images))
    assert exports.speed_sample(images).shape == (32, SIZE, SIZE, 3) and images.read == 70 + 32


def test_a_file_that_is_no_export_is_one_line_and_writes_nothing(exported, tmp_path, capsys):
    folder = tmp_path / "new"
    folder.mkdir()
    Image.fromarray(sample_images(1, 5)[0]).save(folder / "a.png")
    encoding = exported[0] / "models/export/encoding.json"
    (tmp_path / "broken.tflite").write_bytes(b"not a flatbuffer")
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf")
    (tmp_path / "empty").mkdir()
    (tmp_path / "model.pt").write_bytes(b"")
    messages = {}
    for model in ("broken.tflite", "broken.onnx", "empty", "model.pt"):
        assert cli(folder, "-o", tmp_path / "out.csv", "--model", tmp_path / model, "--encoding", encoding) == 1, model
        messages[model] = capsys.readouterr().err.strip().splitlines()
        assert len(messages[model]) == 1 and messages[model][0].startswith("error: "), messages[model]
    assert (
        "cannot load the model" in messages["broken.tflite"][0]
        and "cannot load the model" in messages["broken.onnx"][0]
    )
    assert "a folder, but not a SavedModel (no saved_model.pb in it)" in messages["empty"][0]
    assert (
        "not a model predict can run; give a .keras, .tflite or .onnx file, or a SavedModel folder"
        in messages["model.pt"][0]
    )
    assert not (tmp_path / "out.csv").exists()


def export_snippets() -> tuple[str, list[str]]:
    """docs/using-the-model.md, section Exports: the image preparation, then one block per format."""
    page = (ROOT / "docs" / "using-the-model.md").read_text(encoding="utf-8")
    section = page.split("\n## Exports", 1)[1].split("\n## ", 1)[0]
    preparation, *formats = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return preparation, formats


def test_each_export_loads_and_predicts_with_no_project_code(exported, tmp_path):
    """Each snippet as written, after the preparation one, in a fresh interpreter that cannot import transfer_learning
    (one interpreter for the four: TensorFlow's import is most of the time)."""
    project = exported[0]
    shutil.copytree(project / "models/export", tmp_path / "models/export")
    shutil.copy(project / "models/model.keras", tmp_path / "models/model.keras")
    Image.fromarray(sample_images(1, 6)[0]).save(tmp_path / "some.jpg", quality=95)
    preparation, formats = export_snippets()
    assert len(formats) == 4
    guard = "import sys; sys.modules['transfer_learning'] = None\n"  # importing it would fail
    result = subprocess.run(
        [sys.executable, "-c", guard + preparation + "".join(formats)], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    labels = [line for line in result.stdout.splitlines() if line in CLASSES]
    assert len(labels) == 4, result.stdout
    saved_model, int8, onnx, keras_label = labels  # the TFLite snippet prints the int8 model's label, its last file
    assert saved_model == onnx == keras_label in CLASSES and int8 in CLASSES, labels


def test_a_model_trained_in_mixed_bfloat16_is_exported_computing_in_float32():
    """TFLite and ONNX do not run bfloat16 ops: the export rebuilds such a model (base.precision bfloat16) in float32,
    with the same weights."""
    from transfer_learning import networks

    networks.set_precision("bfloat16")
    try:
        mixed = tiny_model(3, "classification")
    finally:
        networks.set_precision("float32")
    rebuilt = exports.in_float32(mixed)
    assert {layer.dtype_policy.name for layer in mixed.layers[1:]} == {"mixed_bfloat16"}
    assert {layer.dtype_policy.name for layer in rebuilt.layers} == {"float32"}
    assert all(np.array_equal(a, b) for a, b in zip(mixed.get_weights(), rebuilt.get_weights()))
    float32 = tiny_model(3, "classification")
    assert exports.in_float32(float32) is float32
