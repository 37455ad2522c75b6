"""Compiling and fitting (TensorFlow/Keras): optimizer, task-specific loss and metrics, history.

Classification: softmax + sparse cross-entropy (optionally label-smoothed), accuracy, early stopping on val_loss.
Regression: linear unit on the standardized target, MSE, Huber or MAE, MAE reported in the target's own
unit, early stopping on val_mae.
"""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from transfer_learning import distribute, epoch_samples, files, image_sets, live, networks, paths
from transfer_learning.batches import Batches
from transfer_learning.errors import PipelineError
from transfer_learning.records import Encoding
from transfer_learning.resume import Backup


def optimizer(
    name: str,
    lr: float,
    momentum: float = 0.0,
    schedule: str = "constant",
    total_steps: int = 0,
    warmup_steps: int = 0,
    ema: float = 0.0,
) -> keras.optimizers.Optimizer:
    """`schedule: cosine` warms the learning rate up from 0 to `lr` over `warmup_steps`, then decays it
    to 0 by `total_steps`. The warm-up keeps the first fine-tuning steps, where the new head sends
    large gradients into the pretrained layers, from wrecking the ImageNet weights.

    `ema` > 0 keeps an exponential moving average of the weights (Keras' use_ema: after each step
    average = ema * average + (1 - ema) * weights); `fit` validates and keeps that average, not the last step's
    weights."""
    if schedule == "cosine" and total_steps > warmup_steps:
        lr = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=total_steps - warmup_steps, warmup_target=lr, warmup_steps=warmup_steps
        )
    averaging = {"use_ema": True, "ema_momentum": ema} if ema > 0 else {}
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=momentum, **averaging)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=lr, **averaging)
    return keras.optimizers.Adam(learning_rate=lr, **averaging)


def target_unit_mae(std: float) -> keras.metrics.Metric:
    """MAE of a standardized target, reported in the target's own unit (years, not std devs)."""

    def mae(y_true, y_pred):
        y_true = keras.ops.reshape(keras.ops.cast(y_true, y_pred.dtype), keras.ops.shape(y_pred))
        return keras.ops.mean(keras.ops.abs(y_true - y_pred), axis=-1) * std

    return keras.metrics.MeanMetricWrapper(mae, name="mae")


