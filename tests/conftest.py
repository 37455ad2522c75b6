"""Shared fixtures: real small images written by Pillow, the offline Keras cache, a project copy."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import transfer_learning  # noqa: F401  configures TensorFlow (its __init__.py) before any test module imports it

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PROJECT_FILES = ["dvc.yaml", "params.yaml", "stages", "transfer_learning", ".dvcignore", "data/raw", "weights"]


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


def make_image(path: Path, color, size=(40, 30), mode="RGB", fmt=None, noise_seed=0) -> Path:
    """A real image file: a colored field with some texture, so classes are learnable."""
    rng = np.random.default_rng(noise_seed)
    base = np.array(color, dtype=np.float64)
    pixels = np.clip(base + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").convert(mode).save(path, format=fmt)
    return path


@pytest.fixture
def class_folder(tmp_path) -> Path:
    """Three classes (red, green, blue) of 12 small JPEG/PNG images each."""
    root = tmp_path / "images"
    colors = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
    for c, (name, color) in enumerate(colors.items()):
        for i in range(12):
            make_image(root / name / f"img_{i:02d}.{'jpg' if i % 2 else 'png'}", color, noise_seed=100 * c + i)
    return root


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """A command (dvc, git, ...) with this Python's environment first on PATH, as `make` runs the pipeline."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"} | (env or {})
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


class Delete:
    """A params override that removes the key (shown as DELETE in test ids)."""

    def __repr__(self) -> str:
        return "DELETE"


DELETE = Delete()


def write_params(folder: Path, overrides: dict | None = None, text: str | None = None) -> Path:
    """Overrides dotted keys ({"fine_tune.lr": 0.1}) in <folder>/params.yaml (made from the project's if the folder
    has none), or writes `text` as is."""
    import yaml

    path = folder / "params.yaml"
    params = yaml.safe_load((path if path.exists() else ROOT / "params.yaml").read_text())
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".")
        if value is DELETE:
            del params[section][key]
        else:
            params.setdefault(section, {})[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else yaml.safe_dump(params, sort_keys=False))
    return path


def stages_run(output: str) -> list[str]:
    """The stages a `dvc repro` / `dvc exp run` ran, in order, from its output."""
    return re.findall(r"Running stage '([\w-]+)'", output)


def stage_project(tmp_path: Path, overrides: dict | None = None) -> Path:
    """The stages, their package and params.yaml in a folder, to run a stage with python (no git, no DVC)."""
    project = tmp_path / "stage_project"
    for code in ("stages", "transfer_learning"):
        shutil.copytree(ROOT / code, project / code, ignore=shutil.ignore_patterns("__pycache__"))
    write_params(project, overrides)
    return project


def run_stage(project: Path, name: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=project, capture_output=True, text=True,
                          env=None if env is None else {**os.environ, **env})


def make_project(tmp_path: Path, params_override: dict) -> Path:
    """Copy the project into a fresh git + DVC repository with the given params overrides committed."""
    project = tmp_path / "project"
    project.mkdir()
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.dvc", ".gitignore"))
        else:
            shutil.copy(src, project / name)
    write_params(project, params_override)
    (project / ".gitignore").write_text("__pycache__/\n*.tmp\n")
    run(["git", "init", "-q"], project)
    run(["git", "config", "user.email", "test@example.com"], project)
    run(["git", "config", "user.name", "test"], project)
    run(["dvc", "init", "-q"], project)
    shutil.copytree(ROOT / ".dvc" / "plots", project / ".dvc" / "plots")  # the task's plot templates
    run(["dvc", "config", "core.analytics", "false"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "init"], project)
    return project


def commit(project: Path, message: str = "run") -> None:
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", message], project)


# Small, fast settings for end-to-end runs: tiny images, one epoch. No dropout: the same run under
# train.strategy=mirrored then matches it to float rounding (test_pipeline_e2e.py, test_mirrored_*).
FAST = {
    "normalize.image_size": 32,
    "augment.copies": 1,
    "train_head.epochs": 2,
    "fine_tune.epochs": 1,
    "fine_tune.unfreeze_from": "block_16_expand",
    "head.dropout": 0.0,
}


@dataclass
class Run:
    project: Path
    outputs: dict  # what each command printed: "first" (dvc repro), "again", and each experiment by name


# Experiments queued on the shared fast run from its committed baseline and run two at a time (dvc queue start -j 2).
# lower-lr trains 3 epochs so that its live metrics can be seen changing while it runs.
FAST_EXPERIMENTS = {"more-head-epochs": {"train_head.epochs": 3},
                    "lower-lr": {"fine_tune.lr": 0.0001, "fine_tune.epochs": 3, "fine_tune.patience": 0}}


def copy_project(project: Path, where: Path) -> Path:
    """A copy of a project (git, DVC cache and outputs), for a test that changes it."""
    shutil.copytree(project, where, symlinks=True)
    return where


def run_queue(project: Path, timeout: float = 900) -> tuple[str, set]:
    """`dvc queue start -j 2` and wait until nothing is queued or running. -> the final `dvc queue status`, and what was
    seen of fine-tune's live metrics while it ran: (step in dvclive's metrics.json, rows in its eval/loss.tsv)."""
    # Not through pipes: the queue's workers would inherit them, and reading them to the end would wait for the queue
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    seen, asked = set(), 0.0
    try:
        deadline = time.monotonic() + timeout
        while True:
            for live in project.glob(".dvc/tmp/exps/*/dvclive/fine_tune"):  # the queued experiments' copies
                try:
                    seen.add((json.loads((live / "metrics.json").read_text())["step"],
                              len((live / "plots/metrics/eval/loss.tsv").read_text().splitlines()) - 1))
                except (OSError, ValueError, KeyError):  # between two writes, or not there yet
                    pass
            if time.monotonic() - asked > 1:
                asked = time.monotonic()
                status = run(["dvc", "queue", "status"], project).stdout
                if not re.search(r"\b(Queued|Running)\b", status):
                    return status, seen
                assert time.monotonic() < deadline, f"the queue did not finish in time:\n{status}"
            time.sleep(0.02)
    finally:
        run(["dvc", "queue", "stop", "--kill"], project, check=False)


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
    outputs = {"first": run(["dvc", "repro"], project).stdout}
    commit(project, "baseline run")
    outputs["again"] = run(["dvc", "repro"], project).stdout
    for c, (name, color) in enumerate({"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}.items()):
        for i in range(12):
            make_image(root / "other_images" / name / f"img_{i:02d}.png", color, noise_seed=100 * c + i)
    queued = {name: [arg for key, value in overrides.items() for arg in ("-S", f"{key}={value}")] for name, overrides in FAST_EXPERIMENTS.items()}
    queued |= {"other-data": ["split", "-S", f"data.source={root / 'other_images'}"], "relative-data": ["split", "-S", "data.source=../other_images"]}
    for name, args in queued.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, *args], project)
    outputs["queue"], outputs["live"] = run_queue(project)
    outputs |= {name: run(["dvc", "queue", "logs", name], project, check=False).stdout for name in queued}
    return Run(project, outputs)
