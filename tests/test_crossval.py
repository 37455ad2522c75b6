"""K-fold cross-validation of the head on stored features (transfer_learning/crossval.py, train_head.folds)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

from transfer_learning import crossval, distribute, files, paths
from transfer_learning.errors import PipelineError
from transfer_learning.records import Encoding


def test_folds_are_stratified_balanced_and_seeded():
    labels = np.repeat(np.arange(3), [10, 7, 13])
    folds = crossval.assign(labels, 5, seed=0, task="classification")
    for c in range(3):
        counts = np.bincount(folds[labels == c], minlength=5)
        assert counts.max() - counts.min() <= 1, (c, counts)
    assert np.array_equal(folds, crossval.assign(labels, 5, seed=0, task="classification"))
    assert not np.array_equal(folds, crossval.assign(labels, 5, seed=1, task="classification"))

    ages = np.random.default_rng(0).uniform(1, 90, 103)
    folds = crossval.assign(ages, 4, seed=0, task="regression")
    assert np.bincount(folds).max() - np.bincount(folds).min() <= 1
    order = np.argsort(ages)
    for start in range(0, 100, 4):  # every run of 4 neighbouring ages is spread over the 4 folds
        assert sorted(folds[order[start : start + 4]]) == [0, 1, 2, 3]


def test_rows_read_an_ascending_index_across_stacked_arrays():
    a, b = np.arange(10).reshape(5, 2), 100 + np.arange(6).reshape(3, 2)
    rows = crossval.Rows([a, b], np.array([1, 3, 5, 7]))  # two rows of a, then b's rows 0 and 2
    assert len(rows) == 4 and rows.shape == (4, 2)
    assert rows[np.array([0, 2, 3])].tolist() == [[2, 3], [100, 101], [104, 105]]


def write_features(folder, train_x, train_y, val_x, val_y):
    for split, x, y in (("train", train_x, train_y), ("val", val_x, val_y)):
        files.save_npy(folder / paths.features(split), x.astype(np.float32))
        files.save_npy(folder / paths.feature_targets(split), y)


def settings(folds, epochs=40):
    cfg = SimpleNamespace(
        folds=folds,
        seed=0,
        batch_size=32,
        optimizer="adam",
        lr=0.01,
        schedule="constant",
        epochs=epochs,
        loss="auto",
        label_smoothing=0.0,
        mixup=0.0,
        class_weight="none",
    )
    return cfg, SimpleNamespace(units=64, dropout=0.0)


@pytest.fixture
def in_tmp(tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(cwd)


def test_a_learnable_task_scores_high_on_every_fold(in_tmp):
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (3, 6))
    labels = np.repeat(np.arange(3), 20)
    x = centers[labels] + rng.normal(0, 0.5, (60, 6))
    write_features(
        in_tmp,
        np.repeat(x[:45], 2, axis=0),
        np.repeat(labels[:45], 2).astype(np.int32),
        x[45:],
        labels[45:].astype(np.int32),
    )
    cfg, head = settings(folds=3, epochs=20)
    result = crossval.estimate(
        cfg,
        head,
        2,
        Encoding(
            task="classification",
            classes=(
                "a",
                "b",
                "c",
            ),
        ),
        distribute.strategy("default"),
        epochs=20,
    )
    assert result["folds"] == 3 and len(result["per_fold"]) == 3 and result["accuracy_min"] >= 0.9, result
    assert result["accuracy_mean"] == pytest.approx(np.mean(result["per_fold"]), abs=1e-6)
    assert result["accuracy_std"] == pytest.approx(np.std(result["per_fold"], ddof=1), abs=1e-6)


def test_an_image_and_its_variants_never_fall_on_both_sides_of_a_fold(in_tmp):
    """Random labels, each training image followed by two near-copies: a head that memorizes its rows would score ~1 on
    held-out images whose variants it trained on. Kept together, it scores about chance (0.5)."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (60, 8))
    labels = rng.integers(0, 2, 60).astype(np.int32)
    per_image = 3
    train_x = np.repeat(x[:48], per_image, axis=0) + rng.normal(0, 0.01, (48 * per_image, 8))
    write_features(in_tmp, train_x, np.repeat(labels[:48], per_image), x[48:], labels[48:])
    cfg, head = settings(folds=4, epochs=60)
    cfg.lr, cfg.batch_size = 0.03, 64
    result = crossval.estimate(
        cfg,
        head,
        per_image,
        Encoding(
            task="classification",
            classes=(
                "a",
                "b",
            ),
        ),
        distribute.strategy("default"),
        epochs=60,
    )
    assert result["accuracy_mean"] < 0.75, result


def test_regression_folds_score_the_mae_in_the_target_unit(in_tmp):
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (40, 4))
    standardized = (x[:, 0] * 0.9).astype(np.float32)  # encoding std 10: the MAE comes back in tens
    write_features(in_tmp, x[:30], standardized[:30], x[30:], standardized[30:])
    cfg, head = settings(folds=2, epochs=80)
    encoding = Encoding(task="regression", mean=50.0, std=10.0)
    result = crossval.estimate(cfg, head, 1, encoding, distribute.strategy("default"), epochs=80)
    assert 0 < result["mae_mean"] < 3, result  # a linear target learned: well under the target std of ~9 years


def test_more_folds_than_images_allow_is_one_line(in_tmp):
    write_features(in_tmp, np.zeros((6, 2)), np.zeros(6, np.int32), np.zeros((2, 2)), np.zeros(2, np.int32))
    cfg, head = settings(folds=5)
    with pytest.raises(
        PipelineError, match=r"train_head.folds=5 needs at least 10 images in train \+ val, there are 8"
    ):
        crossval.estimate(
            cfg, head, 1, Encoding(task="classification", classes=("a",)), distribute.strategy("default"), epochs=1
        )
