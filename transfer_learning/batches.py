"""Feeding models from memory-mapped arrays (TensorFlow/Keras): batches that hold a batch of the data, not all of it.

Training (train-head, fine-tune), inference (extract-features) and evaluate read their
.npy inputs through Batches; under a tf.distribute strategy each global batch is split over the replicas.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np

from transfer_learning import files
from transfer_learning.errors import PipelineError


class Batches(keras.utils.PyDataset):
    """Batches of a memory-mapped array (uint8 images, float32 activations or features) as
    float32, with their targets: memory holds a batch, not the dataset.

    With `seed`, the order is reshuffled every epoch from (seed, epoch), so runs are reproducible.
    `batch_size` is global: under a tf.distribute strategy Keras splits each batch over the
    `replicas` (with multi_worker, every worker reads the same batches and keeps its share).
    `classes` > 0 gives class targets as one-hot rows (what mixup blends); `mixup` > 0 (with a seed) blends the rows
    of every batch (blend), a new blend each epoch.
    """

    def __init__(
        self,
        inputs: np.ndarray,
        targets: np.ndarray | None,
        batch_size: int,
        *,
        seed: int | None = None,
        replicas: int = 1,
        classes: int = 0,
        mixup: float = 0.0,
    ):
        super().__init__(workers=1, use_multiprocessing=False)
        if mixup and seed is None:
            raise ValueError("mixup needs a seed")
        self.inputs, self.targets, self.batch_size, self.seed = inputs, targets, batch_size, seed
        self.classes, self.mixup = classes, mixup
        self.n_batches = batch_count(len(inputs), batch_size, replicas)
        self.epoch = 0
        self.order = self._order()

    def _order(self) -> np.ndarray:
        if self.seed is None:
            return np.arange(len(self.inputs))
        return np.random.default_rng((self.seed, self.epoch)).permutation(len(self.inputs))

    def __len__(self) -> int:
        return self.n_batches

    def first_batch_rows(self) -> int:
        return self.batch_size if self.n_batches > 1 else len(self.inputs)

    def __getitem__(self, index: int):
        start = index * self.batch_size
        # the last one takes the rest
        stop = len(self.inputs) if index == self.n_batches - 1 else start + self.batch_size
        rows = np.sort(self.order[start:stop])
        x = np.asarray(self.inputs[rows], dtype=np.float32)
        if self.targets is None:
            return x
        y = np.eye(self.classes, dtype=np.float32)[self.targets[rows]] if self.classes else self.targets[rows]
        if self.mixup:
            x, y = blend(x, y, self.mixup, np.random.default_rng((self.seed, self.epoch, index)))
        return x, y

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()


def blend(x: np.ndarray, y: np.ndarray, alpha: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """mixup (Zhang et al., 2018): row i becomes w_i * row i + (1 - w_i) * row j of the same batch (j: a random
    permutation), its target alike (one-hot rows, or a number), with w_i ~ Beta(alpha, alpha)."""
    weight = rng.beta(alpha, alpha, size=len(x)).astype(np.float32)
    partner = rng.permutation(len(x))

    def mix(a: np.ndarray) -> np.ndarray:
        w = weight.reshape((-1,) + (1,) * (a.ndim - 1)).astype(a.dtype)
        return w * a + (1 - w) * a[partner]

    return mix(x), mix(y)


def batch_count(rows: int, batch_size: int, replicas: int = 1) -> int:
    """Batches of `batch_size` rows, the last one taking the rest. Under tf.distribute, a smaller last
    batch that would leave a replica without rows (1 row over 2 replicas) joins the one before it:
    TF 2.20's oneDNN convolutions (CPU) return a wrong shape for an empty batch. One replica
    (train.strategy=default) never joins batches."""
    full, rest = divmod(rows, batch_size)
    count = full + (rest > 0)
    if full and rest and not whole_shares(rest, replicas):
        count -= 1
    last = rows - (count - 1) * batch_size
    if count and not (whole_shares(last, replicas) and (count == 1 or whole_shares(batch_size, replicas))):
        raise PipelineError(
            f"{rows} rows in batches of {batch_size} cannot give each of {replicas} replicas a row of every batch; "
            f"try another batch size (a multiple of {replicas}) or fewer replicas"
        )
    return count


def whole_shares(rows: int, replicas: int) -> bool:
    """Whether tf.distribute splits a batch of `rows` with a row for every replica (it hands them
    ceil(rows / replicas) rows each, in order: 5 rows over 4 replicas are 2, 2, 1 and 0)."""
    return (replicas - 1) * math.ceil(rows / replicas) < rows


def from_files(
    inputs: Path,
    targets: Path | None,
    batch_size: int,
    *,
    seed: int | None = None,
    replicas: int = 1,
    classes: int = 0,
    mixup: float = 0.0,
) -> Batches:
    """Batches over the .npy `inputs` (memory-mapped) and `targets` (None: inputs only)."""
    return Batches(
        files.load_npy(inputs, mmap=True),
        None if targets is None else files.load_npy(targets),
        batch_size,
        seed=seed,
        replicas=replicas,
        classes=classes,
        mixup=mixup,
    )
