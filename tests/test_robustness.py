"""Hostile inputs and failures through the real stages: a messy folder end to end with bounded memory, nothing
usable, one class, a full disk, an interrupted or killed `dvc repro`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from support.bad_files import (
    DISK_FULL,
    FULL_DISK_STAGE,
    full_disk_env,
    gray16_png,
    hostile_additions,
    jpeg_bytes,
    messy_folder,
    needs_dev_full,
    png,
    reasons_match,
    transparent_palette_png,
)
from support.images import make_image
from support.projects import (
    ALL_STAGES,
    FAST,
    ROOT,
    copy_project,
    lock_of,
    make_project,
    run,
    run_stage,
    stage_project,
    stages_run,
    tool_env,
    write_params,
)

INGEST_PEAK = """
import resource, subprocess, sys
result = subprocess.run([sys.executable, "-m", "stages.ingest"], capture_output=True, text=True)
print(result.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
"""


def ingest_peak_mb(project: Path) -> int:
    """Peak memory (RSS) of the ingest stage in `project`, in MB, with two decoding threads."""
    out = subprocess.run(
        [sys.executable, "-c", INGEST_PEAK],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PIPELINE_WORKERS": "2"},
    ).stdout.split()
    assert out[0] == "0", "ingest failed"
    return int(out[1])


# Ingest's peak memory: Python, NumPy, pandas and Pillow (about 100 MB), the snapshots in flight, and decoding, which
# holds at most images.DECODE_BUDGET (256 MB) for all threads together, or one larger image alone
# (docs/troubleshooting.md).
INGEST_MEMORY_MB = 400


def test_ingest_memory_stays_bounded_on_images_costly_to_convert(tmp_path):
    """A 16-bit grey and a transparent palette PNG of 30 megapixels each (a few hundred KB as files): converted at
    full size they took 750 and 490 MB, and with two threads both at once."""
    source = tmp_path / "images"
    gray16_png(source / "grey" / "deep.png", 6000, 5000)
    transparent_palette_png(source / "palette" / "glass.png", 6000, 5000)
    for c, name in enumerate(("grey", "palette")):
        for i in range(3):
            make_image(source / name / f"{i}.png", (80 * c, 90, 90), noise_seed=10 * c + i)
    project = stage_project(tmp_path, {"data.source": str(source), "ingest.max_megapixels": 100})
    peak = ingest_peak_mb(project)
    assert peak < INGEST_MEMORY_MB, f"ingest peaked at {peak} MB"
    assert len(pd.read_csv(project / "data/ingested/manifest.csv")) == 8


DVC_PEAK = """
import resource, subprocess, sys
result = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(result.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
sys.stderr.write(result.stdout + result.stderr)
"""


@pytest.mark.e2e
def test_ingest_to_normalize_on_a_messy_folder_reports_every_skipped_file(tmp_path):
    source = tmp_path / "images"
    expected = messy_folder(source, tmp_path / "outside") | hostile_additions(source)
    png(source / "NA" / "huge.png", 12000, 9000, bytes([7]) * 12000)
    expected["NA/huge.png"] = "12000x9000 pixels (108 megapixels) is over ingest.max_megapixels=100"
    # DVC hashes data.source before ingest runs: it stops at a link loop, a broken link or a name that is not UTF-8, and
    # waits forever on a named pipe (docs/troubleshooting.md). Ingest's own reasons for them are checked without DVC,
    # above.
    for name in ("loop.png", "dangling.png", "fifo.png"):
        (source / "ünïcode" / name).unlink()
        del expected[f"ünïcode/{name}"]
    (source / "dots.in.name" / os.fsdecode(b"caf\xe9.png")).unlink()
    del expected["dots.in.name/caf\ufffd.png"]
    project = make_project(tmp_path, FAST | {"data.source": str(source), "ingest.max_megapixels": 100})
    result = subprocess.run(
        [sys.executable, "-c", DVC_PEAK, "dvc", "repro", "normalize"],
        cwd=project,
        capture_output=True,
        text=True,
        env=tool_env({"PIPELINE_WORKERS": "2"}),
    )
    status, peak = result.stdout.split()
    assert status == "0" and "Traceback" not in result.stderr, result.stderr
    assert int(peak) < INGEST_MEMORY_MB, (
        f"a process of dvc repro (dvc itself, ingest, split, normalize) peaked at {peak} MB"
    )
    report = json.loads((project / "metrics/data.json").read_text(encoding="utf-8"))
    skipped = {s["path"]: s["reason"] for s in report["skipped_files"]}
    reasons_match(skipped, expected)
    assert report["skipped"] == len(expected)
    assert report["classes"] == {"NA": 7, "café": 6, "dots.in.name": 18, "with space": 11, "ünïcode": 11}
    assert report["duplicates"] == 1  # dots.in.name/img_5 as PNG and BMP
    assert report["near_duplicates"] == [
        {"paths": ["dots.in.name/img_6.jpg", "dots.in.name/img_6.png"], "labels": ["dots.in.name"]}
    ]
    manifest = pd.read_csv(project / "data/ingested/manifest.csv", keep_default_na=False)
    assert manifest["label"].tolist().count("NA") == 7, "a class named NA stays a class name"
    encoding = json.loads((project / "data/normalized/encoding.json").read_text(encoding="utf-8"))
    assert encoding["classes"] == ["NA", "café", "dots.in.name", "with space", "ünïcode"]
    counts = {name: len(np.load(project / f"data/normalized/{name}_targets.npy")) for name in ("train", "val", "test")}
    assert sum(counts.values()) == 53 and min(counts.values()) >= 9
    split = pd.read_csv(project / "data/split/split.csv").set_index("path")["split"]
    assert 'with space/new\nline, "quoted".png' in split.index
    assert (
        split["dots.in.name/img_5.png"] == split["dots.in.name/img_5.bmp"]
        and split["dots.in.name/img_6.png"] == split["dots.in.name/img_6.jpg"]
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_no_usable_image_fails_clearly_and_still_writes_the_report(tmp_path):
    junk = tmp_path / "junk"
    (junk / "cats").mkdir(parents=True)
    (junk / "cats" / "a.jpg").write_bytes(b"")
    (junk / "cats" / "b.png").write_text("<html></html>")
    project = stage_project(tmp_path, {"data.source": str(junk)})
    line = one_error_line(run_stage(project, "ingest"))
    assert line.startswith(
        f"error: data.source {junk}: no usable image (2 skipped, e.g. cats/a.jpg: empty file; cats/b.png: not a "
        "readable image"
    )
    assert line.endswith("every one is in metrics/data.json)")
    report = json.loads((project / "metrics/data.json").read_text())
    assert report["images"] == 0 and [s["path"] for s in report["skipped_files"]] == ["cats/a.jpg", "cats/b.png"]
    assert not (project / "data/ingested/manifest.csv").exists() and not list(project.rglob("*.tmp"))


def test_one_usable_class_fails_at_split_naming_it(tmp_path):
    source = tmp_path / "src"
    for i in range(5):
        make_image(source / "cats" / f"{i}.png", (9, 9, 9), noise_seed=i)
    (source / "dogs").mkdir()
    (source / "dogs" / "broken.jpg").write_bytes(jpeg_bytes()[:300])
    project = stage_project(tmp_path, {"data.source": str(source)})
    assert run_stage(project, "ingest").returncode == 0
    line = one_error_line(run_stage(project, "split"))
    assert line == (
        "error: the data has only one usable class ('cats'); classification needs at least 2 "
        "(skipped files are listed in metrics/data.json)"
    )
    skipped = {s["path"]: s["reason"] for s in json.loads((project / "metrics/data.json").read_text())["skipped_files"]}
    assert skipped["dogs/"] == "no usable image of this class; the class is left out"
    assert skipped["dogs/broken.jpg"].startswith("corrupt or truncated image")


@needs_dev_full
def test_ingest_on_a_full_disk_exits_with_one_line(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "stages", project / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for c, name in enumerate(["a", "b"]):
        for i in range(3):
            make_image(tmp_path / "src" / name / f"{i}.png", (100 * c, 50, 50), noise_seed=i)
    params["data"]["source"] = str(tmp_path / "src")
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK_STAGE, "stages.ingest", "data/ingested/manifest.csv"],
        cwd=project,
        env=full_disk_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: cannot write data/ingested/manifest.csv: {DISK_FULL}"
    assert os.listdir(project / "data/ingested") == [] and not (project / "metrics").exists()
    (project / "metrics").write_text("")  # now the report's folder is blocked by a file
    result = subprocess.run([sys.executable, "-m", "stages.ingest"], cwd=project, capture_output=True, text=True)
    assert (
        result.stderr.strip().splitlines()[-1]
        == "error: cannot write metrics/data.json: a file is in the way where a folder is needed: move it"
    )
    assert sorted(os.listdir(project / "data/ingested")) == ["manifest.csv"], "complete files; DVC records nothing"


def start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    """`dvc repro` in its own process group, as a terminal runs it (a signal reaches DVC and the stage)."""
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def signal_when(proc: subprocess.Popen, folder: Path, partial: str, signum: int) -> tuple[str, Path]:
    """Send `signum` to the whole group as soon as a file matching `partial` (a temporary output, whose name has a
    random part) exists in `folder`: mid-write. Returns the run's output and that file."""
    deadline = time.monotonic() + 120
    while not (found := list(folder.glob(partial))):
        assert proc.poll() is None, f"the run ended before {partial} appeared:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, f"{partial} never appeared in {folder}"
        time.sleep(0.003)
    os.killpg(proc.pid, signum)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    return output, found[0]


def temporary_files(project: Path) -> list[str]:
    return sorted(str(p.relative_to(project)) for p in project.glob("data/**/*.tmp"))


@pytest.mark.e2e
def test_a_killed_then_interrupted_run_resumes_to_the_bytes_of_an_uninterrupted_run(fast_run, tmp_path):
    """Same inputs and params, same bytes, interruptions or not: a new project with the fast run's params, killed while
    extract-features writes its first split (SIGKILL of DVC and the stage: a power cut, the OOM killer), interrupted
    while it writes its second (Ctrl-C), then resumed, has the uninterrupted fast run's dvc.lock up to that stage:
    every output byte for byte. (`dvc repro extract-features`: the stages after it read only its outputs, which are
    the same bytes, so they would rerun to the same bytes too: test_a_second_run_runs_nothing.)"""
    project = make_project(tmp_path, FAST)

    killed = start(["dvc", "repro", "extract-features"], project)
    _, partial = signal_when(killed, project / "data/features", "train_features.npy.*.tmp", signal.SIGKILL)
    left = temporary_files(project)
    assert str(partial.relative_to(project)) in left and all(
        p.startswith(("data/features/train_features.npy.", "data/activations/train_activations.npy.")) for p in left
    ), "only the temporary files are partial"
    assert not (project / "data/features/train_features.npy").exists()
    assert "extract-features" not in (project / "dvc.lock").read_text()

    interrupted = start(["dvc", "repro", "extract-features"], project)
    output, _ = signal_when(interrupted, project / "data/features", "val_features.npy.*.tmp", signal.SIGINT)
    assert "error: interrupted; no output was half-written" in output and "Traceback" not in output
    assert temporary_files(project) == [], "an interrupted stage removes its temporary file"
    lock = (project / "dvc.lock").read_text()
    assert "normalize" in lock and "augment" in lock and "extract-features" not in lock

    resumed = run(["dvc", "repro", "extract-features"], project).stdout
    assert stages_run(resumed) == ["extract-features"], "it goes on where it stopped"
    assert temporary_files(project) == []
    ours, uninterrupted = lock_of(project)["stages"], lock_of(fast_run.project)["stages"]
    assert list(ours) == ALL_STAGES[: ALL_STAGES.index("extract-features") + 1]
    assert ours == {stage: uninterrupted[stage] for stage in ours}, "the same outputs, byte for byte"
    assert "up to date" in run(["dvc", "status", "extract-features"], project).stdout


@pytest.mark.e2e
def test_a_fine_tune_killed_after_its_second_epoch_resumes_at_the_third_to_the_bytes_of_an_uninterrupted_one(
    fast_run, tmp_path
):
    """Six epochs, with early stopping keeping the best one and weight averaging (state of their own to carry over):
    one copy of the fast run fine-tunes them in one go; another, side by side, is killed (SIGKILL of DVC and the stage)
    as soon as its backup of epoch 2 is complete, and `dvc repro fine-tune` resumes it at epoch 3. Both end with the
    same dvc.lock: fine-tune's outputs (the model, metrics, dvclive's files), byte for byte (the stages after it read
    only those: the same bytes in, the same bytes out)."""
    longer = {"fine_tune.epochs": 6, "fine_tune.patience": 6, "fine_tune.ema": 0.9}
    whole, killed = (copy_project(fast_run.project, tmp_path / name) for name in ("whole", "killed"))
    for project in (whole, killed):
        write_params(project, longer)
    uninterrupted, interrupted = (start(["dvc", "repro", "fine-tune"], project) for project in (whole, killed))
    deadline = time.monotonic() + 300
    while not list(killed.glob(".dvc/tmp/resume/fine-tune/*/epoch-2")):  # renamed into place once complete
        assert interrupted.poll() is None, f"it ended before backing epoch 2 up:\n{interrupted.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "no backup of epoch 2"
        time.sleep(0.003)
    os.killpg(interrupted.pid, signal.SIGKILL)
    interrupted.communicate(timeout=60)
    backups = sorted(path.name for path in killed.glob(".dvc/tmp/resume/fine-tune/*/epoch-*"))
    assert backups in (["epoch-2"], ["epoch-1", "epoch-2"]), backups  # epoch-1 unless it was deleted already
    assert not (killed / "models/model.keras").exists(), "DVC deleted the outputs of the stage it ran"
    assert (killed / "dvc.lock").read_text() == (fast_run.project / "dvc.lock").read_text(), "and recorded nothing new"

    resumed = run(["dvc", "repro", "fine-tune"], killed).stdout
    assert stages_run(resumed) == ["fine-tune"]
    fingerprint = next(killed.glob(".dvc/tmp/resume/fine-tune/*"), None)
    assert fingerprint is None, "the backups are deleted once the outputs are written"
    said = r"^fine-tune: resuming at epoch 3 of 6 from \.dvc/tmp/resume/fine-tune/\w{16}/epoch-2$"
    assert re.search(said, resumed, re.M), resumed
    assert "Epoch 2/6" not in resumed and "Epoch 3/6" in resumed
    whole_output, _ = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0 and stages_run(whole_output) == ["fine-tune"], whole_output
    assert "resuming" not in whole_output
    assert lock_of(killed) == lock_of(whole), "the same outputs, byte for byte (timings aside)"
    assert json.loads((killed / "metrics/fine_tune.json").read_text())["epochs_run"] == 6
