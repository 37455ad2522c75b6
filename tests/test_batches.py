"""transfer_learning/batches.py: global batches split over replicas, never leaving one without rows."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from transfer_learning import batches, inference
from transfer_learning.errors import PipelineError

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
    shares = json.loads(
        subprocess.run([sys.executable, "-c", SHARES], capture_output=True, text=True, check=True).stdout
    )
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


def test_predict_to_npy_writes_what_keras_predict_returns_batch_by_batch(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3))
    activations = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    model = keras.Model(inputs, [keras.layers.GlobalAveragePooling2D()(activations), activations])
    images = np.random.default_rng(0).integers(0, 256, (150, 8, 8, 3), dtype=np.uint8)  # 64 + 64 + a last 22
    out = [tmp_path / "features.npy", tmp_path / "activations.npy"]
    shapes = inference.predict_to_npy(model, images, out, np.float32, desc="test")
    expected = model.predict(batches.Batches(images, None, inference.BATCH_SIZE), verbose=0)
    assert shapes == [(150, 4), (150, 6, 6, 4)]
    for path, values in zip(out, expected):
        written = np.load(path)
        assert written.dtype == np.float32 and written.tobytes() == values.tobytes(), path.name


# predict_to_npy under MirroredStrategy on two logical CPUs against the default strategy, the same model and images
MIRRORED = """
import sys
from pathlib import Path
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from transfer_learning import inference
images = np.random.default_rng(0).integers(0, 256, (150, 8, 8, 3), dtype=np.uint8)
for name, strategy in [("default", tf.distribute.get_strategy()), ("mirrored", tf.distribute.MirroredStrategy())]:
    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 8, 3))
        activations = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
        model = keras.Model(inputs, [keras.layers.GlobalAveragePooling2D()(activations), activations])
    paths = [Path(sys.argv[1]) / f"{name}_{i}.npy" for i in range(2)]
    inference.predict_to_npy(model, images, paths, np.float32, "test", replicas=strategy.num_replicas_in_sync)
"""


def test_predict_to_npy_splits_each_batch_over_the_replicas_to_the_same_outputs(tmp_path):
    subprocess.run([sys.executable, "-c", MIRRORED, str(tmp_path)], capture_output=True, text=True, check=True)
    for i in range(2):
        default, mirrored = np.load(tmp_path / f"default_{i}.npy"), np.load(tmp_path / f"mirrored_{i}.npy")
        assert default.shape == mirrored.shape and len(default) == 150
        np.testing.assert_allclose(mirrored, default, atol=1e-6)


def test_mixup_blends_rows_and_their_one_hot_targets_in_pairs_anew_each_epoch():
    inputs = np.eye(20, dtype=np.float32)  # row i is e_i: a blend w * e_a + (1 - w) * e_b shows a, b and w
    labels = np.arange(20) % 3
    data = batches.Batches(inputs, labels, 8, seed=1, classes=3, mixup=0.4)
    x, y = data[0]
    rows = np.sort(data.order[:8])
    assert y.shape == (8, 3) and np.allclose(y.sum(axis=1), 1) and np.allclose(x.sum(axis=1), 1)
    partners = []
    for xi, yi, own in zip(x, y, rows):
        used = np.flatnonzero(xi)
        assert set(used) <= set(rows) and xi[own] > 0, "a blend of the row with a row of the same batch"
        other = next((r for r in used if r != own), own)
        partners.append(other)
        np.testing.assert_allclose(
            yi, xi[own] * np.eye(3)[labels[own]] + (1 - xi[own]) * np.eye(3)[labels[other]], atol=1e-6
        )
    assert sorted(partners) == list(rows), "the partners are a permutation of the batch"
    assert any(partner != own for partner, own in zip(partners, rows)), "rows were blended"
    # reproducible
    np.testing.assert_array_equal(batches.Batches(inputs, labels, 8, seed=1, classes=3, mixup=0.4)[0][0], x)
    data.on_epoch_end()
    assert not np.array_equal(data[0][0], x), "a new blend each epoch"
    # one-hot, unblended
    np.testing.assert_array_equal(batches.Batches(inputs, labels, 8, classes=3)[0][1], np.eye(3)[labels[:8]])
    with pytest.raises(ValueError, match="seed"):
        batches.Batches(inputs, labels, 8, classes=3, mixup=0.4)
