"""transfer-learning predict: new images (a folder or a CSV) -> one CSV row each, prepared as ingest and normalize
prepare the training images, with unusable files reported and exit codes a script can use.

A small real Keras model (saved as fine-tune saves one) stands in for a trained one here; test_e2e_model_and_review.py
runs it on the model of a real pipeline run.
"""

from __future__ import annotations

import csv
import json
import os
import zipfile

import keras
import numpy as np
import pytest

from support import hostile_models
from support.images import make_image
from support.projects import predict_cli
from transfer_learning import errors, images, model_files, prediction
from transfer_learning.records import Encoding

PREPARATION = {"max_short_side": 256, "max_megapixels": 180.0, "image_size": 32, "resize": "pad"}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """models/model.keras and models/encoding.json of a 3-class model taking 32 px images."""
    folder = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model_files.save(keras.Model(inputs, outputs), folder / "model.keras")
    (folder / "encoding.json").write_text(
        json.dumps({"task": "classification", "classes": ["cat", "dog", "owl"], "input": PREPARATION})
    )
    return folder


def new_images(root):
    """Two good images (one in a nested folder, one wide: padded), and files predict must skip."""
    make_image(root / "a.png", (200, 40, 40), size=(40, 30))
    make_image(root / "more" / "b.jpg", (40, 40, 200), size=(90, 20))
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("not an image")
    (root / "notes.txt").write_text("a note")
    make_image(root / ".hidden.png", (0, 0, 0))
    return root


cli = predict_cli  # transfer-learning predict, in this process: its exit status


def read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def expected_probabilities(model_folder, files):
    """What the model gives for these files prepared as ingest (decode) and normalize (fit) would prepare them."""
    model = model_files.load(model_folder / "model.keras")
    pixels = np.stack([images.square(images.decode(f, 256, 180_000_000)[0], 32, "pad") for f in files]).astype(
        "float32"
    )
    return model.predict(pixels, verbose=0)


def test_a_folder_gives_a_row_per_image_and_lists_what_it_skipped(tmp_path, model_folder, capsys):
    root = new_images(tmp_path / "new")
    out = tmp_path / "predictions.csv"
    assert cli(root, "-o", out, "--model", model_folder / "model.keras", "--top-k", "2") == prediction.SOME_SKIPPED
    rows = read(out)
    assert rows[0] == ["path", "predicted", "probability", "top_2", "top_2_probability"]
    assert [row[0] for row in rows[1:]] == ["a.png", "more/b.jpg"]
    expected = expected_probabilities(model_folder, [root / "a.png", root / "more" / "b.jpg"])
    for row, probabilities in zip(rows[1:], expected):
        first, second = np.argsort(-probabilities)[:2]
        assert row[1] == ["cat", "dog", "owl"][first] and row[3] == ["cat", "dog", "owl"][second]
        assert float(row[2]) == pytest.approx(probabilities[first], abs=1e-5) and float(row[4]) == pytest.approx(
            probabilities[second], abs=1e-5
        )
    err = capsys.readouterr().err
    for line in [
        "skipped .hidden.png: hidden file",
        "skipped empty.png: empty file",
        "skipped notes.txt: not an image file extension",
        "skipped text.jpg: not a readable image",
    ]:
        assert line in err


def test_a_csv_lists_images_relative_to_its_folder(tmp_path, model_folder, capsys):
    root = new_images(tmp_path / "new")
    (root / "list.csv").write_text("file,note\nmore/b.jpg,x\na.png,y\n")
    out = tmp_path / "out" / "predictions.csv"
    assert cli(root / "list.csv", "--path-column", "file", "-o", out, "--model", model_folder / "model.keras") == 0
    rows = read(out)
    assert rows[0] == ["path", "predicted", "probability", "top_2", "top_2_probability", "top_3", "top_3_probability"]
    assert [row[0] for row in rows[1:]] == ["more/b.jpg", "a.png"], "in the CSV's order"
    assert all(abs(sum(float(p) for p in row[2::2]) - 1) < 1e-4 for row in rows[1:]), "the three classes' probabilities"
    assert "predict: 2 images" in capsys.readouterr().out

    (root / "list.csv").write_text("file\na.png\nmissing.png\n../outside.png\na.png\n")
    assert (
        cli(root / "list.csv", "--path-column", "file", "-o", out, "--model", model_folder / "model.keras")
        == prediction.SOME_SKIPPED
    )
    err = capsys.readouterr().err
    assert (
        "skipped missing.png: row 3: file not found" in err
        and "skipped ../outside.png: row 4: path escapes the CSV's folder" in err
    )
    assert "row 5: the same file as row 2" in err and len(read(out)) == 2


