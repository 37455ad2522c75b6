"""What a run leaves for its users, end to end: predictions on new images, the review of the run and the review page
of `dvc plots diff` in Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from support import review_page
from support.images import make_image
from support.projects import (
    ROOT,
    run,
    split_images,
)

pytestmark = pytest.mark.e2e


def test_predict_on_new_images_gives_what_the_evaluated_model_gives(fast_run, tmp_path):
    """Test images of the run as new files (one in a nested folder), next to broken ones: the good ones get the
    probabilities the model gives them as the pipeline decodes them, so predict prepares images exactly as the
    pipeline."""
    project = fast_run.project
    manifest = pd.read_csv(project / "data/ingested/manifest.csv", dtype={"label": str})
    test = manifest[pd.read_csv(project / "data/split/split.csv")["split"] == "test"].reset_index(drop=True)
    chosen = test.iloc[[0, 50, 100, 150, 200, 358]]
    new = tmp_path / "new"
    for i, row in enumerate(chosen.itertuples()):
        target = new / ("nested" if i % 2 else "") / f"{i}_{Path(row.path).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(project / "data/raw/digits" / row.path, target)
    (new / "empty.png").write_bytes(b"")
    (new / "cut.png").write_bytes((project / "data/raw/digits" / chosen.iloc[0].path).read_bytes()[:60])
    (new / "notes.txt").write_text("not an image")
    make_image(new / "nested" / ".hidden.png", (0, 0, 0))

    result = subprocess.run(
        [
            Path(sys.executable).parent / "transfer-learning",
            "predict",
            str(new),
            "-o",
            "predictions.csv",
            "--model",
            str(project / "models/model.keras"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 3, result.stderr  # written, some files skipped
    skipped = sorted(line for line in result.stderr.splitlines() if line.startswith("skipped "))
    assert [line.split(":")[0] for line in skipped] == [
        "skipped cut.png",
        "skipped empty.png",
        "skipped nested/.hidden.png",
        "skipped notes.txt",
    ]
    assert "predict: 6 images -> predictions.csv; 4 skipped" in result.stdout

    rows = pd.read_csv(tmp_path / "predictions.csv", dtype={"predicted": str, "top_2": str, "top_3": str})
    assert list(rows.columns) == [
        "path",
        "predicted",
        "probability",
        "top_2",
        "top_2_probability",
        "top_3",
        "top_3_probability",
    ]
    order = [int(Path(path).name.split("_")[0]) for path in rows["path"]]
    assert sorted(order) == list(range(6))
    model = keras.models.load_model(project / "models/model.keras", safe_mode=True)
    expected = model.predict(split_images(project)[chosen.index[order]], verbose=0)
    classes = json.loads((project / "models/encoding.json").read_text())["classes"]
    assert list(rows["predicted"]) == [classes[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose(rows["probability"], expected.max(axis=1), atol=2e-6)
    np.testing.assert_allclose(rows["top_3_probability"], np.sort(expected, axis=1)[:, -3], atol=2e-6)


def test_the_review_of_a_run_reports_the_three_models_and_shows_the_worst_mistakes(fast_run):
    project = fast_run.project
    text = (project / "reports/review.md").read_text()
    metrics = json.loads((project / "metrics/evaluate.json").read_text())
    row = (
        f"| accuracy | {metrics['head']['accuracy']:.3f} | {metrics['fine_tuned']['accuracy']:.3f} | "
        f"{metrics['baseline']['accuracy']:.3f} |"
    )
    assert row in text and "## Per class" in text and text.count("| 36 |") >= 5, "a row per class with its test images"
    assert (
        "1797 images, 0 duplicates (same decoded pixels), 0 skipped." in text and "### Skipped files\n\nNone." in text
    )
    mistakes = text.split("## Most confident mistakes of the fine-tuned model")[1].split("## Training")[0]
    link = mistakes.split("](")[1].split(")")[0]
    assert (project / "reports" / link).resolve() == project / "plots/evaluate/figures/most_confident_mistakes.png"
    table = [line.split(" | ") for line in mistakes.splitlines() if line.startswith("| ") and "---" not in line][1:]
    wrong = round((1 - metrics["fine_tuned"]["accuracy"]) * metrics["test_images"])
    assert len(table) == min(16, wrong) and f"its {len(table)} most confident mistakes (of {wrong})" in mistakes
    probabilities = [float(cells[3].rstrip(" |")) for cells in table]
    assert probabilities == sorted(probabilities, reverse=True)
    for cells in table:  # the image's file, its class folder, and another class predicted
        path, true, predicted = cells[0].lstrip("| "), cells[1], cells[2]
        assert (project / "data/raw/digits" / path).is_file() and path.split("/")[0] == true != predicted
    with Image.open(project / "plots/evaluate/figures/most_confident_mistakes.png") as grid:
        assert grid.size == (1200, round((3.7 * -(-len(table) // 4) + 0.6) * 100)), "rows of four mistakes"
    lock = (project / "dvc.lock").read_text()
    assert "path: reports/review.md" in lock and "path: dvclive/fine_tune" in lock


def test_every_plot_of_the_review_page_renders_under_its_own_title(fast_run, tmp_path):
    browser = review_page.chromium()
    run(["dvc", "plots", "diff", "more-head-epochs", "lower-lr", "-o", str(tmp_path / "review")], fast_run.project)
    page = review_page.local_scripts(tmp_path / "review" / "index.html")
    window = (2600, 3000)  # the probe and the screenshot lay the page out alike: a chart's box holds its pixels
    shown = review_page.inspect(browser, page, size=window)

    titles = {
        next(iter(plot)): next(iter(plot.values()))["title"]
        for plot in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
        if isinstance(plot, dict)
    }
    vega = {plot["id"]: plot for plot in shown["vega"]}
    assert list(vega) == [
        "#head-loss",
        "#fine-tune-loss",
        "#plots_evaluate_predictions_head_csv",
        "#plots_evaluate_predictions_fine_tuned_csv",
        "#confusion-normalized-head",
        "#confusion-normalized-fine-tuned",
        "#calibration",
    ]
    for plot in vega.values():
        assert plot["error"] is None and plot["svg"] == 1 and plot["marks"] > 20, plot  # drawn: lines, points or cells
    assert [plot["title"] for plot in vega.values()] == list(titles.values()), "each chart under its dvc.yaml title"
    images = {image["title"]: image["loaded"] for image in shown["images"]}
    figures = [
        f"plots/evaluate/figures/{name}.png"
        for name in ("confusion", "most_confident_mistakes", "heatmaps/correct", "heatmaps/mistakes")
    ]
    epochs = [f"dvclive/{stage}/plots/images/predictions.png" for stage in ("train_head", "fine_tune")]
    assert sorted(images) == sorted(figures + epochs)
    assert all(len(loaded) == 2 and all(size and size[0] >= 300 for size in loaded) for loaded in images.values()), (
        images
    )
    assert all(size[0] >= 1000 for name in figures[:2] for size in images[name]), "the figures are drawn large"
    every_title = [plot["title"] for plot in vega.values()] + list(images)
    assert all(every_title) and len(set(every_title)) == len(every_title) == 13

    shot = review_page.screenshot(browser, page, tmp_path / "review.png", size=window)
    with Image.open(shot) as picture:
        grey = np.asarray(picture.convert("L"))
    for plot in vega.values():  # each chart's own pixels: lines, cells, axes and labels darker than light grey
        x, y, width, height = (round(v) for v in plot["box"])
        assert width > 300 and height > 300 and y + height <= grey.shape[0], plot
        assert (grey[y : y + height, x : x + width] < 200).mean() > 0.02, f"{plot['id']} is drawn in the screenshot"
    shutil.copy(shot, tmp_path.parent / "review-page.png")  # kept by pytest with its temporary folders, to look at
