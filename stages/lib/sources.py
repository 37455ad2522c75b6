"""What `data.source` (a folder) can hold, listed as items (path, label) before any decoding.

- class folders (`data.csv` empty): `<source>/<class>/**/<image>`; images in nested folders belong
  to their class folder. Hidden files and folders (`.name`) are skipped. Links are followed only
  while they stay inside the source (a loop is skipped).
- a CSV manifest `<source>/<data.csv>`: an image-path column and a target column (paths relative to
  the source folder; absolute paths and paths leaving it are skipped).

The whole folder is a DVC dependency of ingest, so adding, removing, replacing or relabeling an
image (or editing the CSV) reruns ingest.

Anything that cannot be an item (hidden files, other extensions, links leaving the root, bad CSV
rows) is returned as skipped, with the reason, for the data report. Only a source that cannot
make any dataset (missing, empty, wrong CSV columns) is a PipelineError.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path


from lib.errors import PipelineError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Item:
    path: str                         # as shown in reports: relative to the source root
    label: str | float
    file: Path                        # the image file


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def list_source(source: str, csv: str, task: str, path_column: str, target_column: str) -> tuple[list[Item], list[Skipped]]:
    root = Path(source)
    if not root.exists():
        raise PipelineError(f"data.source {source} does not exist; give a folder of class folders, or the folder of a CSV (data.csv)")
    if not root.is_dir():
        hint = f"; for a CSV use data.source={root.parent} and data.csv={root.name}" if root.suffix.lower() == ".csv" else ""
        raise PipelineError(f"data.source {source} is not a folder{hint}")
    if csv:
        return csv_manifest(root / csv, task, path_column, target_column)
    if task == "regression":
        raise PipelineError(f"data.task=regression needs a CSV of image paths and numeric targets: set data.csv (a file in {source})")
    return class_folders(root)


def class_folders(root: Path) -> tuple[list[Item], list[Skipped]]:
    """Every file under <root>/<class>/ (nested folders included) as an item of that class, or skipped with the reason.

    Hidden files and folders are skipped; links are followed only while they stay inside the root.
    """
    real_root = root.resolve()
    items, skipped, classes = [], [], []
    for entry in listing(root, root, skipped):
        reason = unusable_entry(entry, real_root)
        if reason:
            skipped.append(Skipped(shown(entry.name), reason))
        elif entry.is_dir():
            classes.append(entry)
        else:
            skipped.append(Skipped(entry.name, "file outside any class folder"))
    if not classes:
        raise PipelineError(f"data.source {root} has no class folders; put the images of each class in {root}/<class name>/")
    for class_dir in classes:
        files = walk(class_dir, root, real_root, {class_dir.resolve()}, skipped)
        if not files:
            skipped.append(Skipped(f"{class_dir.name}/", "no image file in this class folder; the class is left out"))
        items += [Item(path=file.relative_to(root).as_posix(), label=class_dir.name, file=file) for file in files]
    return sorted(items, key=lambda item: Path(item.path).parts), skipped


def new_images(source: Path, path_column: str) -> tuple[list[Item], list[Skipped]]:
    """Images to predict (predict.py), without labels: every image file under a folder (nested folders included), or
    those a CSV file lists in `path_column` (relative to the CSV's folder). Unusable entries are skipped with the reason,
    exactly as in data.source."""
    root = Path(source)
    if root.is_file() and root.suffix.lower() == ".csv":
        items, skipped = csv_manifest(root, "classification", path_column, path_column)  # no target: the path stands in
        return [Item(item.path, None, item.file) for item in items], skipped
    if not root.is_dir():
        raise PipelineError(f"{source} is neither a folder of images nor a .csv file listing them" if root.exists() else
                            f"{source} does not exist")
    skipped = []
    files = walk(root, root, root.resolve(), {root.resolve()}, skipped)
    items = [Item(path=file.relative_to(root).as_posix(), label=None, file=file) for file in files]
    return sorted(items, key=lambda item: Path(item.path).parts), skipped


def walk(folder: Path, root: Path, real_root: Path, parents: set, skipped: list) -> list[Path]:
    """Image files under `folder`; everything else goes to `skipped`. `parents` (resolved) stops link loops."""
    files = []
    for entry in listing(folder, root, skipped):
        rel = shown(entry.relative_to(root).as_posix())
        reason = unusable_entry(entry, real_root)
        if reason:
            skipped.append(Skipped(rel, reason))
        elif entry.is_dir():
            target = entry.resolve()
            if target in parents:
                skipped.append(Skipped(rel, "link to a folder that contains it (a loop)"))
            else:
                files += walk(entry, root, real_root, parents | {target}, skipped)
        else:
            reason = unusable_file(entry)
            if reason:
                skipped.append(Skipped(rel, reason))
            else:
                files.append(entry)
    return files


def listing(folder: Path, root: Path, skipped: list) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        skipped.append(Skipped(f"{folder.relative_to(root).as_posix()}/", f"cannot read folder ({exc.strerror})"))
        return []


def unusable_entry(entry: Path, real_root: Path) -> str | None:
    """Why a folder entry is not even looked at: hidden, a name reports cannot hold, or a link leaving the root."""
    if not utf8(entry.name):
        return "the name is not valid UTF-8; rename it"
    if entry.name.startswith("."):
        return "hidden folder" if entry.is_dir() else "hidden file"
    try:
        target = entry.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return "broken link (a loop)"
    if not target.is_relative_to(real_root):
        return "link points outside data.source"
    if entry.is_symlink() and not entry.exists():
        return "broken link"
    return None


def utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 come in as surrogates
        return False
    return True


def shown(path: str) -> str:
    """A path as the report can write it (invalid bytes become U+FFFD)."""
    return path if utf8(path) else path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def unusable_file(file: Path) -> str | None:
    if not file.is_file():
        return "not a regular file"
    if file.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file extension ({', '.join(sorted(IMAGE_EXTENSIONS))})"
    return None


def csv_manifest(csv_path: Path, task: str, path_column: str, target_column: str) -> tuple[list[Item], list[Skipped]]:
    """Rows of (image path relative to the CSV's folder, data.source, and target). Paths may not leave that folder."""
    import pandas as pd

    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PipelineError(f"data.source {csv_path}: not a readable CSV ({one_line(exc)})") from None
    except FileNotFoundError:
        raise PipelineError(f"data.csv {csv_path.name} is not a file in data.source {csv_path.parent}") from None
    except OSError as exc:
        raise PipelineError(f"data.source {csv_path}: cannot read it ({exc.strerror})") from None
    table.columns = [str(c).strip() for c in table.columns]
    for param, column in (("data.path_column", path_column), ("data.target_column", target_column)):
        if column not in table.columns:
            raise PipelineError(f"{csv_path} has no column {column!r} ({param}); its columns are {', '.join(table.columns)}")
    if table.empty:
        raise PipelineError(f"data.source {csv_path} has no rows; add one row per image")
    check_numeric(table[target_column], task, csv_path, target_column)
    real_root = csv_path.parent.resolve()
    items, skipped, first_row = [], [], {}
    for row, (rel, raw_target) in enumerate(zip(table[path_column], table[target_column]), start=2):
        rel = rel.strip().replace("\\", "/")
        shown = rel or f"{csv_path.name}:{row}"
        target = parse_target(raw_target, task)
        if target is None:
            skipped.append(Skipped(shown, f"row {row}: target {raw_target!r} is not a finite number" if raw_target.strip() else f"row {row}: target is missing"))
            continue
        reason = unusable_row(rel, csv_path.parent, real_root)
        if not reason and rel in first_row:
            reason = f"the same path as row {first_row[rel]}"
        if reason:
            skipped.append(Skipped(shown, f"row {row}: {reason}"))
        else:
            first_row[rel] = row
            items.append(Item(path=Path(rel).as_posix(), label=target, file=csv_path.parent / rel))
    return items, skipped


def unusable_row(rel: str, root: Path, real_root: Path) -> str | None:
    if not rel:
        return "image path is missing"
    try:
        if Path(rel).is_absolute():
            return "absolute path; paths must be relative to the CSV's folder"
        file = root / rel
        if not file.resolve().is_relative_to(real_root):
            return "path escapes the CSV's folder"
        if not file.exists():
            return "file not found"
    except (OSError, RuntimeError, ValueError) as exc:  # a link loop, a NUL byte, a name too long
        return f"unusable path ({one_line(exc)})"
    return unusable_file(file)


def check_numeric(column, task: str, csv_path: Path, target_column: str) -> None:
    """A regression target column with text in every row is the wrong column, not a few bad rows."""
    if task != "regression":
        return
    filled = [(row, value) for row, value in enumerate(column, start=2) if value.strip()]
    if filled and all(parse_target(value, task) is None for _, value in filled):
        row, value = filled[0]
        raise PipelineError(f"{csv_path}: column {target_column!r} (data.target_column) has no numbers (row {row}: {value!r}); "
                            "data.task=regression needs a numeric target, or set data.task=classification")


def one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


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
