"""How a stage fails: one clear line on stderr and a non-zero exit, never a half-written output."""
from __future__ import annotations

import sys
from typing import Callable


class PipelineError(Exception):
    """A problem the user can fix (bad input or params); the message says what and how."""


def run(main: Callable[[], None]) -> None:
    """Run a stage's main(); a PipelineError becomes `error: <message>` and exit status 1."""
    try:
        main()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
