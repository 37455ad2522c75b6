"""Project copies in temporary git + DVC repositories, the commands run in them, and the fast params they use."""

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

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
# The stages in dvc.yaml's order; the data stages run no float math that depends on the CPU (docs/reproducibility.md)
DATA_STAGES = ["ingest", "split", "normalize", "augment"]
ALL_STAGES = [*DATA_STAGES, "extract-features", "train-head", "fine-tune", "evaluate", "export"]
# Outputs whose bytes change from run to run: timings (images/s), and the ONNX export (tf2onnx picks which of two
# equal constants to keep in an order of its own; its outputs, in metrics/export.json, are compared instead)
NOT_BYTE_IDENTICAL = ("metrics/export_speed.json", "models/export/model.onnx")
PROJECT_FILES = ["dvc.yaml", "params.yaml", "stages", "transfer_learning", ".dvcignore", "data/raw", "weights"]


def tool_env(extra: dict | None = None) -> dict:
    """The environment of a command run by a test: this Python's environment first on PATH, as `make` runs the
    pipeline, DVC's analytics off; `extra` on top."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1"} | (extra or {})


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """A command (dvc, git, ...) with this Python's environment first on PATH, as `make` runs the pipeline."""
    result = subprocess.run(cmd, cwd=cwd, env=tool_env(env), capture_output=True, text=True)
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


def status_of(project, target: str) -> dict:
    """`dvc status --json <target>` (the target and the stages before it): stage -> what changed; {} when up to date."""
    return json.loads(run(["dvc", "status", "--json", "--with-deps", target], project).stdout)


def lock_of(project: Path) -> dict:
    """The project's dvc.lock, the hashes and sizes of NOT_BYTE_IDENTICAL left out: every other output is compared
    byte for byte."""
    import yaml

    lock = yaml.safe_load((Path(project) / "dvc.lock").read_text())
    for stage in lock.get("stages", {}).values():
        for out in stage.get("outs", []):
            if out["path"] in NOT_BYTE_IDENTICAL:
                out.update(md5="not byte-identical", size="not byte-identical")
    return lock


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
    return subprocess.run(
        [sys.executable, "-m", f"stages.{name}"],
        cwd=project,
        capture_output=True,
        text=True,
        env=None if env is None else {**os.environ, **env},
    )


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
    # the project's own rules: besides caches, the outputs out of both git and DVC's cache (data/activations)
    shutil.copy(ROOT / ".gitignore", project / ".gitignore")
    run(["git", "init", "-q"], project)
    run(["git", "config", "user.email", "test@example.com"], project)
    run(["git", "config", "user.name", "test"], project)
    run(["dvc", "init", "-q"], project)
    shutil.copytree(ROOT / ".dvc" / "plots", project / ".dvc" / "plots")  # the task's plot templates
    shutil.copy(ROOT / ".dvc" / "config", project / ".dvc" / "config")  # analytics off, the cache linked (cache.type)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "init"], project)
    return project


def commit(project: Path, message: str = "run") -> None:
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", message], project)


# Small, fast settings for end-to-end runs: tiny images, one epoch. No dropout: the same run under
# train.strategy=mirrored then matches it to float rounding (test_e2e_distributed.py, test_mirrored_*).
FAST = {
    "normalize.image_size": 32,
    "augment.copies": 1,
    "train_head.epochs": 2,
    "fine_tune.epochs": 1,
    "fine_tune.unfreeze_from": "block_16_expand",
    "head.dropout": 0.0,
}




def ages_csv(folder: Path, bins: int) -> dict:
    """The params of an age regression from `folder`/labels.csv (columns image, age), in `bins` target bins."""
    return {
        "data.source": str(folder),
        "data.csv": "labels.csv",
        "data.task": "regression",
        "data.target_column": "age",
        "split.bins": bins,
    }


@dataclass
class Run:
    project: Path
    outputs: dict  # what each command printed: "first" (dvc repro), "again", and each experiment by name


