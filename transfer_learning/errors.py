"""How a stage fails: one clear line on stderr and a non-zero exit, never a half-written output."""

from __future__ import annotations

import errno
import os
import signal
import sys
from typing import Callable


class PipelineError(Exception):
    """A problem the user can fix (bad input or params); the message says what and how."""


# What the user can do about a file-system error, by errno (disk full, read-only, permissions, in the way).
OS_HINTS = {
    errno.ENOSPC: "no space left on the device: free disk space",
    errno.EDQUOT: "disk quota exceeded: free space or raise the quota",
    errno.EFBIG: "file too large for this file system",
    errno.EROFS: "the file system is read-only: make it writable or run the project from a writable folder",
    errno.EACCES: "permission denied: fix the folder's permissions",
    errno.EPERM: "operation not permitted: fix the folder's permissions",
    errno.ENOTDIR: "a file is in the way where a folder is needed: move it",
    errno.EISDIR: "a folder is in the way where a file is needed: move it",
    errno.EEXIST: "a file is in the way where a folder is needed: move it",
}


def os_error(exc: OSError, path=None) -> PipelineError:
    """A file-system error as a PipelineError naming the file and what to do."""
    where = path if path is not None else exc.filename
    return PipelineError(
        f"cannot write {where}: {OS_HINTS.get(exc.errno, exc.strerror or exc)}"
        if path is not None
        else f"{where or 'file system'}: {OS_HINTS.get(exc.errno, exc.strerror or exc)}"
    )


def one_line(exc: Exception) -> str:
    """An exception's message on one line (its class name if it has none): for reasons in reports and error lines."""
    return " ".join(str(exc).split()) or exc.__class__.__name__


def _terminated(signum, frame):
    raise KeyboardInterrupt  # unwinds like Ctrl-C: temporary files are removed on the way out


def run(main: Callable[[], None], again: str = "run `dvc repro` again to finish") -> None:
    """Run a stage's main(); a PipelineError becomes `error: <message>` and exit status 1.

    Also one line, not a traceback, for an interruption (SIGINT/SIGTERM, exit 130; the line ends with
    `again`, what to do next) and for a disk that is full or read-only wherever the write happened
    (even inside a library).
    """
    signal.signal(signal.SIGTERM, _terminated)
    try:
        main()
    except PipelineError as exc:
        fail(str(exc))
    except KeyboardInterrupt:  # the `finally` blocks have run: temporary files are gone
        print(f"error: interrupted; no output was half-written: {again}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)  # skip finalizers of half-built objects (tqdm, TensorFlow) that print tracebacks
    except OSError as exc:
        if exc.errno not in OS_HINTS:
            raise
        fail(str(os_error(exc)))
    except Exception as exc:  # libraries (h5py, TensorFlow) wrap disk errors in their own types
        if "No space left on device" not in str(exc):
            raise
        fail(f"{OS_HINTS[errno.ENOSPC]} ({exc.__class__.__name__})")


# The longest error line printed: a message quotes inputs (a param's value, a file's text), which can be huge; a
# line this long still names the file or param and what to do, which come first.
MAX_MESSAGE = 2000


def fail(message: str, status: int = 1) -> None:
    print(f"error: {shorten(' '.join(message.splitlines()))}", file=sys.stderr)
    sys.exit(status)


def shorten(message: str, limit: int = MAX_MESSAGE) -> str:
    """`message`, or its first `limit` - 1 characters and "…"."""
    return message if len(message) <= limit else message[: limit - 1] + "…"
