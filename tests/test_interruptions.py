"""Interruptions: a stage killed mid-way (SIGKILL, SIGINT, SIGTERM) never leaves a truncated output a later stage
could read, and `dvc repro` afterwards completes with the same outputs as an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, ROOT, make_project, run
from lib import files


def test_a_failed_write_keeps_the_old_output_and_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "out" / "a.npy"
    files.save_npy(out, np.arange(5))
    for failure in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(failure)):
            with files.npy_writer(out, (1000,), np.int64) as array:
                array[:10] = 7  # half-written...
                raise failure
        assert np.array_equal(files.load_npy(out), np.arange(5)) and os.listdir(out.parent) == ["a.npy"]
    files.save_npy(out, np.ones(3))
    assert np.array_equal(files.load_npy(out), np.ones(3)) and os.listdir(out.parent) == ["a.npy"]


SLOW_STAGE = """
import sys, time
sys.path.insert(0, {stages!r})
from lib import files
from lib.errors import run

def main():
    with files.atomic_path(files.Path("out.txt")) as tmp, open(tmp, "w") as f:
        f.write("partial")
        f.flush()
        print("writing", flush=True)
        time.sleep(60)

run(main)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signalled_stage_says_so_in_one_line_and_removes_its_temporary_file(tmp_path, signum):
    (tmp_path / "out.txt").write_text("previous run")
    stage = subprocess.Popen([sys.executable, "-c", SLOW_STAGE.format(stages=str(ROOT / "stages"))], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert stage.stdout.readline() == "writing\n" and (tmp_path / "out.txt.tmp").exists()
    stage.send_signal(signum)
    _, stderr = stage.communicate(timeout=30)
    assert stage.returncode == 130
    assert stderr == "error: interrupted; no output was half-written: run `dvc repro` again to finish\n"
    assert sorted(os.listdir(tmp_path)) == ["out.txt"] and (tmp_path / "out.txt").read_text() == "previous run"


def start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    """`dvc repro` in its own process group, as a terminal runs it (a signal reaches DVC and the stage)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def signal_when(proc: subprocess.Popen, partial: Path, signum: int) -> str:
    """Send `signum` to the whole group as soon as `partial` (a temporary output) exists: mid-write."""
    deadline = time.monotonic() + 120
    while not partial.exists():
        assert proc.poll() is None, f"the run ended before {partial.name} appeared:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, f"{partial} never appeared"
        time.sleep(0.003)
    os.killpg(proc.pid, signum)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    return output


def temporary_files(project: Path) -> list[str]:
    return sorted(str(p.relative_to(project)) for p in project.glob("data/**/*.tmp"))


@pytest.mark.e2e
def test_killed_and_interrupted_repro_resumes_to_identical_outputs(tmp_path):
    project = make_project(tmp_path, FAST)

    # SIGKILL (power cut, OOM killer) of DVC and the stage while normalize writes its first array
    killed = start(["dvc", "repro", "extract-features"], project)
    signal_when(killed, project / "data/normalized/train_images.npy.tmp", signal.SIGKILL)
    assert temporary_files(project) == ["data/normalized/train_images.npy.tmp"], "only the temporary file is partial"
    assert not (project / "data/normalized/train_images.npy").exists()
    assert "normalize" not in (project / "dvc.lock").read_text()

    # Ctrl-C (SIGINT to the process group) while extract-features writes the training features
    interrupted = start(["dvc", "repro", "extract-features"], project)
    output = signal_when(interrupted, project / "data/features/train_features.npy.tmp", signal.SIGINT)
    assert "error: interrupted; no output was half-written" in output and "Traceback" not in output
    assert temporary_files(project) == [], "an interrupted stage removes its temporary file"
    lock = (project / "dvc.lock").read_text()
    assert "normalize" in lock and "augment" in lock and "extract-features" not in lock

    resumed = run(["dvc", "repro", "extract-features"], project).stdout
    assert "Running stage 'extract-features'" in resumed and "Running stage 'normalize'" not in resumed
    assert temporary_files(project) == []
    after_interruptions = (project / "dvc.lock").read_text()

    run(["dvc", "repro", "--force", "extract-features"], project)  # the same stages, uninterrupted
    assert (project / "dvc.lock").read_text() == after_interruptions, "the same outputs, byte for byte"
    assert "up to date" in run(["dvc", "status", "extract-features"], project).stdout
