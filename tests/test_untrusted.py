"""Untrusted files never run code: no pickle, yaml.safe_load only, Keras safe_mode, no Lambda layers in saved
models, and paths from a folder or a CSV cannot leave their root. Payloads are real: each test first shows
that the file would run code if loaded the unsafe way."""
from __future__ import annotations

import ast
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, make_image
from lib import files, params, sources
from lib.errors import PipelineError

STAGE_SOURCES = sorted((ROOT / "stages").rglob("*.py"))


def calls(name: str):
    """(file, call node) for every call of `<something>.name(...)` or `name(...)` in the stage code."""
    for path in STAGE_SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                if (isinstance(func, ast.Attribute) and func.attr == name) or (isinstance(func, ast.Name) and func.id == name):
                    yield path.relative_to(ROOT), node


def keyword(node: ast.Call, name: str):
    return next((ast.literal_eval(k.value) for k in node.keywords if k.arg == name), "missing")


def test_the_code_has_no_unsafe_loader():
    for path in STAGE_SOURCES:
        text = path.read_text()
        tree = ast.parse(text)
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
        assert not imported & {"pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve", "marshal", "torch"}, path
        for banned in ("allow_pickle=True", "read_pickle", "unsafe_load", "full_load", "safe_mode=False",
                       "enable_unsafe_deserialization", "Lambda(", "eval(", "exec("):
            assert banned not in text, f"{path}: {banned}"
    np_loads = [(path, node) for path, node in calls("load") if isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "np"]
    assert np_loads and all(keyword(node, "allow_pickle") is False for _, node in np_loads), np_loads
    yaml_loads = [path for path, node in calls("load") if isinstance(node.func, ast.Attribute)
                  and isinstance(node.func.value, ast.Name) and node.func.value.id == "yaml"]
    assert yaml_loads == [] and any(True for _ in calls("safe_load"))
    load_models = list(calls("load_model"))
    assert load_models and all(keyword(node, "safe_mode") is True for _, node in load_models)