# Experiments queued on the shared fast run from its committed baseline and run two at a time (dvc queue start -j 2).
# lower-lr trains 3 epochs so that its live metrics can be seen changing while it runs.
FAST_EXPERIMENTS = {
    "more-head-epochs": {"train_head.epochs": 3},
    "lower-lr": {"fine_tune.lr": 0.0001, "fine_tune.epochs": 3, "fine_tune.patience": 0},
}


def copy_project(project: Path, where: Path) -> Path:
    """A copy of a project (git, DVC cache and outputs), for a test that changes it."""
    shutil.copytree(project, where, symlinks=True)
    return where


def run_queue(project: Path, timeout: float = 900) -> tuple[str, set]:
    """`dvc queue start -j 2` and wait until nothing is queued or running. -> the final `dvc queue status`, and what was
    seen of fine-tune's live metrics while it ran: (step in dvclive's metrics.json, rows in its eval/loss.tsv)."""
    # Not through pipes: the queue's workers would inherit them, and reading them to the end would wait for the queue
    subprocess.run(
        ["dvc", "queue", "start", "-j", "2"],
        cwd=project,
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    seen, asked = set(), 0.0
    try:
        deadline = time.monotonic() + timeout
        while True:
            for live in project.glob(".dvc/tmp/exps/*/dvclive/fine_tune"):  # the queued experiments' copies
                if (state := live_state(live)) is not None:
                    seen.add(state)
            if time.monotonic() - asked > 1:
                asked = time.monotonic()
                status = run(["dvc", "queue", "status"], project).stdout
                if not re.search(r"\b(Queued|Running)\b", status):
                    return status, seen
                assert time.monotonic() < deadline, f"the queue did not finish in time:\n{status}"
            time.sleep(0.02)
    finally:
        run(["dvc", "queue", "stop", "--kill"], project, check=False)


def live_state(live: Path) -> tuple[int, int] | None:
    """(step in dvclive's metrics.json, rows in its eval/loss.tsv) as they stand between two epochs, or None mid-epoch.
    dvclive appends an epoch's rows first and rewrites metrics.json with the step after them (Live.log_metric, then
    next_step): a metrics.json older than the rows, or either file changing while read, is a moment between the two."""
    summary, rows = live / "metrics.json", live / "plots/metrics/eval/loss.tsv"
    try:
        before = [summary.stat().st_mtime_ns, rows.stat().st_mtime_ns]
        state = json.loads(summary.read_text())["step"], len(rows.read_text().splitlines()) - 1
        after = [summary.stat().st_mtime_ns, rows.stat().st_mtime_ns]
    except (OSError, ValueError, KeyError):  # not there yet, or read while rewritten
        return None
    return state if before == after and before[0] >= before[1] else None


def audited(log_dir: Path) -> dict:
    """The environment under which every stage process records the files it opens, renames and removes into
    log_dir (tests/support/file_audit/sitecustomize.py); file_events() reads the records."""
    log_dir.mkdir(parents=True, exist_ok=True)
    site = Path(__file__).parent / "file_audit"
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        "FILE_AUDIT": str(log_dir),
    }


def file_events(log_dir: Path) -> dict[str, set[tuple[str, Path]]]:
    """What audited() recorded: stage module (stages.ingest) -> {("read" | "write" | "remove", absolute path)}."""
    events: dict[str, set[tuple[str, Path]]] = {}
    for log in log_dir.glob("*.json"):
        record = json.loads(log.read_text())
        events.setdefault(record["stage"], set()).update((kind, Path(path)) for kind, path in record["events"])
    return events


def split_images(project: Path, split: str = "test") -> np.ndarray:
    """A split's images as the models of a project see them: decoded from the files (image_sets.py), float32."""
    import contextlib

    from transfer_learning import image_sets

    with contextlib.chdir(project):
        return np.asarray(image_sets.load(split)).astype("float32")


def predict_cli(*argv) -> int:
    """`transfer-learning predict`'s exit status, run in this process (errors.run turns errors into `error: ...` and
    status 1)."""
    from transfer_learning import cli

    try:
        cli.main(["predict", *(str(a) for a in argv)])
    except SystemExit as exc:
        return exc.code
    return 0
