"""The review page as a reviewer sees it: `dvc plots diff` between two experiments of the fast run, rendered by
headless Chromium with the page's own Vega scripts (served from local npm copies: tests/review_page.py).

Every plot must render and say what it shows under a title of its own: the two learning curves, a confusion
matrix per model, and the PNG figures (each image under its file name, its title drawn inside)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

import review_page
from conftest import ROOT, run

pytestmark = pytest.mark.e2e


def test_every_plot_of_the_review_page_renders_under_its_own_title(fast_run, tmp_path):
    browser = review_page.chromium()
    run(["dvc", "plots", "diff", "more-head-epochs", "lower-lr", "-o", str(tmp_path / "review")], fast_run.project)
    page = review_page.local_scripts(tmp_path / "review" / "index.html")
    shown = review_page.inspect(browser, page)

    titles = {next(iter(plot)): next(iter(plot.values()))["title"]
              for plot in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"] if isinstance(plot, dict)}
    vega = {plot["id"]: plot for plot in shown["vega"]}
    assert list(vega) == ["#head-loss", "#fine-tune-loss", "#plots_evaluate_predictions_head_csv", "#plots_evaluate_predictions_fine_tuned_csv"]
    for plot in vega.values():
        assert plot["error"] is None and plot["svg"] == 1 and plot["marks"] > 20, plot  # drawn: lines, points or cells
    assert [plot["title"] for plot in vega.values()] == list(titles.values()), "each chart under its dvc.yaml title"
    images = {image["title"]: image["loaded"] for image in shown["images"]}
    assert list(images) == ["plots/evaluate/figures/confusion.png", "plots/evaluate/figures/most_confident_mistakes.png"]
    assert all(len(loaded) == 2 and all(size and size[0] >= 1000 for size in loaded) for loaded in images.values()), images
    every_title = [plot["title"] for plot in vega.values()] + list(images)
    assert all(every_title) and len(set(every_title)) == len(every_title) == 6

    shot = review_page.screenshot(browser, page, tmp_path / "review.png", size=(2600, 3000))
    with Image.open(shot) as picture:
        top = np.asarray(picture.convert("L").crop((0, 0, 1200, 1200)))
    assert (top < 200).mean() > 0.05, "the charts at the top of the page are drawn"
    shutil.copy(shot, tmp_path.parent / "review-page.png")  # kept by pytest with its temporary folders, to look at
