"""Compiling options (transfer_learning/training.py): label smoothing, the regression losses, and the saved model's
score."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from transfer_learning import batches, model_files, networks, training
from transfer_learning.records import Encoding


def test_label_smoothing_is_cross_entropy_against_smoothed_one_hot_targets():
    y_true = np.array([0, 2, 1], dtype=np.int32)
    y_pred = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]], dtype=np.float32)
    smoothed = np.eye(3)[y_true] * 0.8 + 0.2 / 3  # s = 0.2: 1 - s + s/3 for the class, s/3 elsewhere
    want = -(smoothed * np.log(y_pred)).sum(axis=1).mean()
    got = float(training.SmoothedSparseCrossentropy(0.2)(y_true, y_pred))
    assert got == pytest.approx(want, rel=1e-5)
    plain = float(keras.losses.SparseCategoricalCrossentropy()(y_true, y_pred))
    assert float(training.SmoothedSparseCrossentropy(0.0)(y_true, y_pred)) == pytest.approx(plain, rel=1e-5)
    assert got != pytest.approx(plain, rel=1e-2)
    # targets as rows of class weights (mixup): one-hot rows give the same loss; a blend, the blend of the losses
    one_hot = np.eye(3, dtype=np.float32)[y_true]
    assert float(training.SmoothedSparseCrossentropy(0.2)(one_hot, y_pred)) == pytest.approx(want, rel=1e-5)
    blend = 0.3 * one_hot + 0.7 * one_hot[[1, 2, 0]]
    per_row = [float(training.SmoothedSparseCrossentropy(0.0)(blend[i : i + 1], y_pred[i : i + 1])) for i in range(3)]
    want_rows = [-(blend[i] * np.log(y_pred[i])).sum() for i in range(3)]
    assert per_row == pytest.approx(want_rows, rel=1e-5)


def test_a_head_trained_with_label_smoothing_is_less_confident_and_saves_and_loads(tmp_path):
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype(np.int32)
    confidence = {}
    for smoothing in (0.0, 0.3):
        keras.utils.set_random_seed(0)
        head = networks.build_head(8, 16, 0.0, 2, "classification")
        training.compile_for(
            head,
            Encoding(task="classification", classes=("a", "b", "c")),
            "auto",
            training.optimizer("adam", 0.05),
            label_smoothing=smoothing,
        )
        head.fit(x, y, epochs=60, batch_size=64, verbose=0)
        confidence[smoothing] = float(head.predict(x, verbose=0).max(axis=1).mean())
        model_files.save(head, tmp_path / f"head{smoothing}.keras")
        np.testing.assert_allclose(
            model_files.load(tmp_path / f"head{smoothing}.keras").predict(x, verbose=0),
            head.predict(x, verbose=0),
            atol=1e-6,
        )
    assert confidence[0.0] > 0.98 and confidence[0.3] < 0.9, confidence  # smoothed targets cap it near 1 - 0.3 + 0.15


def test_steps_per_call_train_the_same_weights_as_one_call_a_step():
    """compile_for runs STEPS_PER_CALL steps in one call: the same batches, dropout masks and updates as one step a
    call, bit for bit (one process, one CPU: the same kernels), also when an epoch ends inside a call (3 steps a
    call, 7 an epoch)."""
    x = np.random.default_rng(0).normal(size=(100, 8)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
    keras.utils.set_random_seed(0)
    initial = networks.build_head(8, 16, 0.5, 2, "classification").get_weights()  # what each head below starts from
    trained = {}
    for steps in (1, 3, training.STEPS_PER_CALL):
        keras.utils.set_random_seed(0)
        head = networks.build_head(8, 16, 0.5, 2, "classification")
        training.compile_for(
            head,
            Encoding(task="classification", classes=("a", "b")),
            "auto",
            training.optimizer("adam", 0.01),
            steps_per_call=steps,
        )
        history = head.fit(batches.Batches(x, y, 16, seed=0), epochs=3, shuffle=False, verbose=0)
        trained[steps] = head.get_weights(), history.history["loss"]
    assert training.STEPS_PER_CALL > 7
    for steps in (3, training.STEPS_PER_CALL):
        assert all(np.array_equal(a, b) for a, b in zip(trained[1][0], trained[steps][0])), f"{steps} steps a call"
        assert trained[steps][1] == trained[1][1]
    assert np.abs(trained[1][0][0] - initial[0]).max() > 0.01, "21 steps at lr 0.01 moved the weights"


@pytest.mark.parametrize("loss, name", [("auto", "mse"), ("mse", "mse"), ("huber", "huber"), ("mae", "mae")])
def test_regression_losses(loss, name):
    head = networks.build_head(4, 4, 0.0, 1, "regression")
    training.compile_for(head, Encoding(task="regression", mean=0.0, std=2.0), loss, training.optimizer("adam", 0.01))
    assert head.loss == name


def test_score_is_accuracy_or_the_mae_in_the_target_unit():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    # x0 + x1
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")])
    # regression: targets standardized (mean 10, std 2); the model's outputs are in the unit: 1, 5, 9, 13, 17, 21
    standardized = (np.array([1, 5, 9, 13, 17, 25], dtype=np.float32) - 10) / 2
    data = batches.Batches(x, standardized, batch_size=4)
    assert training.score(model, data, Encoding(task="regression", mean=10.0, std=2.0)) == pytest.approx(4 / 6)
    probabilities = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(2, kernel_initializer="identity", use_bias=False)]
    )
    labels = np.array([1, 1, 0, 1, 0, 1], dtype=np.int32)  # argmax of (x0, x1) is 1 everywhere
    two_classes = Encoding(task="classification", classes=("a", "b"))
    assert training.score(probabilities, batches.Batches(x, labels, batch_size=4), two_classes) == pytest.approx(4 / 6)


@pytest.mark.parametrize("patience", [0, 2])
def test_weight_averaging_validates_restores_and_keeps_the_moving_average(patience):
    """fine_tune.ema: the weights kept are Keras' moving average of every step's weights, at the best epoch
    by the validation figure, which is measured on that average too."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5]) + rng.normal(scale=0.5, size=64)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    encoding = Encoding(task="regression", mean=0.0, std=1.0)
    # a callback a step
    training.compile_for(model, encoding, "mse", training.optimizer("sgd", 0.05, ema=0.8), steps_per_call=1)
    steps, averages = [], []

    class Record(keras.callbacks.Callback):  # after SwapEMAWeights: the model holds each step's own weights here
        def on_train_batch_end(self, batch, logs=None):
            weights = [w.copy() for w in model.get_weights()]
            steps.append(weights)
            # Keras' average: the first step's weights, then 0.8 * average + 0.2 * weights
            averages.append([0.8 * a + 0.2 * w for a, w in zip(averages[-1], weights)] if averages else weights)

    ends = []

    class AtEpochEnd(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            ends.append(averages[-1])

    train = batches.Batches(x[:48], y[:48], batch_size=8, seed=0)
    val = batches.Batches(x[48:], y[48:], batch_size=16)
    history = training.fit(
        model, train, val, epochs=6, patience=patience, encoding=encoding, callbacks=[Record(), AtEpochEnd()]
    )
    kept = ends[int(history["val_mae"].idxmin())] if patience else ends[-1]
    assert len(steps) == len(history) * 6
    for got, want in zip(model.get_weights(), kept):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(model.get_weights()[0], steps[-1][0])  # not the last step's weights
    # the validation figure of the kept epoch is that of the average
    mae = float(np.mean(np.abs(model.predict(x[48:], verbose=0).reshape(-1) - y[48:])))
    assert mae == pytest.approx(float(history["val_mae"].min() if patience else history["val_mae"].iloc[-1]), rel=1e-5)


def test_a_head_trains_on_mixup_batches_and_reports_accuracy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(320, 8)).astype("float32")
    y = np.argmax(x[:, :3], axis=1).astype(np.int32)
    encoding = Encoding(
        task="classification",
        classes=(
            "a",
            "b",
            "c",
        ),
    )
    classes = training.one_hot_classes(encoding, 0.4)
    assert classes == 3 and training.one_hot_classes(encoding, 0.0) == 0
    keras.utils.set_random_seed(0)
    head = networks.build_head(8, 16, 0.0, 3, "classification")
    training.compile_for(head, encoding, "auto", training.optimizer("adam", 0.02), label_smoothing=0.1, mixup=0.4)
    train = batches.Batches(x[:256], y[:256], 32, seed=0, classes=classes, mixup=0.4)
    history = training.fit(
        head, train, batches.Batches(x[256:], y[256:], 32, classes=classes), epochs=15, patience=0, encoding=encoding
    )
    assert history["val_accuracy"].iloc[-1] > 0.8 and training.best_epoch(history, encoding)["val_accuracy"] > 0.8
    assert training.score(head, batches.Batches(x[256:], y[256:], 32), encoding) == pytest.approx(
        history["val_accuracy"].iloc[-1]
    )


def test_a_diverging_fit_stops_with_one_line_and_returns_no_model():
    """train_head.lr: 1e30 once passed validation, every val_loss was NaN, best_epoch raised KeyError: nan, and a head
    of NaN weights was saved. The schema now stops lr above 1; a loss that still overflows stops the fit."""
    from transfer_learning.errors import PipelineError

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(128, 8)) * 1e3).astype("float32")
    y = np.argmax(x[:, :3], axis=1).astype(np.int32)
    encoding = Encoding(task="classification", classes=("a", "b", "c"))
    keras.utils.set_random_seed(0)
    head = networks.build_head(8, 16, 0.0, 3, "classification")
    training.compile_for(head, encoding, "auto", training.optimizer("sgd", 1e30), label_smoothing=0.0)
    with pytest.raises(
        PipelineError, match=r"NaN or infinite at epoch 1, so no model is saved; lower the learning rate"
    ):
        training.fit(
            head,
            batches.Batches(x[:96], y[:96], 32, seed=0),
            batches.Batches(x[96:], y[96:], 32),
            epochs=5,
            patience=2,
            encoding=encoding,
        )
