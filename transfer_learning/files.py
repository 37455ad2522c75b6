"""Writing outputs atomically (temp file, then rename) and reading arrays without pickle.

A stage killed half-way (SIGINT, SIGTERM or SIGKILL) leaves at most a `*.tmp` file, which no stage
reads and DVC ignores (.dvcignore), never a truncated output that a later stage could read. Each write
has its own temporary file (`<name>.<random>.tmp`, created exclusively): a symbolic link planted at a
guessable name is never followed, and two writers of one output never share a file. The
temporary file is flushed to the disk (fsync) before the rename and the folder after it, so that
after a power loss an output DVC recorded as done is there in full, not empty. A full disk or a
read-only folder is a PipelineError naming the file, not a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
from pathlib import Path
from typing import Iterator

import numpy as np

from transfer_learning.errors import OS_HINTS, PipelineError, os_error


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    # The temporary file's name, recorded before the file exists: Ctrl-C or SIGTERM (a KeyboardInterrupt, errors.py)
    # can land between any two bytecodes, the moment temporary_sibling's os.open returns included, and the file must
    # be removed then too (a stage interrupted while opening its second output left the first one's partner).
    made: list[Path] = []
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(path, made)
        yield tmp
        to_disk(tmp)  # the bytes first: a rename can reach the disk before the data it names
        os.replace(tmp, path)
        to_disk(path.parent)  # then the rename itself
    except OSError as exc:
        # none made: making the folder failed
        if exc.errno in OS_HINTS and (not made or concerns(exc, path, made[-1])):
            raise os_error(exc, path) from None
        raise
    finally:
        for tmp in made:  # only the name this write drew: never a link someone else put there (unlink never follows)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def temporary_sibling(path: Path, made: list[Path] | None = None) -> Path:
    """Create a new empty file `<name>.<pid>-<random>.tmp` beside `path` and return its name, appended to `made` before
    it is created (atomic_path removes it whatever happens after); first remove the leftovers of writers of `path`
    that died (killed mid-write: their process id is gone), see remove_leftovers.

    O_CREAT|O_EXCL fails on any existing name, a symbolic link included (dangling or not), so a link planted in a
    shared folder is never written through; O_NOFOLLOW says the same again. A random part per write: two writers of
    one output (two `predict.py -o predictions.csv`) each fill their own file, and the last rename wins whole. Not
    tempfile.mkstemp: it creates the file with mode 0600, and outputs keep the usual mode (0666 less the umask).
    The name ends in `.tmp` so that .gitignore, .dvcignore and users still know a leftover for what it is.
    """
    made = [] if made is None else made
    remove_leftovers(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        made.append(tmp)
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:
            made.remove(tmp)
            continue  # taken (a leftover, another writer, or a planted link): draw another name
        return tmp
    raise PipelineError(
        f"cannot write {path}: no free temporary name beside it; remove the *.tmp files in {path.parent}"
    )


def remove_leftovers(path: Path) -> None:
    """Delete `<name>.<pid>-<random>.tmp` files beside `path` that a writer killed mid-write left (SIGKILL, a power
    cut): only regular files (never a link), of this user, whose process no longer runs. A live writer's file, another
    user's and anything else are left alone. (On a folder shared by several machines a writer on another machine looks
    dead here: write one output from one machine at a time.)"""
    pattern = re.compile(re.escape(path.name) + r"\.(\d+)-[0-9a-f]{8}\.tmp")
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            found = pattern.fullmatch(entry.name)
            if (
                not found
                or not entry.is_file(follow_symlinks=False)
                or entry.stat(follow_symlinks=False).st_uid != os.getuid()
            ):
                continue
            try:
                os.kill(int(found.group(1)), 0)
            except ProcessLookupError:  # gone: its file will never be renamed
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            except (PermissionError, OverflowError):  # alive under another user, or not a process id
                pass


def to_disk(path: Path) -> None:
    """fsync a file or folder: its contents (or, for a folder, its entries) survive a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # a file system or device without fsync
            raise
    finally:
        os.close(fd)


