"""What `data.source` can be, listed as items (path, label) before any decoding.

- `builtin:digits`: scikit-learn's bundled 8x8 handwritten digits (no download).
- a folder of class folders: `<root>/<class>/**/<image>`; nested folders belong to their class.
- a CSV manifest: an image-path column and a target column (paths relative to the CSV).

Anything that cannot be an item (hidden files, other extensions, links leaving the root, bad CSV
rows) is returned as skipped, with the reason, for the data report.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib.errors import PipelineError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Item:
    path: str                         # as shown in reports: relative to the source root
    label: str | float
    file: Path | None = None          # the image file, or None for built-in pixels
    pixels: np.ndarray | None = None  # built-in data only


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def list_source(source: str, task: str, path_column: str, target_column: str) -> tuple[list[Item], list[Skipped]]:
    if source == "builtin:digits":
        return builtin_digits(), []
    if source.startswith("builtin:"):
        raise PipelineError(f"data.source {source!r} is not a built-in dataset; the only one is builtin:digits")
    root = Path(source).expanduser()
    if not root.exists():
        raise PipelineError(f"data.source {source} does not exist; give a folder of class folders or a CSV file")
    if root.is_dir():
        if task == "regression":
            raise PipelineError(f"data.task=regression needs a CSV manifest with a numeric column; data.source {source} is a folder")
        return class_folders(root)
    if root.suffix.lower() == ".csv":
        return csv_manifest(root, task, path_column, target_column)
    raise PipelineError(f"data.source {source} is neither a folder nor a .csv file")


def builtin_digits() -> list[Item]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return [
        Item(path=f"builtin:digits/{i:04d}", label=str(int(target)), pixels=np.repeat(image[:, :, None], 3, axis=2))
        for i, (image, target) in enumerate(zip(gray, digits.target))
    ]


def class_folders(root: Path) -> tuple[list[Item], list[Skipped]]:
    items, skipped = [], []
    real_root = root.resolve()
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for entry in sorted(root.iterdir()):
        if entry.is_file():
            skipped.append(Skipped(entry.name, "file outside any class folder"))
    for class_dir in classes:
        for file in sorted(class_dir.rglob("*")):
            rel = file.relative_to(root).as_posix()
            if any(part.startswith(".") for part in file.relative_to(root).parts):
                if file.is_file():
                    skipped.append(Skipped(rel, "hidden file"))
                continue
            if file.is_dir():
                continue
            reason = unusable_path(file, real_root)
            if reason:
                skipped.append(Skipped(rel, reason))
            else:
                items.append(Item(path=rel, label=class_dir.name, file=file))
    return items, skipped


def unusable_path(file: Path, real_root: Path) -> str | None:
    if not file.resolve().is_relative_to(real_root):
        return "link points outside data.source"
    if not file.is_file():
        return "not a regular file"
    if file.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file extension ({', '.join(sorted(IMAGE_EXTENSIONS))})"
    return None


def csv_manifest(csv_path: Path, task: str, path_column: str, target_column: str) -> tuple[list[Item], list[Skipped]]:
    import pandas as pd

    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PipelineError(f"data.source {csv_path}: not a readable CSV ({exc})") from None
    for param, column in (("data.path_column", path_column), ("data.target_column", target_column)):
        if column not in table.columns:
            raise PipelineError(f"{csv_path} has no column {column!r} ({param}); its columns are {', '.join(table.columns)}")
    root = csv_path.parent
    real_root = root.resolve()
    items, skipped = [], []
    for row, (rel, raw_target) in enumerate(zip(table[path_column], table[target_column]), start=2):
        shown = rel or f"{csv_path.name}:{row}"
        target = parse_target(raw_target, task)
        if target is None:
            skipped.append(Skipped(shown, f"row {row}: target {raw_target!r} is not a finite number" if raw_target.strip() else f"row {row}: target is missing"))
            continue
        if not rel.strip():
            skipped.append(Skipped(shown, f"row {row}: image path is missing"))
            continue
        file = root / rel
        if Path(rel).is_absolute() or not file.resolve().is_relative_to(real_root):
            reason = "path escapes the CSV's folder"
        elif not file.exists():
            reason = "file not found"
        else:
            reason = unusable_path(file, real_root)
        if reason:
            skipped.append(Skipped(shown, f"row {row}: {reason}"))
        else:
            items.append(Item(path=Path(rel).as_posix(), label=target, file=file))
    return items, skipped


def parse_target(raw: str, task: str) -> str | float | None:
    """Classification keeps the label text; regression needs a finite number (None otherwise)."""
    raw = raw.strip()
    if not raw:
        return None
    if task == "classification":
        return raw
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
