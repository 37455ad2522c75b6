"""What every benchmark needs: a fresh clone of this repository, params set in it, timed commands.

Each benchmark works in its own temporary clone (only git-tracked files, like a user's fresh
checkout), so it never touches the workspace, and times commands with their peak memory.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FLOWERS = ROOT.parent / "shared" / "datasets" / "flowers17"
# Flowers-17 at 256 px with MobileNetV2-0.35 and ImageNet weights (the README's flowers line; benchmarks 1-5 in
# benchmarks/README.md were measured with an earlier line: 224 px, fine_tune.lr 0.001 with SGD, no smoothing, no flip
# averaging; reproducibility.py and throughput_memory.py keep 224 px).
FLOWERS_PARAMS = {
    "data.source": str(FLOWERS),
    "normalize.image_size": 256,
    "augment.horizontal_flip": True,
    "augment.copies": 4,
    "train_head.label_smoothing": 0.1,
    "fine_tune.label_smoothing": 0.1,
    "fine_tune.optimizer": "adam",
    "fine_tune.lr": 0.0001,
    "fine_tune.epochs": 10,
    "fine_tune.patience": 6,
    "fine_tune.tta": "flip",
}


# --smoke (every benchmark has it; tests/test_benchmarks.py runs each so): the same script, its commands and its
# printing, on a few generated images with the smallest params that still run every stage (but export where the
# benchmark never reads it: skip_export), in a few minutes at most: each stage process costs ~8 s of CPU to start
# TensorFlow whatever the data. Its figures mean nothing; it proves the benchmark still runs to its end.
SMOKE_PARAMS = {
    "normalize.image_size": 32,
    "ingest.max_short_side": 32,
    "augment.copies": 1,
    "train_head.epochs": 2,
    "train_head.folds": 0,
    "fine_tune.epochs": 2,
    "fine_tune.patience": 0,
    "fine_tune.unfreeze_from": "block_16_expand",
}


def smoke_images(kind: str = "classes") -> Path:
    """A few small generated images: `classes`, 3 class folders of 8 (noisy colours, each image its own); `ages`, the
    same 24 in one folder with labels.csv (path, age) for a regression."""
    import numpy as np
    from PIL import Image

    root = Path(tempfile.mkdtemp(prefix=f"bench-smoke-{kind}-")) / "images"
    rng = np.random.default_rng(0)
    rows = ["image,age"]
    for c, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        for i in range(8):
            pixels = np.clip(np.array(colour) + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
            name = f"c{c}_{i}.png" if kind == "ages" else f"class_{c}/{i}.png"
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / name)
            rows.append(f"{name},{20 + 10 * c + i}")
    if kind == "ages":
        (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def skip_export(project: Path) -> None:
    """--smoke of a benchmark that runs whole `dvc repro`s and reads nothing of the export stage: the clone's pipeline
    without it (dvc.yaml and dvc.lock; commit the clone after this for queued experiments). Its conversions (SavedModel,
    TFLite float32 and int8, ONNX) make a smoke run's export cost 3-4 times the CPU of any other stage, a third of
    such a benchmark; tests/test_exports.py runs them. (`dvc remove` and `dvc freeze` refuse a stage with `${...}`.)"""
    pipeline = (project / "dvc.yaml").read_text()
    block = re.search(r"^  export:\n(?:(?:    .*)?\n)+?(?=\S)", pipeline, re.M)
    if block is None:
        raise SystemExit(f"no export stage in {project / 'dvc.yaml'}: update harness.skip_export")
    (project / "dvc.yaml").write_text(pipeline[: block.start()] + pipeline[block.end() :])
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    lock["stages"].pop("export", None)
    (project / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))


def smoke_flowers_params() -> dict:
    """FLOWERS_PARAMS (smoothing, flip averaging, Adam: the configuration the figures are for) at smoke size."""
    return FLOWERS_PARAMS | SMOKE_PARAMS | {"data.source": str(smoke_images())}


@dataclass
class Timed:
    seconds: float
    peak_mb: float  # peak resident memory (wait4's ru_maxrss): includes the pages of memory-mapped files
    output: str
    peak_anon_mb: float = 0.0  # peak anonymous memory (heap, tensors) of the command and its descendants,
    #                            sampled every 0.1 s: what the process itself holds, not reclaimable file pages
    peak_children_mb: float = 0.0  # the same of its descendants only: under `dvc repro`, the stage without DVC


def clone(name: str) -> Path:
    """A fresh clone of this repository (committed files only) in a temporary folder."""
    project = Path(tempfile.mkdtemp(prefix=f"bench-{name}-")) / "project"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(project)], check=True)
    return project


def read_params(project: Path) -> dict:
    return yaml.safe_load((project / "params.yaml").read_text())


def set_params(project: Path, overrides: dict) -> None:
    params = read_params(project)
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        params[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run(cmd: list[str], project: Path, env: dict | None = None) -> Timed:
    """Run `cmd` in `project` with this Python's environment (plus `env`); wall time and peak memory (from wait4)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"} | (env or {})
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        sampler = AnonSampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        sampler.stop.set()
        sampler.join()
        log.seek(0)
        output = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {project}:\n{output[-3000:]}")
    return Timed(seconds, usage.ru_maxrss / 1024, output, sampler.peak_kb / 1024, sampler.peak_children_kb / 1024)


class AnonSampler(threading.Thread):
    """Peak of the summed RssAnon of a process tree (Linux /proc), sampled every 0.1 s, and of the tree without its
    root (`dvc repro`'s own process: what is left is the stage it runs).

    ru_maxrss counts the resident pages of memory-mapped files too, which grow with the data a stage
    streams through (and the kernel drops them under pressure); RssAnon is the memory a stage holds."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.peak_children_kb, self.stop = pid, 0, 0, threading.Event()

    def run(self):
        while not self.stop.wait(0.1):
            root, *children = [rss_anon_kb(pid) for pid in tree(self.pid)] or [0]
            self.peak_kb = max(self.peak_kb, root + sum(children))
            self.peak_children_kb = max(self.peak_children_kb, sum(children))


def tree(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [pid] + [p for child in children for p in tree(int(child))]


def rss_anon_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("RssAnon:")), 0)


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", output)


def epoch_seconds(output: str) -> list[float]:
    """Per-epoch training time from Keras' `fit(verbose=2)` lines: `128/128 - 5s - 40ms/step - ...`: the steps times
    the time per step; from a second a step on, Keras prints that in whole seconds (`3s/step`: 2.5 s and 3.4 s alike),
    so then the epoch's own time (`381s`, which also holds the validation pass)."""
    return [
        int(steps) * float(per_step) / 1000 if unit == "ms" else float(total)
        for steps, total, per_step, unit in re.findall(r"^(\d+)/\1 - (\d+)s - ([\d.]+)(ms|s)/step", output, re.M)
    ]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
