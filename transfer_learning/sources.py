"""What `data.source` (a folder) can hold, listed as items (path, label) before any decoding.

- class folders (`data.csv` empty): `<source>/<class>/**/<image>`; images in nested folders belong
  to their class folder. Hidden files and folders (`.name`) are skipped. Links are followed only
  while they stay inside the source. Each real folder is listed once per class (a link to a folder
  already listed, a loop or two links to one folder, is skipped), iteratively (any depth).
- a CSV manifest `<source>/<data.csv>`: an image-path column and a target column (paths relative to
  the source folder; absolute paths and paths leaving it are skipped). Rows are numbered as a
  spreadsheet shows them (the header is row 1, blank lines count). A file listed twice (as `a.png`
  and `./a.png`, or through a link) is one item; listed with two different targets, every row of it
  is skipped (conflicting labels). Regression targets are plain decimal numbers (digits 0-9) within
  ±MAX_TARGET.

Class names (folder names and CSV labels) are compared in Unicode NFC form: `café` typed with a
combining accent and with a precomposed `é` look alike and are one class.

The whole folder is a DVC dependency of ingest, so adding, removing, replacing or relabeling an
image (or editing the CSV) reruns ingest.

Anything that cannot be an item (hidden files, other extensions, links leaving the root, bad CSV
rows) is returned as skipped, with the reason, for the data report. Only a source that cannot
make any dataset (missing, empty, wrong CSV columns) is a PipelineError.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transfer_learning import class_folders, csv_source
from transfer_learning.entries import Item, Skipped
from transfer_learning.errors import PipelineError


def list_source(
    source: str,
    csv: str,
    task: str,
    path_column: str,
    target_column: str,
    group_column: str | None = None,
    filename_groups: bool = False,
) -> tuple[list[Item], list[Skipped]]:
    """group_column (CSV) or filename_groups: each item's subject (split.group_column, split.filename_groups)."""
    items, skipped = listed(source, csv, task, path_column, target_column, group_column)
    if filename_groups:
        items = [dataclasses.replace(item, subject=filename_subject(item.path)) for item in items]
    return items, skipped


def filename_subject(path: str) -> str:
    """split.filename_groups: the file name up to its first `_` (`pneumonia/person7_bacteria_2.jpeg` -> `person7`,
    whatever its folder, so one person's images in two class folders are one subject); a name without `_` (or
    starting with it) is a subject of its own, its whole path."""
    prefix = Path(path).name.partition("_")[0]
    return prefix if prefix and "_" in Path(path).name else path


def listed(
    source: str, csv: str, task: str, path_column: str, target_column: str, group_column: str | None
) -> tuple[list[Item], list[Skipped]]:
    root = Path(source)
    if not root.exists():
        raise PipelineError(
            f"data.source {source} does not exist; give a folder of class folders, or the folder of a CSV (data.csv)"
        )
    if not root.is_dir():
        hint = (
            f"; for a CSV use data.source={root.parent} and data.csv={root.name}"
            if root.suffix.lower() == ".csv"
            else ""
        )
        raise PipelineError(f"data.source {source} is not a folder{hint}")
    if csv:
        return csv_source.csv_manifest(root / csv, task, path_column, target_column, group_column=group_column)
    if task == "regression":
        raise PipelineError(
            f"data.task=regression needs a CSV of image paths and numeric targets: set data.csv (a file in {source})"
        )
    return class_folders.class_folders(root)
