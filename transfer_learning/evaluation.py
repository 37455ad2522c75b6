"""Test metrics, breakdown tables and figures for one task (scikit-learn and matplotlib, no TensorFlow).

`predictions` maps a model name (head, fine_tuned) to its test predictions in the original unit
(class names, or target values). Class names come from the data and are drawn literally: a `$`
in one would otherwise start matplotlib math text (and `a$^$b` would crash the figure).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from transfer_learning.records import Encoding  # noqa: E402

plt.rcParams["svg.hashsalt"] = "0"  # no random ids in figures


def classification_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict:
    """balanced_accuracy: the mean of the per-class recalls, each class counted once whatever its size, so a minority
    class the model misses lowers it as much as a large one: recall_macro under its usual name (the two differ only
    when a model predicts a class absent from the test set, which recall_macro averages in as 0)."""
    precision, recall, f1, _ = skm.precision_recall_fscore_support(actual, predicted, average="macro", zero_division=0)
    return {
        "accuracy": skm.accuracy_score(actual, predicted),
        "balanced_accuracy": balanced_accuracy(actual, predicted),
        "precision_macro": precision,
        "recall_macro": recall,
        "f1_macro": f1,
    }


def balanced_accuracy(actual: np.ndarray, predicted: np.ndarray) -> float:
    """scikit-learn's balanced_accuracy_score without its warning about predicted classes absent from `actual`."""
    actual, predicted = np.asarray(actual), np.asarray(predicted)
    return float(np.mean([np.mean(predicted[actual == c] == c) for c in np.unique(actual)]))


def regression_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict:
    return {
        "mae": skm.mean_absolute_error(actual, predicted),
        "rmse": float(np.sqrt(skm.mean_squared_error(actual, predicted))),
        "r2": skm.r2_score(actual, predicted),
    }


def summary(actual: np.ndarray, predictions: dict, encoding: Encoding, baseline) -> dict:
    """{'head': {...}, 'fine_tuned': {...}, 'baseline': {...}, 'test_images': n}. The baseline always predicts
    `baseline` (targets.constant: the most frequent training class, or the training mean)."""
    score = classification_metrics if encoding.is_classification else regression_metrics
    result = {name: score(actual, predicted) for name, predicted in predictions.items()}
    result["baseline"] = score(actual, np.full(len(actual), baseline))
    result["test_images"] = len(actual)
    return rounded(result)


def rounded(value):
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return round(float(value), 6) if isinstance(value, (float, np.floating)) else value


def target_ranges(actual: np.ndarray, n: int = 5) -> pd.Series:
    """Quantile ranges of the target ('[1, 12)', ...), for residuals by target range. Edges are written with 4
    significant digits, or as many more as it takes to keep them apart (10000-10004 in five bins: 10000, 10001, ...,
    not five rows of '[1e+04, 1e+04)' whose figures would merge in the breakdown)."""
    edges = np.unique(np.quantile(actual, np.linspace(0, 1, n + 1)))
    digits = next((d for d in range(4, 18) if len({f"{e:.{d}g}" for e in edges}) == len(edges)), 17)
    bins = np.clip(np.searchsorted(edges, actual, side="right") - 1, 0, len(edges) - 2)
    return pd.Series(
        [f"[{edges[b]:.{digits}g}, {edges[b + 1]:.{digits}g}{']' if b == len(edges) - 2 else ')'}" for b in bins]
    )


