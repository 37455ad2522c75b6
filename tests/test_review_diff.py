"""The review against a base revision, end to end: `make review BASE=<rev>` on a branch of the fast run that changes
one param, and the review pages (reports/review.md, reports/comment.md) rendered from Markdown in headless Chromium."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from support import review_page
from support.images import make_image
from support.projects import ROOT, copy_project, run, stages_run, write_params

pytestmark = pytest.mark.e2e

# The one param the branch changes: it reruns fine-tune and evaluate only (the head, its metrics, stay the same)
PARAM, NEW = "fine_tune.lr", 0.0005


@pytest.fixture(scope="module")
def reviewed(fast_run, tmp_path_factory):
    """A copy of the fast run, a branch that changes PARAM and reruns what it reruns, committed, then `make review`
    against the base branch exactly as a reviewer types it. -> (project, base branch, make's output)."""
    project = copy_project(fast_run.project, tmp_path_factory.mktemp("review_diff") / "project")
    shutil.copy(ROOT / "Makefile", project / "Makefile")
    base = run(["git", "rev-parse", "--abbrev-ref", "HEAD"], project).stdout.strip()
    run(["git", "checkout", "-qb", "higher-lr"], project)
    write_params(project, {PARAM: NEW})
    ran = stages_run(run(["dvc", "repro", "evaluate"], project).stdout)
    assert ran == ["fine-tune", "evaluate"], ran
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", f"{PARAM}={NEW}"], project)
    made = run(["make", "review", f"BASE={base}", f"PYTHON={sys.executable}"], project).stdout
    return project, base, made


def table(section: str) -> list[list[str]]:
    """The rows of the first Markdown table in `section`, its header first, cells stripped."""
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if not set(line) <= set("|-: ")]


def numbers(section: dict, prefix: str = "") -> dict[str, float]:
    """{"fine_tuned.accuracy": 0.99, ...}: a metrics file's numbers by their dotted names, as DVC names them."""
    found = {}
    for key, value in section.items():
        if isinstance(value, dict):
            found |= numbers(value, f"{prefix}{key}.")
        else:
            found[f"{prefix}{key}"] = value
    return found


def test_make_review_shows_the_changed_param_and_the_metric_changes_against_the_base(reviewed):
    project, base, made = reviewed
    assert "reports/review-diff.md" in made and "cml comment create reports/comment.md" in made
    text = (project / "reports/review-diff.md").read_text()
    params = table(text.split("## Params")[1].split("## Metrics")[0])
    assert params[0] == ["Path", "Param", base, "workspace"]
    old = run(["git", "show", f"{base}:params.yaml"], project).stdout
    assert f"lr: {0.0002}" in old.split("fine_tune:")[1].split("\n\n")[0], "the base's value, as committed there"
    assert params[1:] == [["params.yaml", PARAM, "0.0002", str(NEW)]], "the one changed param, both values"

    metrics = table(text.split("## Metrics")[1].split("## Plots")[0])
    assert metrics[0][:4] == ["Path", "Metric", base, "workspace"]
    shown = {(row[0], row[1]): (float(row[2]), float(row[3])) for row in metrics[1:]}
    before = numbers(json.loads(run(["git", "show", f"{base}:metrics/evaluate.json"], project).stdout))
    after = numbers(json.loads((project / "metrics/evaluate.json").read_text()))
    changed = {name for name in after if after[name] != before[name]}
    assert {"fine_tuned.ece", "fine_tuned.accuracy"} & changed, "a higher learning rate moves the fine-tuned model"
    assert not any(name.startswith(("head.", "baseline.")) for name in changed), "the head is not retrained"
    evaluate = {name: values for (path, name), values in shown.items() if path == "metrics/evaluate.json"}
    assert set(evaluate) == changed, "every changed test metric, and only those"
    for name in changed:  # DVC rounds to 5 decimals
        assert evaluate[name] == pytest.approx((before[name], after[name]), abs=1e-5), name

    plots = dict(table(text.split("## Plots")[1])[1:])
    assert plots["head-loss"] == plots["plots/evaluate/predictions/head.csv"] == "unchanged", "the head's plots"
    assert plots["fine-tune-loss"].startswith("changed") and plots["calibration"].startswith("changed")
    assert plots["plots/evaluate/figures/heatmaps/correct.png"] == "changed", "another model looks elsewhere"
    side_by_side = text.split("### plots/evaluate/figures/heatmaps/correct.png: changed")[1].split("###")[0]
    links = [link.split(")")[0] for link in side_by_side.split("](")[1:]]
    assert len(links) == 2 and all((project / "reports" / link).is_file() for link in links), "both revisions' images"
    comment = (project / "reports/comment.md").read_text()
    assert comment == (project / "reports/review.md").read_text() + "\n" + text, "the run's review, then the diff"


def test_the_review_pages_render_every_image_and_table_in_chromium(reviewed, tmp_path):
    """reports/review.md and reports/comment.md (with the diff's side-by-side images) as HTML, CommonMark with GitHub's
    tables: every image loads, every table has its rows, and no Markdown is left as text."""
    browser = review_page.chromium(vega=False)
    project = reviewed[0]
    for name in ("review.md", "comment.md"):
        report = project / "reports" / name
        source = report.read_text()
        shown = review_page.inspect_markdown(browser, report, tmp_path / f"{name}.html")
        images = source.count("![")
        assert len(shown["images"]) == images >= (2 if name == "review.md" else 3), shown["images"]
        for image in shown["images"]:
            assert image["width"] > 0 and image["height"] > 0, f"{name}: {image['src']} did not load"
        separators = sum(1 for line in source.splitlines() if line.startswith("|---"))
        assert len(shown["tables"]) == separators >= 4, shown["tables"]
        for rendered in shown["tables"]:
            assert rendered["rows"] > 0 and rendered["columns"] >= 2, rendered
            assert set(rendered["cells"]) == {rendered["columns"]}, f"{name}: a row with cells missing: {rendered}"
        assert "|---" not in shown["text"] and "![" not in shown["text"], f"{name}: Markdown left as text"


def test_a_broken_image_link_is_seen_by_the_page_check(tmp_path):
    """The check can fail: an image link that points nowhere is reported as not loaded, a table with its rows."""
    browser = review_page.chromium(vega=False)
    report = tmp_path / "reports" / "review.md"
    report.parent.mkdir()
    make_image(tmp_path / "plots" / "grid.png", (200, 40, 40))
    report.write_text(
        "# R\n\n![ok](../plots/grid.png)\n\n![gone](../plots/gone.png)\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    )
    shown = review_page.inspect_markdown(browser, report, tmp_path / "page.html")
    assert [(image["alt"], image["width"] > 0) for image in shown["images"]] == [("ok", True), ("gone", False)]
    assert [(t["rows"], t["columns"], t["cells"]) for t in shown["tables"]] == [(1, 2, [2])]