def test_nothing_usable_or_a_mismatched_model_is_one_line_and_writes_nothing(tmp_path, model_folder, capsys):
    broken = tmp_path / "broken"
    (broken / "x").mkdir(parents=True)
    (broken / "x" / "a.png").write_text("<html>")
    out = tmp_path / "predictions.csv"
    model = model_folder / "model.keras"
    assert cli(broken, "-o", out, "--model", model) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: " + f"{broken}: no usable image (1 skipped, e.g. x/a.png: not a readable image: "
        "the content is not JPEG, PNG, BMP, GIF, TIFF or WebP)"
    )
    assert not out.exists() and os.listdir(tmp_path) == ["broken"], "no output, not even a temporary file"

    good = new_images(tmp_path / "new")
    encoding = json.loads((model_folder / "encoding.json").read_text())
    cases = {
        "old": {k: v for k, v in encoding.items() if k != "input"},
        "other run": encoding | {"input": PREPARATION | {"image_size": 96}},
        "four classes": encoding | {"classes": ["a", "b", "c", "d"]},
    }
    messages = {}
    for case, content in cases.items():
        (tmp_path / "encoding.json").write_text(json.dumps(content))
        assert cli(good, "-o", out, "--model", model, "--encoding", tmp_path / "encoding.json") == 1
        messages[case] = capsys.readouterr().err
    assert (
        "does not say how images are prepared for the model" in messages["old"] and "run `dvc repro`" in messages["old"]
    )
    assert "is for 96 px images, the model takes 32 px" in messages["other run"]
    assert "names 4 classes, the model has 3 outputs" in messages["four classes"]
    assert (
        cli(tmp_path / "nowhere", "--model", model) == 1
        and f"error: {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    )
    assert cli(good, "--model", tmp_path / "none.keras") == 1 and "cannot load the model" in capsys.readouterr().err
    assert not out.exists()
    assert cli(good, "--top-k", "0") == 2, "a usage error is argparse's status 2"


def test_regression_rows_hold_the_value_in_the_target_unit():
    rows = prediction.rows(
        ["a.png", "b.png"],
        np.array([[31.25], [1e-7]], dtype=np.float32),
        Encoding(task="regression", mean=0.0, std=1.0),
        0,
    )
    assert prediction.header(Encoding(task="regression", mean=0.0, std=1.0), 0) == ["path", "predicted"]
    assert rows == [["a.png", "31.25"], ["b.png", "1e-07"]]
    tie = prediction.rows(
        ["c.png"],
        np.array([[0.25, 0.5, 0.25]]),
        Encoding(
            task="classification",
            classes=(
                "x",
                "y",
                "z",
            ),
        ),
        3,
    )
    assert tie == [["c.png", "y", "0.500000", "x", "0.250000", "z", "0.250000"]], "ties in class order"


def test_new_images_are_listed_like_data_source_without_labels(tmp_path):
    root = new_images(tmp_path / "new")
    (root / "more" / "loop").symlink_to(root)
    items, skipped = prediction.new_images(root, "image")
    assert [(item.path, item.label) for item in items] == [
        ("a.png", None),
        ("empty.png", None),
        ("more/b.jpg", None),
        ("text.jpg", None),
    ]
    reasons = {s.path: s.reason for s in skipped}
    assert (
        reasons[".hidden.png"] == "hidden file" and reasons["more/loop"] == "link to a folder that contains it (a loop)"
    )
    assert reasons["notes.txt"].startswith("not an image file extension")
    with pytest.raises(errors.PipelineError, match="is neither a folder of images nor a .csv file"):
        prediction.new_images(root / "notes.txt", "image")


def test_file_and_class_names_never_run_as_spreadsheet_formulas():
    encoding = Encoding(
        task="classification",
        classes=(
            "=evil",
            "dog",
            "@x",
        ),
    )
    rows = prediction.rows(
        ["=cmd|' /C calc'!A0.png", "-1.png"], np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]]), encoding, 2
    )
    assert rows == [
        ["'=cmd|' /C calc'!A0.png", "dog", "0.700000", "'@x", "0.200000"],
        ["-1.png".replace("-", "'-", 1), "'=evil", "0.600000", "dog", "0.300000"],
    ]


