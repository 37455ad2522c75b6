"""End to end: the real pipeline, real DVC, in a temporary git repository, on small real images."""
from __future__ import annotations

import json
import re

import keras
import numpy as np
import pandas as pd
import pytest

from conftest import FAST, make_image, make_project, run

pytestmark = pytest.mark.e2e

ALL_STAGES = ["ingest", "split", "normalize", "augment", "extract-features", "extract-activations", "train-head", "fine-tune", "evaluate"]


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", output)


def test_digits_classification_repro_experiments_and_determinism(tmp_path):
    project = make_project(tmp_path, FAST)

    first = run(["dvc", "repro"], project)
    assert stages_run(first.stdout) == ALL_STAGES
    metrics = json.loads((project / "metrics/evaluate.json").read_text())
    assert set(metrics) == {"head", "fine_tuned", "test_images"}
    assert metrics["test_images"] == 359  # 20 % of the 1797 digits, stratified
    assert metrics["head"]["accuracy"] > 0.5  # ten classes: far above chance even after 2 epochs
    data_report = json.loads((project / "metrics/data.json").read_text())
    assert data_report["images"] == 1797 and data_report["skipped"] == 0 and len(data_report["classes"]) == 10

    model = keras.models.load_model(project / "models/model.keras", safe_mode=True)
    pixels = np.load(project / "data/normalized/test_images.npy")[:8].astype("float32")
    probabilities = model.predict(pixels, verbose=0)
    assert probabilities.shape == (8, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    assert json.loads((project / "models/encoding.json").read_text())["classes"] == [str(d) for d in range(10)]

    lock = (project / "dvc.lock").read_text()
    again = run(["dvc", "repro"], project)
    assert stages_run(again.stdout) == []

    forced = run(["dvc", "repro", "--force"], project)
    assert stages_run(forced.stdout) == ALL_STAGES
    assert (project / "dvc.lock").read_text() == lock, "same inputs and params must give byte-identical outputs"

    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline run"], project)
    exp = run(["dvc", "exp", "run", "-S", "train_head.epochs=3", "-n", "more-head-epochs"], project)
    assert stages_run(exp.stdout) == ["train-head", "fine-tune", "evaluate"]
    shown = run(["dvc", "exp", "show", "--csv"], project).stdout
    assert "more-head-epochs" in shown and "head.accuracy" in shown and "fine_tuned.accuracy" in shown

    exp = run(["dvc", "exp", "run", "-S", "fine_tune.lr=0.0001", "-n", "lower-lr"], project)
    assert stages_run(exp.stdout) == ["fine-tune", "evaluate"], "the cached activations do not depend on the learning rate"
    exp = run(["dvc", "exp", "run", "-S", "fine_tune.unfreeze_from=block_15_expand", "-n", "deeper-cut"], project)
    assert stages_run(exp.stdout) == ["extract-activations", "fine-tune", "evaluate"], "a new cut needs new activations"

    run(["dvc", "plots", "diff", "more-head-epochs", "lower-lr", "-o", "review"], project)
    assert "lower-lr_plots_evaluate_figures_confusion.png" in (project / "review/index.html").read_text()
    plots = json.loads(run(["dvc", "plots", "diff", "more-head-epochs", "lower-lr", "--json"], project).stdout)["data"]
    for curve in ["plots/train_head/loss.csv", "plots/train_head/accuracy.csv", "plots/fine_tune/loss.csv", "plots/fine_tune/accuracy.csv"]:
        assert plots[curve][0]["revisions"] == ["more-head-epochs", "lower-lr"]
    confusion = plots["plots/evaluate/predictions/fine_tuned.csv"][0]
    assert confusion["revisions"] == ["more-head-epochs", "lower-lr"] and "xy_count" in json.dumps(confusion["content"])
    assert [image["revisions"] for image in plots["plots/evaluate/figures/confusion.png"]] == [["more-head-epochs"], ["lower-lr"]]


def test_regression_from_csv_end_to_end(tmp_path):
    """A CSV manifest with a numeric target: brightness of gray images predicts the target."""
    folder = tmp_path / "faces"
    rows = []
    for i in range(60):
        target = float(i % 30 + 1)
        make_image(folder / "images" / f"{i:03d}.png", (target * 8,) * 3, noise_seed=i)
        rows.append({"image": f"images/{i:03d}.png", "age": target})
    rows.append({"image": "images/missing.png", "age": 3.0})
    rows.append({"image": "images/000.png", "age": "old"})
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    project = make_project(tmp_path, FAST | {"data.source": str(folder / "labels.csv"), "data.task": "regression",
                                             "data.target_column": "age", "split.bins": 3, "train_head.epochs": 5,
                                             "fine_tune.cache_activations": False})  # end to end, on images
    out = run(["dvc", "repro"], project)
    assert stages_run(out.stdout) == ALL_STAGES
    metrics = json.loads((project / "metrics/evaluate.json").read_text())
    assert set(metrics["fine_tuned"]) == {"mae", "rmse", "r2"} and "mae" in metrics["baseline"]
    report = json.loads((project / "metrics/data.json").read_text())
    reasons = {s["path"]: s["reason"] for s in report["skipped_files"]}
    assert reasons == {"images/missing.png": "row 62: file not found", "images/000.png": "row 63: target 'old' is not a finite number"}

    model = keras.models.load_model(project / "models/model.keras", safe_mode=True)
    predictions = pd.read_csv(project / "plots/evaluate/predictions/fine_tuned.csv")
    pixels = np.load(project / "data/normalized/test_images.npy").astype("float32")
    direct = model.predict(pixels, verbose=0).reshape(-1)
    assert np.allclose(direct, predictions["predicted"], rtol=1e-4, atol=1e-3), "the saved model outputs the target's unit"
    assert (project / "plots/evaluate/figures/predicted_vs_actual.png").stat().st_size > 0
