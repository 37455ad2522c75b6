"""Whether the models' outputs can be taken at their word, on the test set (no TensorFlow).

Classification: the expected calibration error (ECE) of the top probability, over BINS equal-width bins of it
((0, 0.1], (0.1, 0.2], ..., (0.9, 1]): the mean over the test images of |accuracy - mean confidence| of their bin
(each bin weighted by its share of the images); 0 is calibrated, a model always 90 % sure and right 80 % of the time
scores 0.1. The constant baseline is always sure (probability 1): its ECE is its error rate.
Regression: the share of test images predicted within 5 and within 10 units of their target, and a figure of the
residual (predicted - actual) of every test image against its target (figures/residuals_vs_actual.png).

The reliability diagram, one CSV per model for `dvc plots` (dvc.yaml: calibration), has the same columns for both
tasks: per bin, what was predicted (mean confidence; regression: mean prediction, over BINS bins of equal count of
the predictions) against what was observed (accuracy; mean target); a calibrated model is on the diagonal.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from transfer_learning import evaluation, files, paths
from transfer_learning.records import Encoding

BINS = 10
WITHIN = (5, 10)  # units of the target


def bins(confidence: np.ndarray) -> np.ndarray:
    """The bin of each top probability: (b / BINS, (b + 1) / BINS] is bin b."""
    return np.clip(np.ceil(np.asarray(confidence, dtype=np.float64) * BINS).astype(int) - 1, 0, BINS - 1)


def reliability(probabilities: np.ndarray, actual: np.ndarray) -> pd.DataFrame:
    """Per non-empty bin: its range, the images in it, their mean confidence (predicted) and their accuracy (observed).
    `actual`: class indices."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    frame = pd.DataFrame(
        {
            "bin": bins(probabilities.max(axis=-1)),
            "confidence": probabilities.max(axis=-1),
            "correct": (probabilities.argmax(axis=-1) == actual).astype(float),
        }
    )
    grouped = frame.groupby("bin").agg(
        images=("correct", "size"), predicted=("confidence", "mean"), observed=("correct", "mean")
    )
    grouped.insert(0, "range", [f"({b / BINS:.1f}, {(b + 1) / BINS:.1f}]" for b in grouped.index])
    return grouped.reset_index(drop=True)


def regression_reliability(predicted: np.ndarray, actual: np.ndarray) -> pd.DataFrame:
    """Per bin of equal count of the predictions (in test order among ties): its images, mean prediction, mean
    target."""
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1)
    order = np.lexsort((np.arange(len(predicted)), predicted))
    rows = [part for part in np.array_split(order, min(BINS, len(order))) if len(part)]
    return pd.DataFrame(
        {
            "range": [f"[{predicted[r].min():.4g}, {predicted[r].max():.4g}]" for r in rows],
            "images": [len(r) for r in rows],
            "predicted": [predicted[r].mean() for r in rows],
            "observed": [float(np.mean(np.asarray(actual)[r])) for r in rows],
        }
    )


def expected_calibration_error(probabilities: np.ndarray, actual: np.ndarray) -> float:
    table = reliability(probabilities, actual)
    return float((table["images"] * (table["observed"] - table["predicted"]).abs()).sum() / max(1, len(actual)))


def metrics(actual: np.ndarray, outputs: dict, encoding: Encoding, baseline) -> dict:
    """{model: {'ece': ...}} (classification; `outputs` maps head, fine_tuned to class probabilities) or
    {model: {'within_5': ..., 'within_10': ...}} (regression; `outputs`: predictions in the target's unit), with the
    constant baseline's."""
    if encoding.is_classification:
        index = {name: i for i, name in enumerate(encoding.classes)}
        classes = np.array([index[a] for a in actual], dtype=int)
        constant = np.eye(len(encoding.classes))[np.full(len(actual), index[baseline])]
        return {
            name: {"ece": round(expected_calibration_error(p, classes), 6)}
            for name, p in {**outputs, "baseline": constant}.items()
        }
    errors = {name: np.abs(np.asarray(p, dtype=np.float64).reshape(-1) - actual) for name, p in outputs.items()}
    errors["baseline"] = np.abs(np.asarray(actual, dtype=np.float64) - baseline)
    return {
        name: {f"within_{units}": round(float(np.mean(e <= units)), 6) for units in WITHIN}
        for name, e in errors.items()
    }


def write_plots(actual: np.ndarray, outputs: dict, encoding: Encoding, folder, figures) -> None:
    """The reliability table of each model as <folder>/<model>.csv; regression: also the residuals figure in
    `figures`."""
    if encoding.is_classification:
        index = {name: i for i, name in enumerate(encoding.classes)}
        classes = np.array([index[a] for a in actual], dtype=int)
        for name, p in outputs.items():
            files.write_csv(folder / f"{name}.csv", reliability(p, classes))
        return
    for name, p in outputs.items():
        files.write_csv(folder / f"{name}.csv", regression_reliability(p, actual))
    residuals_figure(actual, outputs, figures / "residuals_vs_actual.png")


def residuals_figure(actual: np.ndarray, predictions: dict, path) -> None:
    """Residual (predicted - actual) against the actual target, one panel per model, with the 5- and 10-unit bands."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(predictions), figsize=(6 * len(predictions), 5), squeeze=False, sharey=True)
    for ax, (name, predicted) in zip(axes[0], predictions.items()):
        residual = np.asarray(predicted, dtype=np.float64).reshape(-1) - actual
        for units, shade in zip(WITHIN, ("0.85", "0.93")):
            ax.axhspan(-units, units, color=shade, zorder=0)
        ax.scatter(actual, residual, s=8, alpha=0.5)
        ax.axhline(0, color="black", linewidth=1)
        ax.set(
            xlabel="actual target",
            ylabel="predicted - actual",
            title=f"{name}: {np.mean(np.abs(residual) <= WITHIN[0]):.0%} within {WITHIN[0]}, "
            f"{np.mean(np.abs(residual) <= WITHIN[1]):.0%} within {WITHIN[1]}",
        )
    fig.suptitle("Residuals against the target (test set); shaded: within 5 and 10 units")
    evaluation.save_figure(fig, path, top=0.93)


def review_lines(summary: dict, encoding: Encoding) -> list[str]:
    """The review's note on calibration (its figures are in the metrics table)."""
    figure = Path(os.path.relpath(paths.FIGURES / "residuals_vs_actual.png", paths.REVIEW.parent)).as_posix()
    if encoding.is_classification:
        return [
            "## Calibration",
            "",
            f"ece: the expected calibration error of the top probability ({BINS} equal-width bins; 0 is calibrated): "
            f"head only {summary['head']['ece']:.3f}, fine-tuned {summary['fine_tuned']['ece']:.3f}. "
            "The reliability diagram (accuracy against confidence per bin) is the `calibration` plot of `dvc plots`.",
        ]
    return [
        "## Within 5 and 10 units",
        "",
        f"Test images predicted within 5 / 10 units of their target: head only {summary['head']['within_5']:.1%} / "
        f"{summary['head']['within_10']:.1%}, fine-tuned {summary['fine_tuned']['within_5']:.1%} / "
        f"{summary['fine_tuned']['within_10']:.1%}.",
        "",
        f"![Residuals against the target]({figure})",
    ]
