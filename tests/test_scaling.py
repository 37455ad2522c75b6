"""Scaling out on existing engines: tf.distribute strategies, a DVC remote, DVC's experiment queue.

Every check starts from a copy of the shared fast run (conftest.fast_run: the digits at 32 px, MobileNetV2
with its ImageNet weights, no dropout so that two replicas compute the same network as one device,
reproduced with train.strategy=default and committed).
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from conftest import FAST_EXPERIMENTS, copy_project, run, stages_run, write_params
from lib import batches, distribute, inference
from lib.errors import PipelineError

pytestmark = pytest.mark.e2e

# Runs a stage script as `dvc repro` would, but on two logical CPU devices: the only way to get two
# replicas on a machine without GPUs. The stage itself is unchanged. (One process per stage, as with
# DVC: two strategies in one process would share TensorFlow's collective-op keys.)
TWO_CPUS = """
import runpy, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, "stages")
runpy.run_path(sys.argv[1], run_name="__main__")
"""

HEAD_OUTPUTS = ["models/head.keras", "metrics/train_head.json", "dvclive/train_head/metrics.json", "dvclive/train_head/plots/metrics/eval/loss.tsv"]


def env() -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}


def weights(path: Path) -> list[np.ndarray]:
    return keras.models.load_model(path, safe_mode=True, compile=False).get_weights()


def assert_same_model(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def assert_same_metrics(a: Path, b: Path) -> None:
    ma, mb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ma.keys() == mb.keys() and ma["epochs_run"] == mb["epochs_run"] > 0
    for key in ma:
        assert mb[key] == pytest.approx(ma[key], abs=1e-4), key


@pytest.fixture
def project(fast_run) -> Path:
    """The reference: the shared fast run (train.strategy=default, no dropout), read only."""
    assert yaml.safe_load((fast_run.project / "params.yaml").read_text())["train"]["strategy"] == "default"
    return fast_run.project


def test_mirrored_on_two_logical_cpus_matches_default(project, tmp_path):
    mirrored = copy_project(project, tmp_path / "mirrored")
    write_params(mirrored, {"train.strategy": "mirrored"})
    # The training stages (the extraction stages run their models through the same strategy.scope() and replica batches)
    for stage, model in (("train_head", "training head on 2 replica(s)"), ("fine_tune", "training top_model on 2 replica(s)")):
        result = run([sys.executable, "-c", TWO_CPUS, f"stages/{stage}.py"], mirrored)
        assert "train.strategy=mirrored: 2 replica(s)" in result.stdout and model in result.stdout, result.stdout  # the model runs under it
    assert_same_model(mirrored / "models/head.keras", project / "models/head.keras")
    assert_same_model(mirrored / "models/model.keras", project / "models/model.keras")
    assert_same_metrics(mirrored / "metrics/train_head.json", project / "metrics/train_head.json")
    assert_same_metrics(mirrored / "metrics/fine_tune.json", project / "metrics/fine_tune.json")


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
    workers = [subprocess.Popen([sys.executable, "stages/train_head.py"], cwd=copy, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env() | {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
                                             "TMPDIR": str(tmp_path / f"tmp{i}")})
               for i, copy in enumerate(copies)]
    try:
        outputs = [worker.communicate(timeout=420)[0] for worker in workers]
    finally:  # bounded: a worker that waits for a dead peer never outlives the test
        for worker in workers:
            worker.kill()
    for i, (worker, output) in enumerate(zip(workers, outputs)):
        assert worker.returncode == 0, output
        assert f"train.strategy=multi_worker: 2 replica(s), worker {i} of a cluster" in output and "training head on 2 replica(s)" in output
    chief, other = copies
    assert all((chief / output).exists() for output in HEAD_OUTPUTS), "the chief writes the stage's outputs"
    assert not any((other / output).exists() for output in HEAD_OUTPUTS), "a non-chief worker writes nothing into the project"
    assert list((tmp_path / "tmp1").iterdir()) == [], "its temporary copy is deleted"
    assert_same_model(chief / "models/head.keras", project / "models/head.keras")
    assert_same_metrics(chief / "metrics/train_head.json", project / "metrics/train_head.json")


@pytest.mark.parametrize("tf_config, message", [
    (None, "train.strategy=multi_worker needs TF_CONFIG on every machine, e.g. TF_CONFIG='{\"cluster\""),
    ("{cluster: x}", "TF_CONFIG is not valid JSON (Expecting property name enclosed in double quotes"),
    ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG needs a 'cluster' and a 'task'"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}',
     'TF_CONFIG task {"type": "worker", "index": 2} is not in its cluster {"worker": ["a:1", "b:1"]}'),
])
def test_multi_worker_without_a_usable_tf_config_is_one_line(monkeypatch, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(PipelineError) as info:
        distribute.strategy("multi_worker")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


# How tf.distribute splits batches of 1..10 rows over 2 and 4 replicas (it is TF's rule, not ours).
SHARES = """
import json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 4)
devices = [device.name for device in tf.config.list_logical_devices("CPU")]
shares = {}
for replicas in (2, 4):
    strategy = tf.distribute.MirroredStrategy(devices[:replicas])
    for rows in range(1, 11):
        batch = next(iter(strategy.experimental_distribute_dataset(tf.data.Dataset.range(rows).batch(rows))))
        shares[f"{rows}/{replicas}"] = [int(tf.size(part)) for part in strategy.experimental_local_results(batch)]
