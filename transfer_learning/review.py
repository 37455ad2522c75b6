"""The review of a run, for a pull request: a Markdown report and a picture of the fine-tuned model's worst test cases.

- worst_cases(): the test images the fine-tuned model gets most confidently wrong (classification: the highest
  probability given to a wrong class) or with the largest errors (regression), worst first.
- markdown(): head-only vs fine-tuned vs a constant baseline, per class (or target range), the worst cases,
  the training runs, and the data report with every skipped file.
- write(): the grid of the worst cases (each with its file, true and predicted label) and the report, into
  plots/evaluate/figures and reports/review.md.

Text from the data (class names, file names) is drawn and written literally: no math text in figures, no
Markdown or HTML in the report. No TensorFlow; evaluation.py draws the grid.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from transfer_learning import evaluation, files, paths
from transfer_learning.records import DataReport, Encoding

GRID_COLUMNS = 4
WORST_CASES = 16  # images in the grid and rows in the report's table
SKIPPED_SHOWN = 50  # skipped files listed in the report; every one is in metrics/data.json
MODEL_NAMES = {"head": "head only", "fine_tuned": "fine-tuned", "baseline": "constant baseline"}


def worst_cases(actual: np.ndarray, outputs: np.ndarray, encoding: Encoding, paths: np.ndarray) -> pd.DataFrame:
    """The fine-tuned model's test cases, worst first (ties: in test-set order): its mistakes, most confident first
    (classification; none if it makes none), or every image by the size of its error (regression).

    Columns: index (row of the test arrays), path, actual, predicted, and `probability` (of the predicted class)
    or `error` (predicted - actual)."""
    if encoding.is_classification:
        classes = np.asarray(encoding.classes)
        predicted = outputs.argmax(axis=-1)
        frame = pd.DataFrame(
            {
                "index": np.arange(len(actual)),
                "path": paths,
                "actual": actual,
                "predicted": classes[predicted],
                "probability": outputs.max(axis=-1).astype(float),
            }
        )
        frame = frame[frame["predicted"] != frame["actual"]]
        order = np.lexsort((frame["index"].to_numpy(), -frame["probability"].to_numpy()))
    else:
        predicted = np.asarray(outputs, dtype=np.float64).reshape(-1)
        frame = pd.DataFrame(
            {
                "index": np.arange(len(actual)),
                "path": paths,
                "actual": actual,
                "predicted": predicted,
                "error": predicted - actual,
            }
        )
        order = np.lexsort((frame["index"].to_numpy(), -frame["error"].abs().to_numpy()))
    return frame.iloc[order].reset_index(drop=True)


def figure_name(task: str) -> str:
    return "most_confident_mistakes.png" if task == "classification" else "largest_errors.png"


def figure_title(worst: pd.DataFrame, task: str, shown: int = WORST_CASES) -> str:
    """What the grid shows: the first `shown` rows of worst_cases()."""
    shown = min(shown, len(worst))
    if task == "classification":
        if worst.empty:
            return "Fine-tuned model: no mistake on the test set"
        return f"Fine-tuned model: its {shown} most confident mistakes (of {len(worst)}) on the test set"
    return f"Fine-tuned model: the {shown} test images with the largest errors (of {len(worst)})"


def caption(row, task: str) -> str:
    """Three lines under a grid cell: the file, the true and the predicted label."""
    name = shorten(Path(str(row.path)).name, 24)
    if task == "classification":
        return (
            f"{name}\ntrue: {shorten(str(row.actual), 18)}\npredicted: {shorten(str(row.predicted), 12)} "
            f"({row.probability:.2f})"
        )
    return f"{name}\ntrue: {row.actual:.4g}\npredicted: {row.predicted:.4g} ({row.error:+.3g})"


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# ------------------------------------------------------------------------------------------------ Markdown

# GitHub turns @user, #123, www.example.com and scheme://... in a comment into mentions, issue links and links (its
# autolinks, which backslashes do not stop); a zero-width space after @, # and www, and inside ://, keeps the text
# as it reads but breaks the pattern, so a class name or a file path never pings anyone or links anywhere.
ZERO_WIDTH_SPACE = "\u200b"
AUTOLINK = re.compile(r"(?<=[@#])|(?<=\bwww)(?=\.)|(?<=:)(?=//)", re.IGNORECASE)


def md(text) -> str:
    """Data as literal Markdown text, safe in a table cell: no markup, no HTML, no autolinks, one line."""
    text = " ".join(str(text).split())
    return AUTOLINK.sub(ZERO_WIDTH_SPACE, re.sub(r"([\\`*_\[\]<>|~&$])", r"\\\1", text))


def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows
    ]


def number(value, task: str) -> str:
    return f"{value:.3f}" if task == "classification" else f"{value:.4g}"


def markdown(
    summary: dict,
    breakdown: pd.DataFrame,
    worst: pd.DataFrame,
    *,
    baseline,
    training: dict,
    data_report: DataReport,
    encoding: Encoding,
    figure: Path,
    report: Path,
    extra: list[str] = (),
) -> str:
    """The review report (to be written to `report`). `summary` is metrics/evaluate.json, `training` maps head and
    fine_tuned to their best-epoch metrics, `figure` is the worst-cases grid (linked relative to the report);
    `extra`: lines after the worst cases (the heatmaps, calibration)."""
    task = encoding.task
    figure = Path(os.path.relpath(figure, Path(report).parent)).as_posix()
    lines = [f"# Review: {task} on {summary['test_images']} test images", ""]
    lines += results(summary, baseline, task) + [""] + per_group(breakdown, task) + [""]
    lines += worst_section(worst, task, figure) + [""] + (list(extra) + [""] if extra else [])
    lines += training_section(training, task) + [""] + data_section(data_report, task)
    return "\n".join(lines) + "\n"


def results(summary: dict, baseline, task: str) -> list[str]:
    models = [name for name in MODEL_NAMES if name in summary]
    constant = (
        f"always '{md(baseline)}' (the most frequent training class)"
        if task == "classification"
        else f"always {baseline:.4g} (the training mean)"
    )
    rows = [
        [md(metric.replace("_", " "))] + [number(summary[name][metric], task) for name in models]
        for metric in summary["head"]
    ]
    balanced = (
        " Balanced accuracy: the mean of the per-class recalls (recall macro), every class counted once however few its"
        " test images; with imbalanced classes, the figure to compare (plain accuracy mostly counts the largest class)."
        if "balanced_accuracy" in summary["head"]
        else ""
    )
    return (
        ["## Test metrics", ""]
        + table(["metric"] + [MODEL_NAMES[name] for name in models], rows)
        + [
            "",
            f"Head only: the ImageNet base as it is, with the trained head. Constant baseline: {constant}.{balanced}",
        ]
    )


def per_group(breakdown: pd.DataFrame, task: str) -> list[str]:
    key, figures = (
        ("class", ["precision", "recall", "f1"])
        if task == "classification"
        else ("target_range", ["mae", "mean_residual"])
    )
    count = "support" if task == "classification" else "count"
    head, fine = (breakdown[breakdown["model"] == name].set_index(key) for name in ("head", "fine_tuned"))
    rows = [
        [md(group), int(fine.loc[group, count])]
        + [f"{number(head.loc[group, f], task)} → {number(fine.loc[group, f], task)}" for f in figures]
        for group in fine.index
    ]
    title = "## Per class" if task == "classification" else "## Per target range"
    return [title, "", "Head only → fine-tuned.", ""] + table(
        [key.replace("_", " "), "test images"] + [f.replace("_", " ") for f in figures], rows
    )


def worst_section(worst: pd.DataFrame, task: str, figure: str) -> list[str]:
    title = (
        "## Most confident mistakes of the fine-tuned model"
        if task == "classification"
        else "## Largest errors of the fine-tuned model"
    )
    lines = [title, "", f"![{figure_title(worst, task)}]({figure})", ""]
    if worst.empty:
        return lines + ["It classifies every test image correctly."]
    shown = worst.head(WORST_CASES).itertuples()
    if task == "classification":
        rows = [[md(r.path), md(r.actual), md(r.predicted), f"{r.probability:.3f}"] for r in shown]
        return lines + table(["image", "true", "predicted", "probability"], rows)
    rows = [[md(r.path), f"{r.actual:.4g}", f"{r.predicted:.4g}", f"{r.error:+.4g}"] for r in shown]
    return lines + table(["image", "true", "predicted", "error"], rows)


def training_section(training: dict, task: str) -> list[str]:
    metric = "accuracy" if task == "classification" else "mae"
    rows = []
    for name, run in training.items():
        if run.get("epochs_run"):
            rows.append(
                [
                    MODEL_NAMES.get(name, name),
                    f"{run['best_epoch']} of {run['epochs_run']}",
                    number(run[f"train_{metric}"], task),
                    number(run[f"val_{metric}"], task),
                    f"{run['val_loss']:.4g}",
                ]
            )
        else:
            rows.append([MODEL_NAMES.get(name, name), "not trained (0 epochs)", "", "", ""])
    return ["## Training (best epoch, restored)", ""] + table(
        ["model", "best epoch", f"train {metric}", f"val {metric}", "val loss"], rows
    )


def data_section(report: DataReport, task: str) -> list[str]:
    lines = [
        "## Data",
        "",
        f"{report.images} images, {report.duplicates} duplicates (same decoded pixels), {report.skipped} skipped.",
    ]
    if report.classes:
        lines += [
            "",
            "Images per class: " + ", ".join(f"{md(name)} {count}" for name, count in report.classes.items()) + ".",
        ]
    if report.duplicates_with_different_targets:
        lines += [
            "",
            f"{report.duplicates_with_different_targets} pictures appear with two different targets (kept, in one "
            "split).",
        ]
    if report.target:
        target = report.target
        lines += [
            "",
            f"Target: mean {target['mean']:.4g}, std {target['std']:.4g}, from {target['min']:.4g} to "
            f"{target['max']:.4g}.",
        ]
    lines += ["", "### Skipped files", ""]
    if not report.skipped_files:
        return lines + ["None."]
    lines += table(["file", "reason"], [[md(s.path), md(s.reason)] for s in report.skipped_files[:SKIPPED_SHOWN]])
    if len(report.skipped_files) > SKIPPED_SHOWN:
        lines += ["", f"... and {len(report.skipped_files) - SKIPPED_SHOWN} more: every one is in metrics/data.json."]
    return lines


def write(
    worst: pd.DataFrame,
    images: np.ndarray,
    *,
    summary: dict,
    breakdown: pd.DataFrame,
    baseline,
    training: dict,
    data_report: DataReport,
    encoding: Encoding,
    extra: list[str] = (),
) -> Path:
    """The grid of the WORST_CASES first of `worst` (rows of `images`, the test images) and the report around it
    (`extra`: see markdown). -> the grid."""
    task = encoding.task
    shown = worst.head(WORST_CASES)
    grid = paths.FIGURES / figure_name(task)
    evaluation.image_grid(
        images[shown["index"].to_numpy()],
        [caption(row, task) for row in shown.itertuples()],
        figure_title(worst, task),
        grid,
        columns=GRID_COLUMNS,
    )
    report = markdown(
        summary,
        breakdown,
        worst,
        baseline=baseline,
        training=training,
        data_report=data_report,
        encoding=encoding,
        figure=grid,
        report=paths.REVIEW,
        extra=extra,
    )
    with files.atomic_path(paths.REVIEW) as tmp:
        tmp.write_text(report, encoding="utf-8")
    return grid
