"""Settings: how the pipeline runs on this machine, never what it computes.

They are environment variables, not params: changing one changes no output, so it reruns nothing.

    PIPELINE_WORKERS   threads that decode, resize and augment images, and LiteRT's threads under
                       base.runtime litert (default: the CPUs this process may use)
"""

from __future__ import annotations

import os

from transfer_learning.errors import PipelineError


def workers() -> int:
    raw = os.environ.get("PIPELINE_WORKERS", "").strip()
    if not raw:
        return len(os.sched_getaffinity(0))
    if not raw.isdecimal() or not 1 <= int(raw) <= 256:
        raise PipelineError(
            f"PIPELINE_WORKERS={raw!r}: expected a whole number of threads from 1 to 256 (or unset it: one per CPU)"
        )
    return int(raw)