print(json.dumps(shares))
"""


def test_batches_never_leave_a_replica_without_rows():
    shares = json.loads(subprocess.run([sys.executable, "-c", SHARES], capture_output=True, text=True, check=True).stdout)
    for key, parts in shares.items():
        rows, replicas = map(int, key.split("/"))
        assert sum(parts) == rows and batches.whole_shares(rows, replicas) == (min(parts) > 0), (key, parts)

    assert [batches.batch_count(rows, 8) for rows in (0, 1, 8, 9, 17)] == [0, 1, 1, 2, 3], "one replica: never joined"
    assert batches.batch_count(17, 8, replicas=2) == 2, "8 + 9 rows: the lone 17th row joins the batch before it"
    assert batches.batch_count(18, 8, replicas=2) == 3
    data = batches.Batches(np.arange(17), np.arange(17), 8, seed=3, replicas=2)
    assert [len(data[i][0]) for i in range(len(data))] == [8, 9] and data.first_batch_rows() == 8
    assert sorted(np.concatenate([data[i][1] for i in range(len(data))])) == list(range(17)), "every row once"
    with pytest.raises(PipelineError, match="1 rows in batches of 8 cannot give each of 2 replicas a row"):
        batches.batch_count(1, 8, replicas=2)
    assert [(c.start, c.stop) for c in inference.chunks(1100)] == [(0, 512), (512, 1024), (1024, 1100)]
    assert [(c.start, c.stop) for c in inference.chunks(1030)] == [(0, 512), (512, 1030)], "6 rows cannot make a batch"


def test_push_to_a_remote_then_a_fresh_clone_pulls_everything_up_to_date(project, tmp_path):
    work = copy_project(project, tmp_path / "work")
    run(["dvc", "remote", "add", "-d", "storage", str(tmp_path / "remote")], work)
    run(["git", "commit", "-qam", "add a DVC remote"], work)
    run(["dvc", "push"], work)
    assert any((tmp_path / "remote").rglob("*")), "the remote holds the cached outputs"

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(work), str(clone)], tmp_path)
    assert not (clone / "models/model.keras").exists() and not (clone / "data/features").exists()
    run(["dvc", "pull"], clone)
    assert (clone / "models/model.keras").read_bytes() == (project / "models/model.keras").read_bytes()
    assert np.array_equal(np.load(clone / "data/features/train_features.npy"), np.load(project / "data/features/train_features.npy"))
    assert "Data and pipelines are up to date." in run(["dvc", "status"], clone).stdout
    assert stages_run(run(["dvc", "repro"], clone).stdout) == [], "nothing reruns after a pull"


def test_queued_experiments_run_two_at_a_time_and_are_compared(fast_run):
    """The fast run's experiments went through DVC's queue, two at a time, each in a temporary copy of the project
    holding only git/DVC-tracked files (.dvc/tmp/exps): a data.source outside the project works there when absolute;
    a relative one leaving the project fails before any stage runs."""
    outcome = dict(re.findall(r"^\w+\s+([\w-]+)\s.*\b(Success|Failed)\b", fast_run.outputs["queue"], re.M))
    assert outcome == {name: "Success" for name in FAST_EXPERIMENTS} | {"other-data": "Success", "relative-data": "Failed"}, \
        fast_run.outputs["queue"] + fast_run.outputs["relative-data"]
    assert stages_run(fast_run.outputs["other-data"]) == ["ingest", "split"] and "split: train 24, val 6, test 6" in fast_run.outputs["other-data"]
    # DVC hashes a stage's dependencies before running it: in the copy, ../other_images is .dvc/tmp/exps/other_images
    assert re.search(r"failed to reproduce 'ingest': .*No such file or directory: '.*/\.dvc/tmp/exps/other_images'", fast_run.outputs["relative-data"])
    assert stages_run(fast_run.outputs["relative-data"]) == [], "nothing ran"

    shown = json.loads(run(["dvc", "exp", "show", "--json"], fast_run.project).stdout)
    ran = {exp["name"]: exp["revs"][0]["data"] for commit in shown for exp in (commit.get("experiments") or []) if exp.get("name")}
    assert ran["lower-lr"]["params"]["params.yaml"]["data"]["fine_tune"]["lr"] == 0.0001
    assert all(0 <= ran[name]["metrics"]["metrics/evaluate.json"]["data"]["fine_tuned"]["accuracy"] <= 1 for name in FAST_EXPERIMENTS)
    table = run(["dvc", "exp", "show", "--csv"], fast_run.project).stdout.splitlines()
    assert "fine_tune.lr" in table[0].split(",") and "fine_tuned.accuracy" in table[0].split(",")
