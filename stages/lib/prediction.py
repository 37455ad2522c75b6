"""Predictions of the saved model on new image files (predict.py), prepared exactly as the training images were.

Each file is decoded and resized by the functions ingest and normalize use (images.decode, images.square), with
the settings of the run that trained the model, which fine-tune stores beside it (models/encoding.json,
`input`). One CSV row per image: its path and the predicted class with its probability, then the next most
likely classes (top_2, top_2_probability, ...), or the predicted value in the target's unit (regression).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lib import files, images, sources
from lib.errors import PipelineError

PREPARATION = ("max_short_side", "max_megapixels", "image_size", "resize")


def model_card(path: Path, model) -> dict:
    """The model's encoding.json (class order or target unit, and image preparation), checked against the model."""
    try:
        encoding = files.read_json(path)
    except FileNotFoundError:
        raise PipelineError(f"{path} does not exist: fine-tune writes it beside the model (class order and image preparation); "
                            "give its place with --encoding") from None
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{path} is not a readable encoding.json ({' '.join(str(exc).split())})") from None
    preparation = encoding.get("input") if isinstance(encoding, dict) else None
    if not isinstance(preparation, dict) or set(PREPARATION) - set(preparation):
        raise PipelineError(f"{path} does not say how images are prepared for the model (its 'input'); "
                            "models trained before predict.py existed lack it: run `dvc repro` to rewrite it")
    if preparation["image_size"] != model.input_shape[1]:
        raise PipelineError(f"{path} is for {preparation['image_size']} px images, the model takes {model.input_shape[1]} px: "
                            "they come from two runs; use the encoding.json written with this model")
    if encoding["task"] == "classification" and len(encoding["classes"]) != model.output_shape[-1]:
        raise PipelineError(f"{path} names {len(encoding['classes'])} classes, the model has {model.output_shape[-1]} outputs: "
                            "they come from two runs; use the encoding.json written with this model")
    return encoding


def prepare(item: sources.Item, preparation: dict) -> tuple[np.ndarray | None, str | None]:
    """An image file -> (the model's input, None), or (None, why it is skipped), as ingest and normalize would."""
    try:
        pixels, _ = images.decode(item.file, preparation["max_short_side"], int(preparation["max_megapixels"] * 1e6))
    except OSError as exc:
        return None, f"cannot read file ({exc.strerror or exc})"
    except images.Unusable as exc:
        return None, str(exc)
    return images.square(pixels, preparation["image_size"], preparation["resize"]), None


def header(encoding: dict, top_k: int) -> list[str]:
    if encoding["task"] != "classification":
        return ["path", "predicted"]
    return ["path", "predicted", "probability"] + [f"top_{k}{suffix}" for k in range(2, top_k + 1) for suffix in ("", "_probability")]


def rows(paths: list[str], outputs: np.ndarray, encoding: dict, top_k: int) -> list[list[str]]:
    """CSV rows of one batch: the classes by probability (the first is the prediction; ties in class order), or the value."""
    paths = [files.spreadsheet_safe(path) for path in paths]  # file and class names: never spreadsheet formulas
    if encoding["task"] != "classification":
        return [[path, f"{value:.6g}"] for path, value in zip(paths, np.asarray(outputs, dtype=np.float64).reshape(-1))]
    classes = [files.spreadsheet_safe(name) for name in encoding["classes"]]
    ranked = np.argsort(-outputs, axis=-1, kind="stable")[:, :top_k]
    return [[path] + [cell for i in order for cell in (classes[i], f"{probabilities[i]:.6f}")]
            for path, probabilities, order in zip(paths, outputs, ranked)]