def concerns(exc: OSError, path: Path, tmp: Path) -> bool:
    """Whether an OSError is about writing `path` (not, say, about reading an input inside the block)."""
    if exc.filename is None:  # a failed write() or flush() on the temporary file
        return True
    name = Path(os.fsdecode(exc.filename))
    return name in (path, tmp) or name in path.parents


def write_json(path: Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_csv(path: Path, frame, float_format: str | None = "%.6g", escape_formulas: bool = False) -> None:
    """float_format=None writes floats in full (shortest repr that reads back the same number).

    escape_formulas: for tables people open in a spreadsheet (metrics, predictions), text from the data
    (class names) that a spreadsheet would run as a formula gets a leading `'` (see `spreadsheet_safe`).
    Never for the pipeline's own data files, which must read back exactly as written.
    """
    if escape_formulas:
        frame = frame.apply(lambda column: column.map(spreadsheet_safe) if column.dtype == object else column)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format=float_format, lineterminator="\n")


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def spreadsheet_safe(value):
    """Text starting with = + - @ (or a tab or CR) runs as a formula when a spreadsheet opens the CSV
    (`=HYPERLINK(...)`, `@SUM(...)`); a leading `'` makes it shown as written (OWASP's advice). Plain numbers (`-1`)
    stay as they are. The same class name is escaped the same way everywhere, so `dvc plots` still pairs actual and
    predicted."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def read_manifest(path: Path, task: str, columns: tuple[str, ...] | None = None):
    """The ingest manifest (only `columns` of it, those there, when given: each string column costs ~120 bytes an
    image); class labels stay text exactly as written (a class named NA or 1.0 is not a number), and so do the hashes
    (a hex digest of digits only is not a number either)."""
    import pandas as pd

    # a subject named NA is a subject, not a missing value
    hashes = {"pixels_sha256": str, "file_sha256": str, "group": str, "subject": str}
    label = {"label": str if task == "classification" else float}
    wanted = None if columns is None else (lambda column: column in columns)
    return pd.read_csv(path, dtype=label | hashes, keep_default_na=False, usecols=wanted)


def read_split(path: Path, manifest):
    """The split (train, val, test) of each row of `manifest`, read from split.csv (`path`) joined on the image's path,
    never by row position: a split.csv written for another manifest is an error, not a silent misassignment."""
    import pandas as pd

    split = pd.read_csv(path, dtype=str, keep_default_na=False).set_index("path")["split"]
    if split.index.has_duplicates:
        raise PipelineError(
            f"{path} lists {split.index[split.index.duplicated()][0]} twice; run `dvc repro` (split rewrites it)"
        )
    assigned = manifest["path"].map(split)
    if assigned.isna().any() or len(split) != len(manifest):
        missing = manifest["path"][assigned.isna()]
        example = f", e.g. {missing.iloc[0]} has no split" if len(missing) else ""
        raise PipelineError(
            f"{path} lists {len(split)} images and the manifest {len(manifest)}{example}: they come from two runs; "
            "run `dvc repro` (split reruns on the current manifest)"
        )
    return assigned


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """Memory-mapped when `mmap`, so reading a big array costs a batch of RAM, not the whole file.

    Never unpickles: an array of Python objects (which would run code from the file) is refused.
    """
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Python objects" in str(exc):
            raise PipelineError(
                f"{path} holds Python objects, which are never unpickled; rerun the stage that writes it"
            ) from None
        raise PipelineError(f"{path} is not a valid .npy array ({exc}); rerun the stage that writes it") from None


@contextlib.contextmanager
def npy_writer(path: Path, shape: tuple, dtype) -> Iterator[np.ndarray]:
    """A writable memory-mapped .npy, filled batch by batch; published atomically when complete.

    The disk space is reserved up front: a full disk is an error here, not a crash (SIGBUS) when a
    page of the mapping is written later.
    """
    with atomic_path(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        reserve(tmp)
        yield array
        array.flush()
        del array


def reserve(file: Path) -> None:
    with open(file, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.ENODEV, errno.ESPIPE):
                raise