def breakdown(actual: np.ndarray, predictions: dict, encoding: Encoding) -> pd.DataFrame:
    """Per class (precision, recall, F1, support) or per target range (MAE, mean residual), per model."""
    frames = []
    for name, predicted in predictions.items():
        if encoding.is_classification:
            classes = encoding.classes
            p, r, f, s = skm.precision_recall_fscore_support(actual, predicted, labels=classes, zero_division=0)
            frame = pd.DataFrame({"model": name, "class": classes, "precision": p, "recall": r, "f1": f, "support": s})
        else:
            residual = pd.Series(predicted - actual)
            grouped = residual.groupby(target_ranges(actual), sort=False)
            frame = (
                pd.DataFrame(
                    {
                        "model": name,
                        "mae": grouped.apply(lambda r: r.abs().mean()),
                        "mean_residual": grouped.mean(),
                        "count": grouped.size(),
                    }
                )
                .rename_axis("target_range")
                .reset_index()
            )
            frame = frame.sort_values("target_range", key=lambda s: s.str.slice(1).str.split(",").str[0].astype(float))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def confusion_figure(actual, predictions: dict, classes: list[str], path: Path) -> None:
    fig, axes = plt.subplots(1, len(predictions), figsize=(6 * len(predictions), 5.5), squeeze=False)
    for ax, (name, predicted) in zip(axes[0], predictions.items()):
        skm.ConfusionMatrixDisplay.from_predictions(
            actual,
            predicted,
            labels=classes,
            display_labels=[literal(c) for c in classes],
            ax=ax,
            colorbar=False,
            xticks_rotation="vertical",
            include_values=len(classes) <= 20,
        )
        ax.set_title(f"{name}: accuracy {skm.accuracy_score(actual, predicted):.3f}")
    save_figure(fig, path)


def literal(text: str) -> str:
    """Text matplotlib draws as written: an unescaped `$` starts math text."""
    return str(text).replace("$", r"\$")


def regression_figures(actual, predictions: dict, folder: Path) -> None:
    fig, axes = plt.subplots(1, len(predictions), figsize=(6 * len(predictions), 5.5), squeeze=False)
    low, high = float(np.min(actual)), float(np.max(actual))
    for ax, (name, predicted) in zip(axes[0], predictions.items()):
        ax.scatter(actual, predicted, s=8, alpha=0.5)
        ax.plot([low, high], [low, high], color="black", linewidth=1, label="identity")
        ax.set(
            xlabel="actual", ylabel="predicted", title=f"{name}: MAE {skm.mean_absolute_error(actual, predicted):.3g}"
        )
        ax.legend()
    save_figure(fig, folder / "predicted_vs_actual.png")
    fig, ax = plt.subplots(figsize=(8, 5))
    ranges = target_ranges(actual)
    order = sorted(ranges.unique(), key=lambda s: float(s[1:].split(",")[0]))
    for offset, (name, predicted) in zip((-0.2, 0.2), predictions.items()):
        residual = pd.Series(predicted - actual)
        ax.boxplot(
            [residual[ranges == r] for r in order],
            positions=np.arange(len(order)) + offset,
            widths=0.35,
            showfliers=False,
            label=name,
            patch_artist=True,
            boxprops={"facecolor": "C0" if offset < 0 else "C1"},
        )
    ax.axhline(0, color="black", linewidth=1)
    ax.set_xticks(np.arange(len(order)), order)
    ax.set(xlabel="actual target range", ylabel="predicted - actual", title="Residuals by target range")
    ax.legend()
    save_figure(fig, folder / "residuals_by_range.png")


def image_grid(
    images: np.ndarray,
    captions: list[str],
    title: str,
    path: Path,
    columns: int = 4,
    cell: float = 3,
    row_height: float = 3.7,
    title_height: float = 0.6,
    fontsizes: tuple = (9, 13),
) -> None:
    """(n, H, W, 3) uint8 images in a grid, each with its caption (drawn literally: a `$` is a dollar), under `title`.
    No image: the title alone (e.g. no mistake to show). Sizes in inches: `cell` wide, `row_height` a row with its
    caption, the title on top; fontsizes: (caption, title)."""
    rows = max(1, -(-len(images) // columns))
    height = row_height * rows + title_height
    fig, axes = plt.subplots(rows, columns, figsize=(cell * columns, height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, text in zip(axes.flat, images, captions):
        ax.imshow(image)
        ax.set_title(text, fontsize=fontsizes[0], parse_math=False)
    fig.suptitle(title, fontsize=fontsizes[1], parse_math=False)
    save_figure(fig, path, top=1 - title_height / height)


def save_figure(fig, path: Path, top: float = 1.0) -> None:
    """The figure as a PNG without metadata (same bytes every run); `top`: the fraction of the height left to the
    subplots (a suptitle takes the rest)."""
    from transfer_learning import files

    with files.atomic_path(path) as tmp:
        fig.tight_layout(rect=(0, 0, 1, top))
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
