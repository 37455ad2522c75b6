"""The review of a run (evaluate): the worst test cases, their grid and the Markdown report, on small made-up results.
The report and grid of real runs, both tasks, are checked in test_e2e_model_and_review.py and test_e2e_runs.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from transfer_learning import evaluation, files, review, targets
from transfer_learning.records import DataReport, Encoding, SkippedFile

CLASSES = ["cat", "dog|wolf", "<b>owl</b>"]
ENCODING = Encoding(task="classification", classes=tuple(CLASSES))


def test_the_worst_cases_are_the_most_confident_mistakes_or_the_largest_errors():
    actual = np.array(["cat", "cat", "dog|wolf", "<b>owl</b>", "cat"])
    outputs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    worst = review.worst_cases(actual, outputs, ENCODING, np.array([f"{i}.png" for i in range(5)]))
    assert list(worst["path"]) == ["2.png", "3.png", "4.png", "1.png"], (
        "mistakes only, most confident first, ties in test order"
    )
    assert list(worst["predicted"]) == ["<b>owl</b>", "dog|wolf", "<b>owl</b>", "dog|wolf"]
    assert worst["probability"].tolist() == [0.8, 0.8, 0.8, 0.7]
    assert (
        review.figure_title(worst, "classification")
        == "Fine-tuned model: its 4 most confident mistakes (of 4) on the test set"
    )
    assert review.figure_title(worst.iloc[:0], "classification") == "Fine-tuned model: no mistake on the test set"

    errors = review.worst_cases(
        np.array([10.0, 20.0, 30.0]),
        np.array([[12.0], [5.0], [45.0]]),
        Encoding(task="regression", mean=0.0, std=1.0),
        np.array(["a", "b", "c"]),
    )
    assert list(errors["path"]) == ["b", "c", "a"] and errors["error"].tolist() == [-15.0, 15.0, 2.0], (
        "ties in test order"
    )
    assert review.caption(next(errors.itertuples()), "regression") == "b\ntrue: 20\npredicted: 5 (-15)"


def test_the_baseline_is_the_most_frequent_training_class_or_the_training_mean():
    assert targets.constant(np.array([2, 1, 2, 1, 0]), ENCODING) == "dog|wolf", "a tie goes to the first class"
    assert targets.constant(np.array([0.5, -0.5]), Encoding(task="regression", mean=31.5, std=2.0)) == 31.5


def report(skipped: int = 0, worst_cases: int = 2) -> str:
    summary = {
        name: {"accuracy": acc, "f1_macro": acc - 0.01}
        for name, acc in (("head", 0.5), ("fine_tuned", 0.75), ("baseline", 0.25))
    }
    summary["test_images"] = 4
    breakdown = pd.DataFrame(
        [
            {"model": model, "class": name, "precision": p, "recall": p, "f1": p, "support": 2 - (name == "cat")}
            for model, p in (("head", 0.5), ("fine_tuned", 1.0))
            for name in CLASSES
        ]
    )
    worst = pd.DataFrame(
        {
            "index": [1, 3],
            "path": ["x/[link](http://a).png", "y_1.png"],
            "actual": ["cat", "<b>owl</b>"],
            "predicted": ["dog|wolf", "cat"],
            "probability": [0.9, 0.6],
        }
    ).head(worst_cases)
    training = {
        "head": {
            "best_epoch": 3,
            "epochs_run": 5,
            "train_accuracy": 0.8,
            "val_accuracy": 0.7,
            "train_loss": 0.5,
            "val_loss": 0.6,
        },
        "fine_tuned": {"best_epoch": 0, "epochs_run": 0},
    }
    data = DataReport(
        images=12,
        skipped=skipped,
        duplicates=1,
        classes={name: 4 for name in CLASSES},
        near_duplicates=(),
        skipped_files=tuple(SkippedFile(path=f"cat/{i:03d}|.png", reason="empty file") for i in range(skipped)),
    )
    return review.markdown(
        summary,
        breakdown,
        worst,
        baseline="cat",
        training=training,
        data_report=data,
        encoding=ENCODING,
        figure=Path("plots/evaluate/figures/m.png"),
        report=Path("reports/review.md"),
    )


def test_the_report_compares_the_three_models_and_writes_the_data_literally():
    text = report()
    assert "| metric | head only | fine-tuned | constant baseline |" in text
    assert "| accuracy | 0.500 | 0.750 | 0.250 |" in text and "| f1 macro | 0.490 | 0.740 | 0.240 |" in text
    assert "Constant baseline: always 'cat' (the most frequent training class)." in text
    assert r"| dog\|wolf | 2 | 0.500 → 1.000 | 0.500 → 1.000 | 0.500 → 1.000 |" in text, (
        "per class, head only → fine-tuned"
    )
    assert (
        "![Fine-tuned model: its 2 most confident mistakes (of 2) on the test set](../plots/evaluate/figures/m.png)"
        in text
    )
    assert "| x/\\[link\\](http:\u200b//a).png | cat | dog\\|wolf | 0.900 |" in text, "no link, no extra table column"
    assert r"| y\_1.png | \<b\>owl\</b\> | cat | 0.600 |" in text, "no HTML"
    assert "| head only | 3 of 5 | 0.800 | 0.700 | 0.6 |" in text and "| fine-tuned | not trained (0 epochs) |" in text
    assert "12 images, 1 duplicates (same decoded pixels), 0 skipped." in text and "### Skipped files\n\nNone." in text
    assert "<b>" not in text and "| dog|wolf" not in text


def test_the_report_lists_skipped_files_up_to_a_limit_and_says_where_the_rest_are():
    text = report(skipped=review.SKIPPED_SHOWN + 3, worst_cases=0)
    assert text.count("| empty file |") == review.SKIPPED_SHOWN and r"| cat/000\|.png | empty file |" in text
    assert "... and 3 more: every one is in metrics/data.json." in text
    assert "It classifies every test image correctly." in text and "no mistake on the test set" in text


def test_the_grid_draws_captions_literally_and_the_same_bytes_every_time(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    captions = [f"{i}.png\ntrue: $x^$ {i}\npredicted: a_b" for i in range(5)]  # math text would fail to parse
    for name in ("a.png", "b.png"):
        evaluation.image_grid(pixels, captions, "Fine-tuned model: a $ title", tmp_path / name)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    with Image.open(tmp_path / "a.png") as grid:
        assert grid.size == (1200, round((3.7 * 2 + 0.6) * 100)), "two rows of four"
    evaluation.image_grid(pixels[:0], [], "Fine-tuned model: no mistake on the test set", tmp_path / "none.png")
    assert (tmp_path / "none.png").stat().st_size > 0


HOSTILE_CLASSES = [
    '=HYPERLINK("http://x.example","y")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1:A9)",
    "a$^$b",
    "-1",
    "plain",
]


def test_class_names_never_run_as_formulas_in_csv_outputs(tmp_path):
    """metrics/breakdown.csv and plots/evaluate/predictions/*.csv go to spreadsheets: a class name starting with = + - @
    gets a leading ' (shown, not run); plain numbers stay, and actual and predicted stay paired for `dvc plots`."""
    import csv

    import pandas as pd

    from transfer_learning import evaluation

    actual = np.array(HOSTILE_CLASSES * 2)
    predicted = np.roll(actual, 1)
    encoding = Encoding(task="classification", classes=tuple(sorted(HOSTILE_CLASSES)))
    files.write_csv(
        tmp_path / "breakdown.csv", evaluation.breakdown(actual, {"head": predicted}, encoding), escape_formulas=True
    )
    files.write_csv(
        tmp_path / "head.csv", pd.DataFrame({"actual": actual, "predicted": predicted}), escape_formulas=True
    )
    shown = {
        '=HYPERLINK("http://x.example","y")': '\'=HYPERLINK("http://x.example","y")',
        "+1+cmd|' /C calc'!A0": "'+1+cmd|' /C calc'!A0",
        "-2+3": "'-2+3",
        "@SUM(A1:A9)": "'@SUM(A1:A9)",
        "a$^$b": "a$^$b",
        "-1": "-1",
        "plain": "plain",
    }
    with open(tmp_path / "breakdown.csv", newline="") as f:
        assert [row["class"] for row in csv.DictReader(f)] == [shown[c] for c in sorted(HOSTILE_CLASSES)]
    with open(tmp_path / "head.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["actual"], r["predicted"]) for r in rows] == [(shown[a], shown[p]) for a, p in zip(actual, predicted)]


def test_class_names_with_dollar_signs_are_drawn_literally(tmp_path):
    """matplotlib reads $...$ as math text: 'a$^$b' made evaluate's confusion matrix crash after the whole pipeline
    ran."""
    from transfer_learning import evaluation

    actual = np.array(HOSTILE_CLASSES * 2)
    evaluation.confusion_figure(
        actual, {"head": actual, "fine_tuned": np.roll(actual, 1)}, sorted(HOSTILE_CLASSES), tmp_path / "confusion.png"
    )
    assert (tmp_path / "confusion.png").stat().st_size > 1000


def test_names_and_paths_from_the_data_never_become_mentions_issue_links_or_links_on_github():
    """A class named @user, a label #123, a skipped path www.example.com or https://... would ping, link an issue or
    link out in a pull-request comment (GitHub's autolinks, which backslash escapes do not stop)."""
    import re

    from transfer_learning.review import md

    for text in ("@user", "team @org/devs", "#123", "see www.example.com", "https://example.com/x", "WWW.A.COM"):
        shown = md(text)
        assert shown.replace("\u200b", "") == text, "reads the same"
        assert not re.search(r"@\w|#\d|\bwww\.|://", shown, re.IGNORECASE), shown
    assert md("0/0051.png") == "0/0051.png" and md("a_b") == "a\\_b"


def test_close_target_ranges_stay_distinct_rows():
    """Targets 10000-10004 in five quantile bins once gave labels '[1e+04, 1e+04)' twice, merging their MAEs."""
    actual = np.repeat(np.arange(10000.0, 10005.0), 4)
    encoding = Encoding.model_validate({"task": "regression", "mean": 10002.0, "std": 1.4})
    frame = evaluation.breakdown(actual, {"fine_tuned": actual + 1.0}, encoding)
    assert len(frame) == 5 and frame["target_range"].is_unique and frame["count"].sum() == 20, frame
    assert not frame["target_range"].str.contains("e+", regex=False).any(), frame["target_range"].tolist()
    assert frame["target_range"].iloc[0].startswith("[10000, ") and frame["target_range"].iloc[-1].endswith(", 10004]")
    assert list(evaluation.target_ranges(np.array([1.0, 12.0, 30.0]), 2).unique()) == ["[1, 12)", "[12, 30]"]
