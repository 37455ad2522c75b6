"""Writing outputs atomically (temp file, then rename) and reading arrays without pickle.

A stage killed half-way leaves at most a `*.tmp` file, never a truncated output that a later
stage could read.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from lib.errors import PipelineError


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
            raise PipelineError(f"cannot write {path}: {exc.strerror}; free disk space or fix the folder's permissions") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def write_csv(path: Path, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """Memory-mapped when `mmap`, so reading a big array costs a batch of RAM, not the whole file."""
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


@contextlib.contextmanager
def npy_writer(path: Path, shape: tuple, dtype) -> Iterator[np.ndarray]:
    """A writable memory-mapped .npy, filled batch by batch; published atomically when complete."""
    with atomic_path(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        yield array
        array.flush()
        del array
