"""Benchmarks cannot break unnoticed: each script in benchmarks/ runs to its end at its smallest configuration
(`--smoke`: a few generated images, the smallest params, the same commands, parsing and printing as a measurement).
Nothing here asserts a timing: the figures of a smoke run mean nothing, only that the script got to print them.

They take minutes each (every stage is a process that imports TensorFlow: ~8 s of CPU whatever the data; the runs of
whole `dvc repro`s leave out the export stage, which none of them reads and which costs 3-4 times that:
harness.skip_export), so they are marked `benchmarks` and left out of `make test`: `make benchmarks-smoke` runs them.

Each benchmark clones this repository (harness.clone: committed files only), so it runs the committed code."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support.projects import ROOT, tool_env

pytestmark = pytest.mark.e2e

# script -> a line of its final report: printed only once every measurement of the script is done
SMOKE = {
    "finetune.py": "per-epoch speed-up:",
    "incremental.py": "train_head.lr changed",
    "queue_experiments.py": "queued experiments, dvc queue start -j 2:",
    "throughput_memory.py": "peak memory per stage",
    "reproducibility.py": "= byte-identical to the project's output",
    "quality.py": "utkface (MAE, years)",
    "vs_tutorial.py": "tutorial: ",
    "disk.py": "first experiment:",
    "scale.py": "dvc status",
    "runtimes.py": "features: ",
    "review_cost.py": "evaluate's time growth from the review features:",
    "imbalance.py": "minority recall, balanced - none",
}
# Not benchmarks of their own: the shared harness, the old duplicate search (run by duplicates.py and its tests), the
# tutorial script (run by vs_tutorial.py); duplicates.py runs at its smallest size in tests/test_duplicates.py.
RUN_ELSEWHERE = {"harness.py", "duplicates_reference.py", "tutorial_baseline.py", "duplicates.py"}


def test_every_benchmark_is_run_by_a_test():
    scripts = {path.name for path in (ROOT / "benchmarks").glob("*.py")}
    assert scripts == set(SMOKE) | RUN_ELSEWHERE, "a new benchmark needs a --smoke run here"
    assert "benchmarks/duplicates.py" in (ROOT / "tests/test_duplicates.py").read_text()


@pytest.mark.benchmarks  # minutes each: outside `make test`, run by `make benchmarks-smoke` (CI runs both)
@pytest.mark.parametrize("script", SMOKE)
def test_the_benchmark_runs_to_its_end_at_its_smallest_size(script):
    result = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--smoke"],
        cwd=ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, f"{script} --smoke failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert SMOKE[script] in result.stdout, result.stdout[-3000:]
