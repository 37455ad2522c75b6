"""Targets <-> numbers: class names to indices, or a numeric target standardized with training statistics.

The encoding is saved as JSON (data/normalized/encoding.json, copied next to the model) and is the
only place later stages learn the class order or the target's mean and std.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from transfer_learning.errors import PipelineError
from transfer_learning.records import Encoding


def encoding_of(train_labels: pd.Series, task: str) -> Encoding:
    if task == "classification":
        return Encoding(task=task, classes=tuple(sorted(train_labels.astype(str).unique())))
    # math.fsum is exact: NumPy's SIMD sums (AVX-512 or AVX2, picked by CPU) would differ in the last bits
    values = train_labels.astype(float).tolist()
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
    return Encoding(task=task, mean=mean, std=std if std > 0 else 1.0)


def check_classes(labels: pd.Series, split: pd.Series, encoding: Encoding) -> None:
    """Every class of val and test must be a class of the training split: the model cannot predict another (and its
    index would not exist)."""
    if not encoding.is_classification:
        return
    for name in ("val", "test"):
        unseen = sorted(set(labels[split == name].astype(str)) - set(encoding.classes))
        if unseen:
            raise PipelineError(
                f"class {unseen[0]!r} has images in the {name} split but none in train"
                f"{f' (and {len(unseen) - 1} more)' if len(unseen) > 1 else ''}, so the model cannot learn it: "
                "add training images of it, or remove it from data.source"
            )


def encode(labels: pd.Series, encoding: Encoding) -> np.ndarray:
    if encoding.is_classification:
        index = {name: i for i, name in enumerate(encoding.classes)}
        encoded = labels.astype(str).map(index)
        if encoded.isna().any():  # check_classes first; never a silent -2147483648
            raise PipelineError(
                f"class {labels[encoded.isna()].iloc[0]!r} is not one of the training classes {encoding.classes}"
            )
        return encoded.to_numpy(dtype=np.int32)
    return ((labels.astype(float) - encoding.mean) / encoding.std).to_numpy(dtype=np.float32)


def decode(encoded: np.ndarray, encoding: Encoding) -> np.ndarray:
    """The inverse of encode: class indices -> names, standardized values -> the original unit."""
    if encoding.is_classification:
        return np.asarray(encoding.classes)[encoded]
    return np.asarray(encoded, dtype=np.float64).reshape(-1) * encoding.std + encoding.mean


def from_head(outputs: np.ndarray, encoding: Encoding) -> np.ndarray:
    """Head outputs (class probabilities, or the standardized target) -> class names or target values."""
    return decode(np.argmax(outputs, axis=-1) if encoding.is_classification else outputs, encoding)


def from_model(outputs: np.ndarray, encoding: Encoding) -> np.ndarray:
    """Outputs of the exported model, which already gives regression targets in their unit."""
    if encoding.is_classification:
        return from_head(outputs, encoding)
    return np.asarray(outputs, dtype=np.float64).reshape(-1)


def constant(train_targets: np.ndarray, encoding: Encoding):
    """The best constant prediction the training split gives (the baseline of the test metrics): its most frequent class
    (the first in class order on a tie), or its mean target."""
    if encoding.is_classification:
        return encoding.classes[int(np.bincount(train_targets, minlength=len(encoding.classes)).argmax())]
    return encoding.mean