def test_an_output_that_is_an_input_is_refused_and_dash_is_standard_output(tmp_path, model_folder, capsys, monkeypatch):
    """`-o imgs/list.csv` on `imgs/list.csv` once replaced the image list with the predictions (exit 0); `-o -` wrote a
    file named `-`."""
    root = new_images(tmp_path / "new")
    listing = root / "list.csv"
    listing.write_text("file\na.png\n")
    (tmp_path / "link.csv").symlink_to(listing)
    model = model_folder / "model.keras"
    for output in (listing, tmp_path / "link.csv", root / "a.png", model):
        assert cli(listing, "--path-column", "file", "-o", output, "--model", model) == 1, output
        assert "is an input of this prediction" in capsys.readouterr().err
    assert listing.read_text() == "file\na.png\n" and model.stat().st_size > 1000, "nothing was replaced"

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert cli(listing, "--path-column", "file", "-o", "-", "--model", model) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].startswith("path,predicted,probability") and len(captured.out.splitlines()) == 2
    assert "predict: 1 images -> standard output" in captured.err and not list(cwd.iterdir())


def test_a_model_that_runs_code_is_refused_before_anything_runs(tmp_path, capsys):
    """A .keras file around keras.layers.TFSMLayer: keras 3.12 loads its SavedModel with safe_mode=True, and calling the
    model ran the graph, which wrote a file (`predict.py imgs --model evil/model.keras` exited 0 and wrote it)."""
    marker = tmp_path / "written-by-the-model"
    evil = hostile_models.tfsm_writer(tmp_path, marker)
    # keras 3.12.0 loads it with safe_mode=True too; safe_mode=False here keeps this check true with a Keras that
    # refuses it
    keras.models.load_model(evil, safe_mode=False).predict(np.ones((1, 2), "float32"), verbose=0)
    assert marker.exists(), "the payload is real: calling the model writes the file"
    marker.unlink()

    with pytest.raises(
        errors.PipelineError, match=r"it names the class keras.layers.TFSMLayer, which this project never writes"
    ):
        model_files.load(evil)
    (tmp_path / "encoding.json").write_text(
        json.dumps({"task": "classification", "classes": ["a", "b"], "input": PREPARATION})
    )
    root = new_images(tmp_path / "new")
    assert cli(root, "-o", tmp_path / "out.csv", "--model", evil) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"error: cannot load the model {evil}: it names the class keras.layers.TFSMLayer, which this "
        "project never writes (its models hold only plain Keras layers); a model from elsewhere can run "
        "code when it is loaded or called: use a model this project trained (`dvc repro`)"
    ]
    assert not marker.exists() and not (tmp_path / "out.csv").exists(), "no code ran, nothing was written"


