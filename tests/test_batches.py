"""lib/batches.py: global batches split over replicas, never leaving one without rows."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lib import batches, inference
from lib.errors import PipelineError

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
