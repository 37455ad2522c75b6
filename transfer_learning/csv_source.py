"""A CSV listing images (`<source>/<data.csv>`, or a list given to predict): an image-path column and, for training, a
target column.

Paths are relative to the CSV's folder; absolute paths and paths leaving it are skipped. Rows are numbered as a
spreadsheet shows them (the header is row 1, blank lines count). A file listed twice (as `a.png` and `./a.png`, or
through a link) is one item; listed with two different targets, every row of it is skipped (conflicting labels).
Regression targets are plain decimal numbers (digits 0-9) within ±MAX_TARGET. Class labels are compared in Unicode
NFC form, like class folder names.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from pathlib import Path

from transfer_learning.entries import Item, Skipped, unusable_file
from transfer_learning.errors import PipelineError, one_line

# A regression target as people write numbers in a CSV: ASCII digits, a sign, a point, an exponent. Python's float()
# would also take `1_000`, `inf`, `nan` and digits of other scripts (`١٢`).
PLAIN_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


# Larger targets would overflow the training statistics (the square of 1e200 is inf) and the float32 model output.
MAX_TARGET = 1e30


def csv_manifest(
    csv_path: Path,
    task: str,
    path_column: str,
    target_column: str | None,
    path_param: str = "data.path_column",
    group_column: str | None = None,
) -> tuple[list[Item], list[Skipped]]:
    """Rows of (image path relative to the CSV's folder, data.source, and target). Paths may not leave that folder.

    target_column None: a list of images without targets (predict's), every item's label None; `path_param` is what
    error messages call the path column's setting. group_column: each item's subject (split.group_column), which
    every listed image must have."""
    header, rows = csv_rows(csv_path)
    columns = ((path_param, path_column),) + (
        (("data.target_column", target_column),) if target_column is not None else ()
    )
    columns += (("split.group_column", group_column),) if group_column is not None else ()
    at = {column: column_index(header, column, param, csv_path) for param, column in columns}
    if not any(rows.values()):
        raise PipelineError(f"{csv_path} has no rows; add one row per image")
    if target_column is not None:
        check_numeric(
            {row: value(fields, at[target_column]) for row, fields in rows.items() if fields},
            task,
            csv_path,
            target_column,
        )
    real_root = csv_path.parent.resolve()
    # rejected: (row, Skipped); listed: real file -> its rows, [(row, path as written, target)]
    rejected, listed = [], {}
    for row, fields in rows.items():
        if not fields:  # a blank line: no row to report
            continue
        rel = value(fields, at[path_column]).replace("\\", "/")
        shown = rel or f"{csv_path.name}:{row}"
        if any(extra.strip() for extra in fields[len(header) :]):
            rejected.append(
                (
                    row,
                    Skipped(
                        shown,
                        f"row {row}: {len(fields)} values but the header names {len(header)} columns; "
                        "quote a value that holds a comma",
                    ),
                )
            )
            continue
        try:
            target = None if target_column is None else parse_target(value(fields, at[target_column]), task)
        except ValueError as exc:
            rejected.append((row, Skipped(shown, f"row {row}: {exc}")))
            continue
        reason, real_file = usable_row(rel, csv_path.parent, real_root)
        if reason:
            rejected.append((row, Skipped(shown, f"row {row}: {reason}")))
        else:
            subject = None if group_column is None else unicodedata.normalize("NFC", value(fields, at[group_column]))
            if group_column is not None and not subject:
                raise PipelineError(
                    f"{csv_path}: row {row} ({rel}) has no value in column {group_column!r} (split.group_column); "
                    "give every image its subject, or set split.group_column to null"
                )
            listed.setdefault(real_file, []).append((row, rel, target, subject))
    items = []
    kind = "label" if task == "classification" else "target"
    for listings in listed.values():  # in the order of their first row
        (first, rel, target, subject), others = listings[0], listings[1:]
        two = next(((row, other) for row, _, _, other in others if other != subject), None)
        if two:  # one file, two subjects: which split it belongs to is unknowable
            raise PipelineError(
                f"{csv_path}: rows {first} and {two[0]} list the same file {rel} with the subjects {subject!r} and "
                f"{two[1]!r} (split.group_column); give a file one subject"
            )
        conflict = next(((row, other) for row, _, other, _ in others if other != target), None)
        if conflict:  # every row of a file listed with two targets is skipped: neither can be trusted
            for row, path, mine, _ in listings:
                row_other, other = conflict if mine == target else (first, target)
                rejected.append(
                    (
                        row,
                        Skipped(
                            Path(path).as_posix(),
                            f"row {row}: the same file has the {kind} {other!r} in row {row_other}; "
                            f"a file with conflicting {kind}s is left out",
                        ),
                    )
                )
            continue
        items.append(Item(path=Path(rel).as_posix(), label=target, file=str(csv_path.parent / rel), subject=subject))
        rejected += [
            (row, Skipped(Path(path).as_posix(), f"row {row}: the same file as row {first}"))
            for row, path, _, _ in others
        ]
    return items, [skip for _, skip in sorted(rejected, key=lambda pair: pair[0])]


def csv_rows(csv_path: Path) -> tuple[list[str], dict[int, list[str]]]:
    """-> (header, {row number: fields}). Rows are numbered as a spreadsheet shows them: the header is row 1 and blank
    lines count (they come back as []). No column becomes an index and no repeated header name is renamed, as pandas
    does."""
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as f:
            records = list(csv.reader(f))
    except FileNotFoundError:
        raise PipelineError(f"data.csv {csv_path.name} is not a file in data.source {csv_path.parent}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise PipelineError(f"data.source {csv_path}: not a readable CSV ({one_line(exc)})") from None
    except OSError as exc:
        raise PipelineError(f"data.source {csv_path}: cannot read it ({exc.strerror})") from None
    if not records:
        raise PipelineError(
            f"data.source {csv_path}: not a readable CSV (the file is empty; its first line names the columns)"
        )
    header = [unicodedata.normalize("NFC", name.strip()) for name in records[0]]
    return header, dict(enumerate(records[1:], start=2))


def column_index(header: list[str], column: str, param: str, csv_path: Path) -> int:
    column = unicodedata.normalize("NFC", column)
    found = [i for i, name in enumerate(header) if name == column]
    if not found:
        raise PipelineError(
            f"{csv_path} has no column {column!r} ({param}); its columns are "
            f"{', '.join(name for name in header if name)}"
        )
    if len(found) > 1:
        raise PipelineError(
            f"{csv_path}: the header names column {column!r} ({param}) {len(found)} times "
            f"(columns {', '.join(str(i + 1) for i in found)}); rename all but one"
        )
    return found[0]


def value(fields: list[str], index: int) -> str:
    """A field, stripped; a short row misses its last fields."""
    return fields[index].strip() if index < len(fields) else ""


def usable_row(rel: str, root: Path, real_root: Path) -> tuple[str | None, Path | None]:
    """-> (why the path is unusable, None) or (None, the real file it names): `a.png`, `./a.png`, `imgs/../a.png`
    and a link to it all name one file."""
    if not rel:
        return "image path is missing", None
    try:
        if Path(rel).is_absolute():
            return "absolute path; paths must be relative to the CSV's folder", None
        file = root / rel
        real = file.resolve()
        if not real.is_relative_to(real_root):
            return "path escapes the CSV's folder", None
        if not file.exists():
            return "file not found", None
    except (OSError, RuntimeError, ValueError) as exc:  # a link loop, a NUL byte, a name too long
        return f"unusable path ({one_line(exc)})", None
    return unusable_file(file), real


def check_numeric(targets: dict[int, str], task: str, csv_path: Path, target_column: str) -> None:
    """A regression target column with text in every row is the wrong column, not a few bad rows."""
    if task != "regression":
        return
    filled = [(row, raw) for row, raw in targets.items() if raw]
    if filled and not any(PLAIN_NUMBER.fullmatch(raw) for _, raw in filled):
        row, raw = filled[0]
        raise PipelineError(
            f"{csv_path}: column {target_column!r} (data.target_column) has no numbers (row {row}: {raw!r}); "
            "data.task=regression needs a numeric target, or set data.task=classification"
        )


def parse_target(raw: str, task: str) -> str | float:
    """Classification: the label (Unicode NFC). Regression: a plain decimal number within ±MAX_TARGET.
    Raises ValueError with the reason the row is skipped."""
    raw = raw.strip()
    if not raw:
        raise ValueError("target is missing")
    if task == "classification":
        return unicodedata.normalize("NFC", raw)
    if not PLAIN_NUMBER.fullmatch(raw):
        raise ValueError(f"target {raw!r} is not a finite number written with digits 0-9 (like 12.5 or -3e2)")
    number = float(raw)
    if not abs(number) <= MAX_TARGET:
        raise ValueError(f"target {raw!r} is beyond ±{MAX_TARGET:g}; rescale the column (e.g. to other units)")
    return number
