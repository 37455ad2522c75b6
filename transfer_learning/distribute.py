"""Where the models run: TensorFlow's own distribution strategies, picked by `train.strategy`.

    default       one device (tf.distribute.get_strategy()): the byte-reproducible reference
    mirrored      tf.distribute.MirroredStrategy over every local GPU (without GPUs: every logical
                  CPU device, which is how the tests get two replicas on one CPU)
    multi_worker  tf.distribute.MultiWorkerMirroredStrategy: the same stage command on every machine,
                  each told the cluster and its own index by the TF_CONFIG environment variable

Batch sizes in params.yaml are global: each step's batch is split over the replicas and the
gradients are summed (all-reduce), so `mirrored` on N devices trains like `default` with the same
batch size, up to float rounding, dropout masks and batch order.
Stages build, compile and run their models inside `strategy.scope()`; with multi_worker only the
chief (worker 0) writes the stage's outputs, the others a temporary copy (`only_chief_writes`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Iterator

import tensorflow as tf

from transfer_learning.errors import PipelineError

TF_CONFIG_EXAMPLE = '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'


def strategy(name: str) -> tf.distribute.Strategy:
    """The strategy for `train.strategy`. Call it first: multi_worker must start before any TF op."""
    if name == "multi_worker":
        check_tf_config(os.environ.get("TF_CONFIG", ""))
        chosen = KerasMultiWorkerStrategy()
    elif name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        chosen = tf.distribute.MirroredStrategy([device.name for device in devices])
    else:
        chosen = tf.distribute.get_strategy()
    print(
        f"train.strategy={name}: {chosen.num_replicas_in_sync} replica(s)"
        + (f", worker {chosen.cluster_resolver.task_id} of a cluster" if name == "multi_worker" else ""),
        flush=True,
    )
    return chosen


def check_tf_config(raw: str) -> None:
    """TF_CONFIG must name the cluster's workers and this process's place in it."""
    if not raw.strip():
        raise PipelineError(
            f"train.strategy=multi_worker needs TF_CONFIG on every machine, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}' "
            "(index 0 on the chief, 1, 2, ... on the others); see docs/scaling.md"
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise PipelineError(f"TF_CONFIG is not valid JSON ({exc}); expected e.g. {TF_CONFIG_EXAMPLE}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster or not isinstance(task, dict):
        raise PipelineError(f"TF_CONFIG needs a 'cluster' and a 'task'; expected e.g. {TF_CONFIG_EXAMPLE}")
    members = cluster.get(task.get("type"))
    index = task.get("index")
    if not isinstance(members, list) or not isinstance(index, int) or not 0 <= index < len(members):
        raise PipelineError(f"TF_CONFIG task {json.dumps(task)} is not in its cluster {json.dumps(cluster)}")


def is_chief(chosen: tf.distribute.Strategy) -> bool:
    """Whether this process writes the stage's outputs: always, except on multi_worker's non-chief workers."""
    return chosen.extended.should_checkpoint


@contextlib.contextmanager
def only_chief_writes(chosen: tf.distribute.Strategy) -> Iterator[None]:
    """Where the stage writes its outputs inside this block: the project on the chief (or under any other strategy);
    on the other multi_worker workers a temporary folder, entered for the block and then deleted. Every worker still
    runs the same saving code, as Keras' multi-worker guide asks (saving may read synchronized variables). Outputs
    are written by their project paths (paths.*), which are relative; read any input before the block."""
    if is_chief(chosen):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="non-chief-outputs-") as tmp, contextlib.chdir(tmp):
        yield


class KerasMultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy as Keras 3's model.fit calls it.

    Keras 3.12 passes Strategy.reduce a whole (x, y) batch (to learn its shapes) and scalar logs
    with axis=0, which MultiWorkerMirroredStrategy refuses (keras-team/keras#20585: Keras 3 does not
    support it out of the box). This reduces each tensor on its own, scalars across replicas only,
    which is what Keras does with single-machine strategies. Everything else is TensorFlow's.
    """

    def reduce(self, reduce_op, value, axis):
        def one(tensor):
            rank = self.experimental_local_results(tensor)[0].shape.rank
            return super(KerasMultiWorkerStrategy, self).reduce(reduce_op, tensor, axis if rank else None)

        return tf.nest.map_structure(one, value)