@keras.saving.register_keras_serializable(package="transfer_learning")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy of class indices against softmax outputs, with the one-hot targets smoothed: the true class
    gets 1 - s + s / classes, every other s / classes. Keras' sparse cross-entropy has no label smoothing.
    Targets given as rows of class weights (mixup's blends, batches.Batches with `classes`) are smoothed alike."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == y_pred.shape[-1] and y_true.shape[-1] != 1:
            weights = keras.ops.cast(y_true, y_pred.dtype)
        else:
            weights = keras.ops.one_hot(
                keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), keras.ops.shape(y_pred)[-1]
            )
        return keras.losses.categorical_crossentropy(weights, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return super().get_config() | {"label_smoothing": self.label_smoothing}


REGRESSION_LOSSES = {"auto": "mse", "mse": "mse", "huber": "huber", "mae": "mae"}  # on the standardized target

# Training steps per call into TensorFlow (Keras' steps_per_execution): the same steps and bits as one call a step
# (tests/test_training.py), without a round trip through Python between them, which costs a small head as much as the
# step itself (train-head on the digits: 74 s -> 58 s, its k-fold included). Callbacks still see every epoch, and
# on_train_batch_end once a call. Under a distribution strategy, one step a call: TF 2.20 cannot run Keras' loop of
# steps over a distributed dataset ("You must feed a value for placeholder tensor").
STEPS_PER_CALL = 64


def compile_for(
    model: keras.Model,
    encoding: Encoding,
    loss: str,
    opt: keras.optimizers.Optimizer,
    *,
    label_smoothing: float = 0.0,
    mixup: float = 0.0,
    steps_per_call: int = STEPS_PER_CALL,
) -> None:
    """label_smoothing: classification only (0: Keras' own sparse cross-entropy). mixup > 0: the model is fed
    one-hot class targets (batches with classes=one_hot_classes(encoding, mixup)), blended while training."""
    if not encoding.is_classification:
        model_loss, metrics = REGRESSION_LOSSES[loss], [target_unit_mae(encoding.std)]
    elif mixup:
        model_loss, metrics = (
            SmoothedSparseCrossentropy(label_smoothing),
            [keras.metrics.CategoricalAccuracy(name="accuracy")],
        )
    else:
        model_loss = (
            SmoothedSparseCrossentropy(label_smoothing) if label_smoothing else "sparse_categorical_crossentropy"
        )
        metrics = ["accuracy"]
    model.compile(
        optimizer=opt,
        loss=model_loss,
        metrics=metrics,
        steps_per_execution=1 if tf.distribute.has_strategy() else steps_per_call,
    )


def compiled_head(n_features: int, head_cfg, cfg, encoding: Encoding, steps_per_epoch: int) -> keras.Model:
    """The dense head (head params `head_cfg`), compiled for training with train_head's params `cfg`: the one place that
    builds it, for the head train-head saves and for each head of the k-fold estimate (crossval.py)."""
    head = networks.build_head(n_features, head_cfg.units, head_cfg.dropout, encoding.n_outputs, encoding.task)
    opt = optimizer(cfg.optimizer, cfg.lr, schedule=cfg.schedule, total_steps=cfg.epochs * steps_per_epoch)
    compile_for(head, encoding, cfg.loss, opt, label_smoothing=cfg.label_smoothing, mixup=cfg.mixup)
    return head


def one_hot_classes(encoding: Encoding, mixup: float) -> int:
    """The `classes` of batches.Batches for a model compiled with compile_for(..., mixup): blending classes needs
    one-hot targets (0: targets as they are)."""
    return len(encoding.classes) if mixup and encoding.is_classification else 0


def class_weights(targets: np.ndarray, mode: str) -> dict[int, float] | None:
    """`class_weight` (train_head, fine_tune) over the class indices a model trains on -> Keras' fit(class_weight=...).
    `balanced`: n_rows / (n_classes * rows of the class), as scikit-learn's compute_class_weight("balanced") (equal,
    tests/test_training.py; written out here, as importing scikit-learn would cost the stage seconds), so each class
    weighs as much in the loss as any other, and the weights average 1 over the rows: the loss keeps its scale.
    `none` -> None: every row 1."""
    if mode == "none":
        return None
    present, counts = np.unique(targets, return_counts=True)
    return {int(c): len(targets) / (len(present) * int(n)) for c, n in zip(present, counts)}


def named_weights(weights: dict[int, float], encoding: Encoding) -> dict[str, float]:
    """The weights by class name, as the metrics files record them."""
    return {encoding.classes[c]: round(w, 6) for c, w in weights.items()}


def monitor(encoding: Encoding) -> str:
    return "val_loss" if encoding.is_classification else "val_mae"


def fit_stage(
    stage: str, p, cfg, strategy, model, train: Batches, val: Batches, encoding: Encoding, live_folder
) -> tuple[pd.DataFrame, dict[int, float] | None, Backup]:
    """The fit of a training stage (train-head, fine-tune; `cfg`: its params section): resumed after the epochs an
    interrupted run finished (resume.Backup), logged epoch by epoch to `live_folder` with a grid of validation images
    and their predictions (live.py, epoch_samples.py), each class weighted by cfg.class_weight over the rows it trains
    on (variants included). -> (history, the class weights or None, the backup: discard() it once the outputs are
    written)."""
    backup = Backup.find(stage, p, strategy, live_folder)
    samples = epoch_samples.Samples.pick(
        stage, val.inputs, image_sets.load("val"), files.load_npy(paths.targets("val")), encoding
    )  # shown with their images
    weights = class_weights(train.targets, cfg.class_weight)
    history = fit(
        model,
        train,
        val,
        epochs=cfg.epochs,
        patience=cfg.patience,
        encoding=encoding,
        callbacks=live.callbacks(live_folder, distribute.is_chief(strategy), backup.epoch, samples),
        backup=backup,
        class_weight=weights,
    )
    return history, weights, backup


def fit(
    model,
    train: Batches,
    val: Batches,
    *,
    epochs: int,
    patience: int,
    encoding: Encoding,
    callbacks: list[keras.callbacks.Callback] = (),
    backup: Backup | None = None,
    class_weight: dict[int, float] | None = None,
) -> pd.DataFrame:
    """Fit with early stopping (best epoch restored); one log line per epoch; `callbacks` too (live.callbacks).
    -> history per epoch.

    `train` reshuffles itself every epoch from (seed, epoch), so Keras must not reorder its batches
    on top (shuffle=False): the order then depends on the params alone, not on the distribution
    strategy (Keras peeks at a batch before training under one) or on the number of workers.

    With an optimizer that averages the weights (optimizer(..., ema=...)), Keras' SwapEMAWeights puts the
    average in the model for validation and at each epoch's end, so early stopping watches, keeps and restores it.

    `backup` (resume.Backup): the fit starts after the epochs it finished, in the state they left (the history
    returned has them too), and backs every epoch up, after every other callback has ended it.

    `class_weight` (class_weights()): each training row's loss is weighted by its class's weight, and so is the training
    accuracy (Keras weighs the metrics alike: balanced weights make it a balanced accuracy); validation is not weighted.
    Keras turns it into per-row sample weights, which every loss here takes (the sparse cross-entropy, the smoothed
    one, MSE). With mixup a blended row counts as the class of its larger share (Keras takes the argmax of the one-hot
    rows); with Beta(0.2, 0.2), the usual mixup, two rows in three have a share above 0.9.
    """
    if epochs == 0:
        for callback in callbacks:  # no epoch to log, but the callbacks still finish (dvclive writes its empty summary)
            callback.on_train_end()
        return pd.DataFrame(columns=["epoch"])
    replicas = model.distribute_strategy.num_replicas_in_sync
    for name, data in (("training", train), ("validation", val)):
        if data.first_batch_rows() % replicas:  # Keras reduces the first batch over the replicas to learn its shapes
            raise PipelineError(
                f"the first {name} batch has {data.first_batch_rows()} rows, which {replicas} replicas cannot share "
                "evenly; "
                f"use a batch size that is a multiple of {replicas} and at most half the {len(data.inputs)} {name} rows"
            )
    print(
        f"training {model.name} on {replicas} replica(s): {len(train)} batches of {train.batch_size} per epoch "
        "(global batches)",
        flush=True,
    )
    stopping = (
        [
            keras.callbacks.EarlyStopping(
                monitor=monitor(encoding), patience=patience, restore_best_weights=True, mode="min"
            )
        ]
        if patience > 0
        else []
    )
    # before the others
    averaging = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if model.optimizer.use_ema else []
    # A loss that overflows (a learning rate far too high) makes every later weight NaN: stop at once, save nothing
    diverged = [keras.callbacks.TerminateOnNaN()]
    callbacks = averaging + diverged + stopping + list(callbacks)
    done, earlier = (backup.epoch, backup.history) if backup else (0, [])
    if done:
        ended = backup.stopped or done >= epochs
        what = (
            f"its training ended at epoch {done} of {epochs}: restoring it"
            if ended
            else f"resuming at epoch {done + 1} of {epochs}"
        )
        print(f"{backup.stage}: {what} from {backup.latest}", flush=True)
    last = done if backup and backup.stopped else epochs  # early stopping ended it there: no epoch is left
    history = model.fit(
        train,
        validation_data=val,
        epochs=last,
        initial_epoch=done,
        shuffle=False,
        verbose=2,
        callbacks=callbacks + ([backup.callback(train, callbacks)] if backup else []),
        class_weight=class_weight,
    )
    frame = pd.DataFrame(earlier + [dict(zip(history.history, values)) for values in zip(*history.history.values())])
    frame.insert(0, "epoch", np.arange(1, len(frame) + 1))
    losses = frame[[c for c in ("loss", "val_loss") if c in frame]].to_numpy(dtype=float)
    if not np.isfinite(losses).all():  # TerminateOnNaN ended the epoch it happened in, which history records
        epoch = int(frame["epoch"].to_numpy()[~np.isfinite(losses).all(axis=1)][0])
        raise PipelineError(
            f"training {model.name}: the loss became NaN or infinite at epoch {epoch}, so no model is "
            "saved; lower the learning rate (train_head.lr for the head, fine_tune.lr for fine-tuning)"
        )
    return frame


def best_epoch(history: pd.DataFrame, encoding: Encoding) -> dict:
    """The restored epoch's figures: {'best_epoch', 'epochs_run', 'train_<m>', 'val_<m>', 'train_loss', 'val_loss'}."""
    if history.empty:
        return {"best_epoch": 0, "epochs_run": 0}
    best = history.loc[history[monitor(encoding)].idxmin()]
    m = encoding.metric
    return {
        "best_epoch": int(best["epoch"]),
        "epochs_run": len(history),
        f"train_{m}": round(float(best[m]), 6),
        f"val_{m}": round(float(best[f"val_{m}"]), 6),
        "train_loss": round(float(best["loss"]), 6),
        "val_loss": round(float(best["val_loss"]), 6),
    }


def score(model: keras.Model, data: Batches, encoding: Encoding) -> float:
    """A saved model's figure on `data`: accuracy, or MAE in the target's unit (the exported model's outputs are in that
    unit; `data`'s targets are standardized)."""
    outputs = model.predict(data, verbose=0)
    actual = np.asarray(data.targets)
    if encoding.is_classification:
        return float(np.mean(np.argmax(outputs, axis=-1) == actual))
    return float(
        np.mean(np.abs(np.asarray(outputs, dtype=np.float64).reshape(-1) - (actual * encoding.std + encoding.mean)))
    )