def test_a_damaged_or_foreign_model_file_is_one_line(tmp_path, model_folder, capsys):
    """A model.keras with one flipped byte gave a zipfile.BadZipFile traceback; a text file or a truncated copy was
    reported as "File not found" although it exists."""
    whole = (model_folder / "model.keras").read_bytes()
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0xFF  # inside the compressed weights
    damaged = {
        "flipped.keras": bytes(flipped),
        "text.keras": b"a model, honestly\n",
        "truncated.keras": whole[: len(whole) // 2],
    }
    # a zip whose config.json is no model: Keras returned the string
    with zipfile.ZipFile(tmp_path / "no-model.zip", "w") as archive:
        archive.writestr("config.json", json.dumps("a string"))
    damaged["no-model.keras"] = (tmp_path / "no-model.zip").read_bytes()
    root = new_images(tmp_path / "new")
    for name, content in damaged.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(errors.PipelineError, match="cannot load the model"):
            model_files.load(path)
        assert (
            cli(root, "-o", tmp_path / "out.csv", "--model", path, "--encoding", model_folder / "encoding.json") == 1
        ), name
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: cannot load the model {path}: "), lines
        assert "File not found" not in lines[0] and "Traceback" not in lines[0]
        wanted = {
            "flipped.keras": "the file is damaged (model.weights.h5 fails its checksum)",
            "no-model.keras": "not a Keras model file (a zip archive): its config.json describes no Keras model",
        }
        assert wanted.get(name, "not a Keras model file (a zip archive); it is damaged, truncated") in lines[0], lines[
            0
        ]
    assert not (tmp_path / "out.csv").exists()


def test_a_tampered_encoding_or_one_from_another_run_is_refused_naming_the_field(tmp_path, model_folder, capsys):
    """Each input once gave a traceback, a self-contradicting message, or exit 0 with wrong rows: a regression
    encoding.json (or "task": "Classification") beside a 3-class model spread each image's probabilities over the next
    images' rows; missing task/classes -> KeyError; max_megapixels "180" -> TypeError; max_short_side 0 -> exit 0
    from 1x1 images; resize "stretch" silently padded."""
    encoding = json.loads((model_folder / "encoding.json").read_text())
    regression = {"task": "regression", "mean": 3.0, "std": 2.0, "input": PREPARATION}

    def prepared(**change):
        return encoding | {"input": PREPARATION | change}

    cases = {
        "regression for a 3-class model": (regression, "is for a regression (one output), the model has 3 outputs"),
        "task Classification": (
            encoding | {"task": "Classification"},
            "task: Input should be 'classification' or 'regression'",
        ),
        "no task": ({k: v for k, v in encoding.items() if k != "task"}, "task: Field required"),
        "no classes": ({k: v for k, v in encoding.items() if k != "classes"}, "classification needs 'classes'"),
        "max_megapixels text": (prepared(max_megapixels="180"), "input.max_megapixels: Input should be a valid number"),
        "image_size text": (prepared(image_size="24"), "input.image_size: Input should be a valid integer"),
        "max_short_side 0": (
            prepared(max_short_side=0),
            "input.max_short_side: Input should be greater than or equal to 8",
        ),
        "resize stretch": (prepared(resize="stretch"), "input.resize: Input should be 'crop' or 'pad'"),
        "classes a number": (encoding | {"classes": 3}, "classes: Input should be a valid array"),
        "one class": (encoding | {"classes": ["cat"]}, "names one class ('cat')"),
        "std 0": (regression | {"std": 0.0}, "regression needs the target's 'mean' and a positive 'std'"),
    }
    root = new_images(tmp_path / "new")
    out = tmp_path / "out.csv"
    for case, (content, wanted) in cases.items():
        (tmp_path / "encoding.json").write_text(json.dumps(content))
        assert (
            cli(root, "-o", out, "--model", model_folder / "model.keras", "--encoding", tmp_path / "encoding.json") == 1
        ), case
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'encoding.json'} "), (case, lines)
        assert wanted in lines[0], (case, lines[0])
    assert not out.exists()

    inputs = keras.Input((32, 32, 1))  # gray images in: no encoding.json of this project describes it
    model_files.save(
        keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))),
        tmp_path / "gray.keras",
    )
    assert cli(root, "-o", out, "--model", tmp_path / "gray.keras", "--encoding", model_folder / "encoding.json") == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: the model {tmp_path / 'gray.keras'} takes inputs of shape (None, 32, 32, 1), "
        f"not RGB images (height, width, 3) as {model_folder / 'encoding.json'} describes: "
        "use the model fine-tune wrote"
    ]
    assert not out.exists()
