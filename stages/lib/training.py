"""Compiling and fitting (TensorFlow/Keras): seeds, optimizer, task-specific loss and metrics, history.

Classification: softmax + sparse cross-entropy, accuracy, early stopping on val_loss.
Regression: linear unit on the standardized target, MSE or Huber, MAE reported in the target's own
unit, early stopping on val_mae.
"""
from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from lib import files
from lib.errors import PipelineError


def make_deterministic(seed: int, threads: int | None = None) -> None:
    """Same inputs and params -> same weights, bit for bit (Python, NumPy and TF seeds; deterministic ops).

    `threads` fixes TensorFlow's pool of threads for one op: oneDNN splits the sums of some gradients
    (convolution weights) over that many threads, so their last bits depend on it. Call this before
    anything starts TensorFlow's runtime (even the distribution strategy)."""
    if threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def optimizer(name: str, lr: float, momentum: float = 0.0, schedule: str = "constant", total_steps: int = 0,
              warmup_steps: int = 0) -> keras.optimizers.Optimizer:
    """`schedule: cosine` warms the learning rate up from 0 to `lr` over `warmup_steps`, then decays it
    to 0 by `total_steps`. The warm-up keeps the first fine-tuning steps, where the new head sends
    large gradients into the pretrained layers, from wrecking the ImageNet weights."""
    if schedule == "cosine" and total_steps > warmup_steps:
        lr = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=total_steps - warmup_steps,
                                                    warmup_target=lr, warmup_steps=warmup_steps)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=lr)
    return keras.optimizers.Adam(learning_rate=lr)


def target_unit_mae(std: float) -> keras.metrics.Metric:
    """MAE of a standardized target, reported in the target's own unit (years, not std devs)."""
    def mae(y_true, y_pred):
        y_true = keras.ops.reshape(keras.ops.cast(y_true, y_pred.dtype), keras.ops.shape(y_pred))
        return keras.ops.mean(keras.ops.abs(y_true - y_pred), axis=-1) * std
    return keras.metrics.MeanMetricWrapper(mae, name="mae")


def compile_for(model: keras.Model, encoding: dict, loss: str, opt: keras.optimizers.Optimizer) -> None:
    if encoding["task"] == "classification":
        model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    else:
        model.compile(optimizer=opt, loss="huber" if loss == "huber" else "mse", metrics=[target_unit_mae(encoding["std"])])


def metric_name(encoding: dict) -> str:
    return "accuracy" if encoding["task"] == "classification" else "mae"


def monitor(encoding: dict) -> str:
    return "val_loss" if encoding["task"] == "classification" else "val_mae"


def fit(model, train: Batches, val: Batches, epochs: int, patience: int, encoding: dict,
        callbacks: list[keras.callbacks.Callback] = ()) -> pd.DataFrame:
    """Fit with early stopping (best epoch restored); one log line per epoch; `callbacks` too (live.callbacks).
    -> history per epoch.

    `train` reshuffles itself every epoch from (seed, epoch), so Keras must not reorder its batches
    on top (shuffle=False): the order then depends on the params alone, not on the distribution
    strategy (Keras peeks at a batch before training under one) or on the number of workers.
    """
    if epochs == 0:
        for callback in callbacks:  # no epoch to log, but the callbacks still finish (dvclive writes its empty summary)
            callback.on_train_end()
        return pd.DataFrame(columns=["epoch"])
    replicas = model.distribute_strategy.num_replicas_in_sync
    for name, data in (("training", train), ("validation", val)):
        if data.first_batch_rows() % replicas:  # Keras reduces the first batch over the replicas to learn its shapes
            raise PipelineError(f"the first {name} batch has {data.first_batch_rows()} rows, which {replicas} replicas cannot share evenly; "
                                f"use a batch size that is a multiple of {replicas} and at most half the {len(data.inputs)} {name} rows")
    print(f"training {model.name} on {replicas} replica(s): {len(train)} batches of {train.batch_size} per epoch (global batches)", flush=True)
    stopping = [keras.callbacks.EarlyStopping(monitor=monitor(encoding), patience=patience, restore_best_weights=True,
                                              mode="min")] if patience > 0 else []
    history = model.fit(train, validation_data=val, epochs=epochs, callbacks=stopping + list(callbacks), shuffle=False, verbose=2)
    frame = pd.DataFrame(history.history)
    frame.insert(0, "epoch", np.arange(1, len(frame) + 1))
    return frame


def best_epoch(history: pd.DataFrame, encoding: dict) -> dict:
    """The restored epoch's figures: {'best_epoch', 'epochs_run', 'train_<m>', 'val_<m>', 'train_loss', 'val_loss'}."""
    if history.empty:
        return {"best_epoch": 0, "epochs_run": 0}
    best = history.loc[history[monitor(encoding)].idxmin()]
    m = metric_name(encoding)
    return {"best_epoch": int(best["epoch"]), "epochs_run": len(history),
            f"train_{m}": round(float(best[m]), 6), f"val_{m}": round(float(best[f"val_{m}"]), 6),
            "train_loss": round(float(best["loss"]), 6), "val_loss": round(float(best["val_loss"]), 6)}


class Batches(keras.utils.PyDataset):
    """Batches of a memory-mapped array (uint8 images, float32 activations or features) as
    float32, with their targets: memory holds a batch, not the dataset.

    With `seed`, the order is reshuffled every epoch from (seed, epoch), so runs are reproducible.
    `batch_size` is global: under a tf.distribute strategy Keras splits each batch over the
    `replicas` (with multi_worker, every worker reads the same batches and keeps its share).
    """

    def __init__(self, inputs: np.ndarray, targets: np.ndarray | None, batch_size: int, seed: int | None = None,
                 replicas: int = 1):
        super().__init__(workers=1, use_multiprocessing=False)
        self.inputs, self.targets, self.batch_size, self.seed = inputs, targets, batch_size, seed
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
        stop = len(self.inputs) if index == self.n_batches - 1 else start + self.batch_size  # the last one takes the rest
        rows = np.sort(self.order[start:stop])
        x = np.asarray(self.inputs[rows], dtype=np.float32)
        return x if self.targets is None else (x, self.targets[rows])

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()


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
        raise PipelineError(f"{rows} rows in batches of {batch_size} cannot give each of {replicas} replicas a row of every batch; "
                            f"try another batch size (a multiple of {replicas}) or fewer replicas")
    return count


def whole_shares(rows: int, replicas: int) -> bool:
    """Whether tf.distribute splits a batch of `rows` with a row for every replica (it hands them
    ceil(rows / replicas) rows each, in order: 5 rows over 4 replicas are 2, 2, 1 and 0)."""
    return (replicas - 1) * math.ceil(rows / replicas) < rows


def batches(inputs: Path, targets: Path | None, batch_size: int, seed: int | None = None, replicas: int = 1) -> Batches:
    """Batches over the .npy `inputs` (memory-mapped) and `targets` (None: inputs only)."""
    return Batches(files.load_npy(inputs, mmap=True), None if targets is None else files.load_npy(targets), batch_size, seed, replicas)
