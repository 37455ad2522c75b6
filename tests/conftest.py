"""The tests' fixtures: the offline Keras cache, a folder of small images, the shared fast run of the project.
Helpers live in tests/support/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import transfer_learning  # noqa: F401  configures TensorFlow (its __init__.py) before any test module imports it
from support.images import make_image
from support.projects import FAST, FAST_EXPERIMENTS, SHARED, Run, audited, commit, make_project, run, run_queue


@pytest.fixture(scope="session", autouse=True)
def keras_cache():
    """Seed ~/.keras/models with the offline ImageNet weights from ../shared (as .ci/run does)."""
    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    cache.mkdir(parents=True, exist_ok=True)
    for weights in (SHARED / "keras" / "models").glob("*.h5"):
        if not (cache / weights.name).exists():  # copied whole, then renamed: test workers may start together
            tmp = cache / f"{weights.name}.{os.getpid()}.tmp"
            shutil.copy(weights, tmp)
            os.replace(tmp, cache / weights.name)
    return cache


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    """Tests run in parallel workers (pytest-xdist, --dist loadgroup); those sharing the fast run go to one worker,
    so that it runs once."""
    for item in items:
        if "fast_run" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("fast_run"))


@pytest.fixture
def class_folder(tmp_path) -> Path:
    """Three classes (red, green, blue) of 12 small JPEG/PNG images each."""
    root = tmp_path / "images"
    colors = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
    for c, (name, color) in enumerate(colors.items()):
        for i in range(12):
            make_image(root / name / f"img_{i:02d}.{'jpg' if i % 2 else 'png'}", color, noise_seed=100 * c + i)
    return root


@pytest.fixture(scope="session")
def fast_run(tmp_path_factory) -> Run:
    """The project on its digits with FAST params: `dvc repro`, committed, `dvc repro` again, then experiments through
    DVC's queue, two at a time: FAST_EXPERIMENTS, and ingest + split on another folder of images, given by its absolute
    path (other-data) and by a relative path leaving the project (relative-data, which fails). outputs has what each
    printed ("queue" for `dvc queue status`, "live" for what run_queue saw of live metrics). Shared by the end-to-end
    tests that only read it or add experiments of
    their own (`dvc exp run --temp`): none may change its workspace; copy_project it to change it."""
    root = tmp_path_factory.mktemp("fast_run")
    project = make_project(root, FAST)
    # The first run records each stage's file accesses (test_each_stage_reads_and_writes_what_dvc_yaml_declares)
    outputs = {"first": run(["dvc", "repro"], project, env=audited(root / "file_audit")).stdout}
    commit(project, "baseline run")
    outputs["again"] = run(["dvc", "repro"], project).stdout
    for c, (name, color) in enumerate({"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}.items()):
        for i in range(12):
            make_image(root / "other_images" / name / f"img_{i:02d}.png", color, noise_seed=100 * c + i)
    queued = {  # up to evaluate: no test reads an experiment's exports, and export is the costliest stage to rerun
        name: ["evaluate", *(arg for key, value in overrides.items() for arg in ("-S", f"{key}={value}"))]
        for name, overrides in FAST_EXPERIMENTS.items()
    }
    queued |= {
        "other-data": ["split", "-S", f"data.source={root / 'other_images'}"],
        "relative-data": ["split", "-S", "data.source=../other_images"],
    }
    for name, args in queued.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, *args], project)
    outputs["queue"], outputs["live"] = run_queue(project)
    outputs |= {name: run(["dvc", "queue", "logs", name], project, check=False).stdout for name in queued}
    return Run(project, outputs)
