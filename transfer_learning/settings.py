"""Settings: how the pipeline runs on this machine, never what it computes.

They are environment variables, not params: changing one changes no output, so it reruns nothing.

    PIPELINE_WORKERS   threads that decode, resize and augment images, and LiteRT's threads under
                       base.runtime litert (default: the CPUs this process may use)

The oneDNN kernel cap (ONEDNN_MAX_CPU_ISA, set in transfer_learning/__init__.py) is one too, except under
base.precision bfloat16, which lifts it for extract-features (kernels_for below).
"""

from __future__ import annotations

import os

from transfer_learning.errors import PipelineError

# oneDNN's instruction-set caps with no bfloat16 kernels: its bfloat16 convolutions start at AVX-512 (emulated there,
# native with AVX512-BF16 and AMX) and AVX2-VNNI-2.
NO_BFLOAT16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI"}


def workers() -> int:
    raw = os.environ.get("PIPELINE_WORKERS", "").strip()
    if not raw:
        return len(os.sched_getaffinity(0))
    if not raw.isdecimal() or not 1 <= int(raw) <= 256:
        raise PipelineError(
            f"PIPELINE_WORKERS={raw!r}: expected a whole number of threads from 1 to 256 (or unset it: one per CPU)"
        )
    return int(raw)


def kernels_for(precision: str) -> str | None:
    """Lift the AVX2 kernel cap for a bfloat16 pass; a line saying so when it did. Call it before the first op runs.

    TensorFlow hands bfloat16 ops to oneDNN on every AVX-512 CPU, but under the project's cap (AVX2, for reproducible
    float32 training) oneDNN has no bfloat16 kernel to run them: every convolution fails ("could not create a
    primitive descriptor"). bfloat16 trades the same bits on every CPU for this CPU's speed anyway, so its pass runs
    oneDNN's native kernels (AVX512-BF16, AMX). oneDNN reads the cap at its first kernel, so setting it here, after
    TensorFlow's import, still counts. On a CPU without AVX-512 TensorFlow keeps bfloat16 off oneDNN (Eigen runs it)."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if precision != "bfloat16" or os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0" or isa not in NO_BFLOAT16:
        return None
    os.environ["ONEDNN_MAX_CPU_ISA"] = "ALL"
    return (
        f"base.precision bfloat16: oneDNN's native kernels for this stage (ONEDNN_MAX_CPU_ISA {isa} has no "
        "bfloat16 ones)"
    )
