"""Distribution strategies end to end: train-head and fine-tune under train.strategy mirrored (two logical CPUs) and
multi_worker (two local processes) match the default strategy."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from support.projects import (
    copy_project,
    run,
    tool_env,
    write_params,
)
from transfer_learning import networks

pytestmark = pytest.mark.e2e

# Runs a stage script as `dvc repro` would, but on two logical CPU devices: the only way to get two
# replicas on a machine without GPUs. The stage itself is unchanged. (One process per stage, as with
# DVC: two strategies in one process would share TensorFlow's collective-op keys.)
TWO_CPUS = """
import runpy, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
runpy.run_module(sys.argv[1], run_name="__main__", alter_sys=True)
"""


HEAD_OUTPUTS = [
    "models/head.keras",
    "metrics/train_head.json",
    "dvclive/train_head/metrics.json",
    "dvclive/train_head/plots/metrics/eval/loss.tsv",
]


def weights(path: Path) -> list[np.ndarray]:
    return keras.models.load_model(path, safe_mode=True, compile=False).get_weights()


def assert_same_model(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def flat(metrics, prefix: str = "") -> dict:
    """{'kfold': {'per_fold': [a, b]}} -> {'kfold.per_fold.0': a, 'kfold.per_fold.1': b}"""
    items = metrics.items() if isinstance(metrics, dict) else enumerate(metrics) if isinstance(metrics, list) else None
    if items is None:
        return {prefix: metrics}
    return {key: value for k, v in items for key, value in flat(v, f"{prefix}.{k}" if prefix else str(k)).items()}


def assert_same_metrics(a: Path, b: Path, leave_out: str | None = None) -> None:
    """Every figure of two metrics files to 1e-4, but the `leave_out` section's (one run computed it, the other did
    not)."""
    ma, mb = (flat({k: v for k, v in json.loads(path.read_text()).items() if k != leave_out}) for path in (a, b))
    assert ma.keys() == mb.keys() and ma["epochs_run"] == mb["epochs_run"] > 0
    for key in ma:
        assert mb[key] == pytest.approx(ma[key], abs=1e-4), key


@pytest.fixture
def project(fast_run) -> Path:
    """The reference: the shared fast run (train.strategy=default, no dropout), read only."""
    assert yaml.safe_load((fast_run.project / "params.yaml").read_text())["train"]["strategy"] == "default"
    return fast_run.project


def test_mirrored_head_on_two_logical_cpus_matches_default(project, tmp_path):
    """Without the k-fold estimate (train_head.folds: 0): its heads under a distribution strategy are the
    multi-worker test's."""
    mirrored = copy_project(project, tmp_path / "mirrored")
    write_params(mirrored, {"train.strategy": "mirrored", "train_head.folds": 0})
    result = run([sys.executable, "-c", TWO_CPUS, "stages.train_head"], mirrored)
    assert (
        "train.strategy=mirrored: 2 replica(s)" in result.stdout and "training head on 2 replica(s)" in result.stdout
    ), result.stdout
    assert_same_model(mirrored / "models/head.keras", project / "models/head.keras")
    assert "kfold" in json.loads((project / "metrics/train_head.json").read_text())
    assert_same_metrics(mirrored / "metrics/train_head.json", project / "metrics/train_head.json", leave_out="kfold")


def test_mirrored_fine_tune_on_two_logical_cpus_matches_default(project, tmp_path):
    """Fine-tuning from the same head, each batch split between two replicas: the loss scaling and the gradient sum must
    equal the single device's to rounding. Batches of 178 (13 steps, not the fast run's 68): fine-tuning amplifies any
    difference in its start about 1.14 times a step (a head 7e-8 off gave weights 4e-4 apart after 68 steps), so a
    short run keeps a kernel's rounding on another CPU from growing into a difference the bound would take for a bug."""
    # even, and at most half the 359 validation rows (transfer_learning/training.py: fit)
    few_steps = {"fine_tune.batch_size": 178}
    default, mirrored = copy_project(project, tmp_path / "default"), copy_project(project, tmp_path / "mirrored")
    write_params(default, few_steps)
    write_params(mirrored, few_steps | {"train.strategy": "mirrored"})
    run([sys.executable, "-m", "stages.fine_tune"], default)
    result = run([sys.executable, "-c", TWO_CPUS, "stages.fine_tune"], mirrored)
    assert (
        "train.strategy=mirrored: 2 replica(s)" in result.stdout
        and "training top_model on 2 replica(s)" in result.stdout
    ), result.stdout
    tuned = keras.models.load_model(default / "models/model.keras", safe_mode=True, compile=False).get_layer(
        "mobilenetv2_0.35_224"
    )
    imagenet = networks.build_base("mobilenet_v2", 0.35, "imagenet")
    moved = np.abs(tuned.get_layer("Conv_1").kernel.numpy() - imagenet.get_layer("Conv_1").kernel.numpy()).max()
    assert moved > 100 * 1e-5, (
        f"fine-tuning moved Conv_1 by {moved} at most: too little for the comparison below to mean anything"
    )
    assert_same_model(mirrored / "models/model.keras", default / "models/model.keras")
    assert_same_metrics(mirrored / "metrics/fine_tune.json", default / "metrics/fine_tune.json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_two_local_processes_chief_writes_and_matches_default(project, tmp_path):
    """Two workers on loopback ports, each in its own copy of the project, so we can see who wrote what."""
    copies = [copy_project(project, tmp_path / f"worker{i}") for i in range(2)]
    cluster = {"worker": [f"localhost:{free_port()}", f"localhost:{free_port()}"]}
    for i, copy in enumerate(copies):
        write_params(copy, {"train.strategy": "multi_worker"})
        for output in HEAD_OUTPUTS:
            (copy / output).unlink()
        (tmp_path / f"tmp{i}").mkdir()
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "stages.train_head"],
            cwd=copy,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=tool_env(
                {
                    "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
                    "TMPDIR": str(tmp_path / f"tmp{i}"),
                }
            ),
        )
        for i, copy in enumerate(copies)
    ]
    try:
        outputs = [worker.communicate(timeout=420)[0] for worker in workers]
    finally:  # bounded: a worker that waits for a dead peer never outlives the test
        for worker in workers:
            worker.kill()
    for i, (worker, output) in enumerate(zip(workers, outputs)):
        assert worker.returncode == 0, output
        assert (
            f"train.strategy=multi_worker: 2 replica(s), worker {i} of a cluster" in output
            and "training head on 2 replica(s)" in output
        )
    chief, other = copies
    assert all((chief / output).exists() for output in HEAD_OUTPUTS), "the chief writes the stage's outputs"
    assert not any((other / output).exists() for output in HEAD_OUTPUTS), (
        "a non-chief worker writes nothing into the project"
    )
    assert list((tmp_path / "tmp1").iterdir()) == [], "its temporary copy is deleted"
    assert_same_model(chief / "models/head.keras", project / "models/head.keras")
    assert_same_metrics(chief / "metrics/train_head.json", project / "metrics/train_head.json")
