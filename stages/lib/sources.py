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

import csv
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from lib.errors import PipelineError, one_line

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# A regression target as people write numbers in a CSV: ASCII digits, a sign, a point, an exponent. Python's float()
# would also take `1_000`, `inf`, `nan` and digits of other scripts (`١٢`).
PLAIN_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
# Larger targets would overflow the training statistics (the square of 1e200 is inf) and the float32 model output.
MAX_TARGET = 1e30


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
    found = {class_dir: walk(class_dir, root, real_root, skipped) for class_dir in classes}
    labels = {class_dir: unicodedata.normalize("NFC", class_dir.name) for class_dir in classes}  # look-alike names: one class
    for class_dir, files in found.items():
        items += [Item(path=file.relative_to(root).as_posix(), label=labels[class_dir], file=file) for file in files]
        if not any(found[other] for other in classes if labels[other] == labels[class_dir]):
            skipped.append(Skipped(f"{class_dir.name}/", "no image file in this class folder; the class is left out"))
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
    files = walk(root, root, root.resolve(), skipped)
    items = [Item(path=file.relative_to(root).as_posix(), label=None, file=file) for file in files]
    return sorted(items, key=lambda item: Path(item.path).parts), skipped


def walk(class_dir: Path, root: Path, real_root: Path, skipped: list) -> list[Path]:
    """Image files under `class_dir`; everything else goes to `skipped`.

    Each real folder is listed once: first every folder reached without a link, then those reached through links,
    where a link to a folder already listed (a loop, or a second link to one folder) is skipped. So n levels of two
    links each cost n folders, not 2^n, and a real folder is never skipped in favour of a link to it. Iterative:
    no recursion limit, however deep the folders.
    """
    files = []
    listed = {class_dir.resolve(): class_dir}  # real folder -> the path it is listed under
    direct, linked = [(class_dir, class_dir.resolve())], []  # linked: reached through a link, in the order found
    while direct or linked:
        through_link = not direct
        folder, real = direct.pop() if direct else (linked.pop(0), None)
        if through_link:
            real = folder.resolve()
            if real in listed:
                loop = folder.parent.resolve().is_relative_to(real)
                skipped.append(Skipped(rel_shown(folder, root), "link to a folder that contains it (a loop)" if loop
                                       else f"link to a folder already listed as {rel_shown(listed[real], root)}/"))
                continue
            listed[real] = folder
        for entry in listing(folder, root, skipped):
            reason = unusable_entry(entry, real_root)
            if reason:
                skipped.append(Skipped(rel_shown(entry, root), reason))
            elif entry.is_dir():
                if through_link or entry.is_symlink():
                    linked.append(entry)
                else:
                    listed[real / entry.name] = entry
                    direct.append((entry, real / entry.name))
            else:
                reason = unusable_file(entry)
                if reason:
                    skipped.append(Skipped(rel_shown(entry, root), reason))
                else:
                    files.append(entry)
    return files


def rel_shown(path: Path, root: Path) -> str:
    return shown(path.relative_to(root).as_posix())


def listing(folder: Path, root: Path, skipped: list) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        skipped.append(Skipped(f"{folder.relative_to(root).as_posix()}/", f"cannot read folder ({exc.strerror})"))
        return []


def unusable_entry(entry: Path, real_root: Path) -> str | None:
    """Why a folder entry is not even looked at: hidden, a name reports cannot hold, or a link leaving the root.

    Only links can leave the root: an entry that is not one lies in its folder, which is inside the root."""
    if not utf8(entry.name):
        return "the name is not valid UTF-8; rename it"
    if entry.name.startswith("."):
        return "hidden folder" if entry.is_dir() else "hidden file"
    if not entry.is_symlink():
        return None
    try:
        target = entry.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return "broken link (a loop)"
    if not target.is_relative_to(real_root):
        return "link points outside data.source"
    if not entry.exists():
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
    header, rows = csv_rows(csv_path)
    at = {column: column_index(header, column, param, csv_path)
          for param, column in (("data.path_column", path_column), ("data.target_column", target_column))}
    if not any(rows.values()):
        raise PipelineError(f"data.source {csv_path} has no rows; add one row per image")
    check_numeric({row: value(fields, at[target_column]) for row, fields in rows.items() if fields}, task, csv_path, target_column)
    real_root = csv_path.parent.resolve()
    rejected, listed = [], {}  # rejected: (row, Skipped); listed: real file -> its rows, [(row, path as written, target)]
    for row, fields in rows.items():
        if not fields:  # a blank line: no row to report
            continue
        rel = value(fields, at[path_column]).replace("\\", "/")
        shown = rel or f"{csv_path.name}:{row}"
        if any(extra.strip() for extra in fields[len(header):]):
            rejected.append((row, Skipped(shown, f"row {row}: {len(fields)} values but the header names {len(header)} columns; "
                                                 "quote a value that holds a comma")))
            continue
        try:
            target = parse_target(value(fields, at[target_column]), task)
        except ValueError as exc:
            rejected.append((row, Skipped(shown, f"row {row}: {exc}")))
            continue
        reason, real_file = usable_row(rel, csv_path.parent, real_root)
        if reason:
            rejected.append((row, Skipped(shown, f"row {row}: {reason}")))
        else:
            listed.setdefault(real_file, []).append((row, rel, target))
    items = []
    kind = "label" if task == "classification" else "target"
    for listings in listed.values():  # in the order of their first row
        (first, rel, target), others = listings[0], listings[1:]
        conflict = next(((row, other) for row, _, other in others if other != target), None)
        if conflict:  # every row of a file listed with two targets is skipped: neither can be trusted
            for row, path, mine in listings:
                row_other, other = conflict if mine == target else (first, target)
                rejected.append((row, Skipped(Path(path).as_posix(), f"row {row}: the same file has the {kind} {other!r} in row {row_other}; "
                                                                     f"a file with conflicting {kind}s is left out")))
            continue
        items.append(Item(path=Path(rel).as_posix(), label=target, file=csv_path.parent / rel))
        rejected += [(row, Skipped(Path(path).as_posix(), f"row {row}: the same file as row {first}")) for row, path, _ in others]
    return items, [skip for _, skip in sorted(rejected, key=lambda pair: pair[0])]


def csv_rows(csv_path: Path) -> tuple[list[str], dict[int, list[str]]]:
    """-> (header, {row number: fields}). Rows are numbered as a spreadsheet shows them: the header is row 1 and blank
    lines count (they come back as []). No column becomes an index and no repeated header name is renamed, as pandas does."""
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
        raise PipelineError(f"data.source {csv_path}: not a readable CSV (the file is empty; its first line names the columns)")
    header = [unicodedata.normalize("NFC", name.strip()) for name in records[0]]
    return header, dict(enumerate(records[1:], start=2))


def column_index(header: list[str], column: str, param: str, csv_path: Path) -> int:
    column = unicodedata.normalize("NFC", column)
    found = [i for i, name in enumerate(header) if name == column]
    if not found:
        raise PipelineError(f"{csv_path} has no column {column!r} ({param}); its columns are {', '.join(name for name in header if name)}")
    if len(found) > 1:
        raise PipelineError(f"{csv_path}: the header names column {column!r} ({param}) {len(found)} times "
                            f"(columns {', '.join(str(i + 1) for i in found)}); rename all but one")
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
        raise PipelineError(f"{csv_path}: column {target_column!r} (data.target_column) has no numbers (row {row}: {raw!r}); "
                            "data.task=regression needs a numeric target, or set data.task=classification")


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