class Payload:
    """Unpickling this creates `marker`: what a malicious array file would do, with a harmless effect."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_an_array_file_with_pickled_objects_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "train_images.npy"
    np.save(evil, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    np.load(evil, allow_pickle=True)
    assert marker.exists(), "the payload is real"
    marker.unlink()
    for mmap in (False, True):
        with pytest.raises(PipelineError, match="train_images.npy holds Python objects, which are never unpickled; rerun the stage"):
            files.load_npy(evil, mmap=mmap)
    assert not marker.exists()
    (tmp_path / "garbage.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    with pytest.raises(PipelineError, match="garbage.npy is not a valid .npy array"):
        files.load_npy(tmp_path / "garbage.npy")


def test_params_yaml_with_python_tags_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    evil = f"data: !!python/object/apply:builtins.open [{str(marker)!r}, w]\n"
    yaml.unsafe_load(evil)
    assert marker.exists(), "the payload is real"
    marker.unlink()
    (tmp_path / "params.yaml").write_text(evil)
    with pytest.raises(PipelineError, match="params.yaml: cannot read params .*could not determine a constructor for the tag"):
        params.load(tmp_path / "params.yaml")
    assert not marker.exists()


def test_folder_and_csv_paths_cannot_leave_their_root(tmp_path):
    secret = make_image(tmp_path / "private" / "secret.png", (1, 2, 3))
    root = tmp_path / "data"
    make_image(root / "cats" / "ok.png", (9, 9, 9))
    (root / "cats" / "file_link.png").symlink_to(secret)
    (root / "cats" / "dir_link").symlink_to(secret.parent, target_is_directory=True)
    (root / "dogs").symlink_to(secret.parent, target_is_directory=True)  # a whole class folder outside the root
    items, skipped = sources.class_folders(root)
    assert [i.path for i in items] == ["cats/ok.png"]
    assert {s.path: s.reason for s in skipped} == {"cats/file_link.png": "link points outside data.source",
                                                   "cats/dir_link": "link points outside data.source",
                                                   "dogs": "link points outside data.source"}
    csv = root / "labels.csv"
    csv.write_text("image,label\n"
                   "cats/ok.png,cat\n"
                   f"../private/secret.png,x\n"
                   f"{secret},x\n"
                   "cats/../../private/secret.png,x\n"
                   "cats/file_link.png,x\n"
                   "cats/dir_link/secret.png,x\n"
                   "dogs/secret.png,x\n"
                   "~/secret.png,x\n")
    items, skipped = sources.list_source(str(csv.parent), csv.name, "classification", "image", "label")
    assert [i.path for i in items] == ["cats/ok.png"]
    assert [s.reason for s in skipped] == [
        "row 3: path escapes the CSV's folder", "row 4: absolute path; paths must be relative to the CSV's folder",
        "row 5: path escapes the CSV's folder", "row 6: path escapes the CSV's folder", "row 7: path escapes the CSV's folder",
        "row 8: path escapes the CSV's folder", "row 9: file not found"]


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


def test_a_keras_file_with_a_lambda_layer_is_refused(tmp_path, keras):
    from lib import models

    marker = tmp_path / "code-ran"
    # a lambda is saved as Python bytecode, which would run on loading without safe_mode
    side_effect = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x * 2)[1]")
    inputs = keras.Input((2,))
    keras.Model(inputs, keras.layers.Lambda(side_effect)(inputs)).save(tmp_path / "evil.keras")
    marker.unlink()
    keras.models.load_model(tmp_path / "evil.keras", safe_mode=False).predict(np.ones((1, 2)), verbose=0)
    assert marker.exists(), "the payload is real"
    marker.unlink()
    with pytest.raises(PipelineError, match=r"cannot load the model .*evil.keras: .*safe_mode"):
        models.load(tmp_path / "evil.keras")
    assert not marker.exists()


def test_the_pipeline_models_have_no_lambda_and_load_in_safe_mode(tmp_path, keras):
    from lib import models

    base = models.build_base("vgg16", 1.0, "none")
    extractor = models.feature_extractor(base, "vgg16", 32, "avg")
    head = models.build_head(extractor.output.shape[-1], 8, 0.1, 1, "regression")
    model = models.export(models.assemble(extractor, head), {"task": "regression", "mean": 30.0, "std": 4.0})
    models.save(model, tmp_path / "model.keras")
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        config = archive.read("config.json").decode()
    assert '"class_name": "Lambda"' not in config and "lambda" not in config.lower()
    pixels = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype("float32")
    loaded = models.load(tmp_path / "model.keras")
    assert np.allclose(loaded.predict(pixels, verbose=0), model.predict(pixels, verbose=0), atol=1e-5)


HOSTILE_CLASSES = ["=HYPERLINK(\"http://x.example\",\"y\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)", "a$^$b", "-1", "plain"]


def test_class_names_never_run_as_formulas_in_csv_outputs(tmp_path):
    """metrics/breakdown.csv and plots/evaluate/predictions/*.csv go to spreadsheets: a class name starting with = + - @
    gets a leading ' (shown, not run); plain numbers stay, and actual and predicted stay paired for `dvc plots`."""
    import csv

    import pandas as pd

    from lib import reports

    actual = np.array(HOSTILE_CLASSES * 2)
    predicted = np.roll(actual, 1)
    encoding = {"task": "classification", "classes": sorted(HOSTILE_CLASSES)}
    files.write_csv(tmp_path / "breakdown.csv", reports.breakdown(actual, {"head": predicted}, encoding), escape_formulas=True)
    files.write_csv(tmp_path / "head.csv", pd.DataFrame({"actual": actual, "predicted": predicted}), escape_formulas=True)
    shown = {"=HYPERLINK(\"http://x.example\",\"y\")": "'=HYPERLINK(\"http://x.example\",\"y\")",
             "+1+cmd|' /C calc'!A0": "'+1+cmd|' /C calc'!A0", "-2+3": "'-2+3", "@SUM(A1:A9)": "'@SUM(A1:A9)",
             "a$^$b": "a$^$b", "-1": "-1", "plain": "plain"}
    with open(tmp_path / "breakdown.csv", newline="") as f:
        assert [row["class"] for row in csv.DictReader(f)] == [shown[c] for c in sorted(HOSTILE_CLASSES)]
    with open(tmp_path / "head.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["actual"], r["predicted"]) for r in rows] == [(shown[a], shown[p]) for a, p in zip(actual, predicted)]


def test_evaluate_escapes_every_csv_it_writes():
    """Every CSV evaluate writes holds class names from the data."""
    writes = [node for path, node in calls("write_csv") if path.name == "evaluate.py"]
    assert len(writes) == 2 and all(keyword(node, "escape_formulas") is True for node in writes)


def test_class_names_with_dollar_signs_are_drawn_literally(tmp_path):
    """matplotlib reads $...$ as math text: 'a$^$b' made evaluate's confusion matrix crash after the whole pipeline ran."""
    from lib import reports

    actual = np.array(HOSTILE_CLASSES * 2)
    reports.confusion_figure(actual, {"head": actual, "fine_tuned": np.roll(actual, 1)}, sorted(HOSTILE_CLASSES), tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").stat().st_size > 1000
