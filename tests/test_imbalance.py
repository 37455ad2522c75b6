"""Class imbalance: train_head.class_weight and fine_tune.class_weight (none | balanced) reach Keras' fit, the k-fold
estimate weighs each fold by its own training rows, evaluate names balanced accuracy, and `dvc plots` has a
row-normalized confusion matrix."""

from __future__ import annotations

import json
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import yaml
from sklearn import metrics as skm
from sklearn.utils.class_weight import compute_class_weight

from support.projects import ROOT, write_params
from transfer_learning import (
    batches,
    crossval,
    distribute,
    evaluation,
    files,
    networks,
    params,
    paths,
    review,
    training,
)
from transfer_learning.errors import PipelineError
from transfer_learning.records import Encoding

TWO_CLASSES = Encoding(task="classification", classes=("major", "minor"))


@pytest.mark.parametrize("key", ["train_head.class_weight", "fine_tune.class_weight"])
def test_class_weight_is_none_or_balanced_and_balanced_only_for_classes(tmp_path, key):
    assert params.load(write_params(tmp_path, {key: "balanced"})).model_dump()[key.split(".")[0]]["class_weight"] == (
        "balanced"
    )
    with pytest.raises(PipelineError, match=rf"{key}: Input should be 'none' or 'balanced' \(got 'inverse'\)$"):
        params.load(write_params(tmp_path, {key: "inverse"}))
    regression = {"data.task": "regression", "data.csv": "labels.csv", key: "balanced"}
    with pytest.raises(PipelineError) as info:
        params.load(write_params(tmp_path, regression))
    assert str(info.value) == (
        f"{tmp_path / 'params.yaml'}: {key}=balanced weighs classes; a regression has none: set it to none"
    )


def test_the_committed_params_weigh_no_class():
    p = params.load(ROOT / "params.yaml")
    assert p.train_head.class_weight == p.fine_tune.class_weight == "none"


def test_balanced_weights_are_scikit_learns_and_none_is_no_weight():
    targets = np.repeat(np.array([2, 0, 1], dtype=np.int32), [50, 10, 5])
    weights = training.class_weights(targets, "balanced")
    want = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=targets)
    assert sorted(weights) == [0, 1, 2] and [weights[c] for c in range(3)] == pytest.approx(want, rel=1e-12)
    assert np.mean([weights[t] for t in targets]) == pytest.approx(1.0)  # the loss keeps its scale
    assert training.class_weights(targets, "none") is None
    named = training.named_weights(weights, Encoding(task="classification", classes=("a", "b", "c")))
    assert named == {"a": round(want[0], 6), "b": round(want[1], 6), "c": round(want[2], 6)}


def overlapping(rng, major: int, minor: int) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping Gaussian classes (class 1 shifted by 1.2 along one axis): trained on raw frequencies, a head
    calls most of the minority class the majority."""
    y = np.repeat([0, 1], [major, minor]).astype(np.int32)
    x = rng.normal(size=(len(y), 4)).astype("float32")
    x[:, 0] += 1.2 * y
    return x, y


@pytest.mark.parametrize("smoothing, mixup", [(0.0, 0.0), (0.1, 0.4)], ids=["sparse", "smoothed-mixup"])
def test_balanced_raises_the_minority_recall_of_a_real_fit(smoothing, mixup):
    """9:1 training rows. Keras' class_weight reaches the loss Keras compiles (the sparse cross-entropy; the smoothed
    one, here on mixup's one-hot blends): the minority class's recall rises well above its unweighted figure."""
    rng = np.random.default_rng(0)
    x, y = overlapping(rng, 270, 30)
    test_x, test_y = overlapping(rng, 200, 200)
    classes = training.one_hot_classes(TWO_CLASSES, mixup)
    recall = {}
    for mode in ("none", "balanced"):
        keras.utils.set_random_seed(0)
        head = networks.build_head(4, 16, 0.0, 2, "classification")
        training.compile_for(
            head, TWO_CLASSES, "auto", training.optimizer("adam", 0.02), label_smoothing=smoothing, mixup=mixup
        )
        train = batches.Batches(x, y, 64, seed=0, classes=classes, mixup=mixup)
        val = batches.Batches(test_x, test_y, 64, classes=classes)
        training.fit(
            head, train, val, epochs=10, patience=0, encoding=TWO_CLASSES, class_weight=training.class_weights(y, mode)
        )
        predicted = head.predict(test_x, verbose=0).argmax(axis=1)
        recall[mode] = float(np.mean(predicted[test_y == 1] == 1))
    assert recall["none"] < 0.3 and recall["balanced"] > recall["none"] + 0.25, recall


def test_the_k_fold_estimate_weighs_each_fold_by_its_own_training_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(3)
    per_image = 2  # each training image followed by one variant
    train_y = np.repeat(np.repeat([0, 1, 2], [30, 6, 4]), per_image).astype(np.int32)
    val_y = np.repeat([0, 1, 2], [10, 2, 2]).astype(np.int32)
    for split, y in (("train", train_y), ("val", val_y)):
        files.save_npy(paths.features(split), rng.normal(size=(len(y), 4)).astype(np.float32))
        files.save_npy(paths.feature_targets(split), y)
    passed = []
    fit = keras.Model.fit

    def spy(model, *args, **kwargs):
        passed.append((np.asarray(args[0].targets), kwargs.get("class_weight")))
        return fit(model, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", spy)
    cfg = SimpleNamespace(
        folds=3,
        seed=0,
        batch_size=32,
        optimizer="adam",
        lr=0.01,
        schedule="constant",
        epochs=1,
        loss="auto",
        label_smoothing=0.0,
        mixup=0.0,
        class_weight="balanced",
    )
    encoding = Encoding(task="classification", classes=("a", "b", "c"))
    head = SimpleNamespace(units=8, dropout=0.0)
    crossval.estimate(cfg, head, per_image, encoding, distribute.strategy("default"), epochs=1)
    assert len(passed) == 3
    every = np.concatenate([train_y, val_y])
    for targets, weights in passed:
        assert len(targets) < len(every)  # a fold's training part, not train + val
        want = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=targets)
        assert [weights[c] for c in range(3)] == pytest.approx(want)
    assert len({tuple(w.values()) for _, w in passed}) > 1, "each fold its own weights"

    passed.clear()
    crossval.estimate(
        SimpleNamespace(**{**vars(cfg), "class_weight": "none"}),
        head,
        per_image,
        encoding,
        distribute.strategy("default"),
        epochs=1,
    )
    assert [weights for _, weights in passed] == [None, None, None]


def test_balanced_accuracy_is_the_mean_recall_of_the_classes():
    actual = np.array(["a"] * 8 + ["b"] * 2)
    predicted = np.array(["a"] * 8 + ["a", "b"])  # every a right, half the b
    figures = evaluation.classification_metrics(actual, predicted)
    assert figures["accuracy"] == pytest.approx(0.9) and figures["balanced_accuracy"] == pytest.approx(0.75)
    assert figures["balanced_accuracy"] == pytest.approx(figures["recall_macro"])
    assert figures["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(actual, predicted))
    assert list(figures) == ["accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro"]
    # a class predicted but absent from the test set: scikit-learn's balanced accuracy (recall_macro counts it as 0)
    wrong = np.array(["a"] * 7 + ["c", "a", "b"])
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):  # why evaluation has its own
        want = skm.balanced_accuracy_score(actual, wrong)
    assert evaluation.balanced_accuracy(actual, wrong) == pytest.approx(want)


def test_the_review_names_balanced_accuracy():
    summary = {
        name: evaluation.classification_metrics(np.array(["a", "a", "a", "b"]), np.array(["a", "a", "a", "a"]))
        for name in ("head", "fine_tuned", "baseline")
    }
    lines = review.results(summary | {"test_images": 4}, "a", "classification")
    assert "| balanced accuracy | 0.500 | 0.500 | 0.500 |" in lines
    assert "Balanced accuracy: the mean of the per-class recalls (recall macro)" in lines[-1]
    regression = {name: evaluation.regression_metrics(np.array([1.0, 2.0]), np.array([1.5, 2.0])) for name in summary}
    assert "Balanced" not in review.results(regression | {"test_images": 2}, 1.5, "regression")[-1]


def test_dvc_plots_has_the_row_normalized_confusion_matrix_of_each_model():
    plots = {
        name: plot
        for entry in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
        if isinstance(entry, dict)
        for name, plot in entry.items()
    }
    for model, name in (("head", "head"), ("fine_tuned", "fine-tuned")):
        plot = plots[f"confusion-normalized-{name}"]
        # DVC's template divides each row (y) by its sum: rows must be the actual classes for the diagonal to be recall
        assert plot["template"] == "${data.task}_normalized" and plot["x"] == "predicted"
        assert plot["y"] == {f"plots/evaluate/predictions/{model}.csv": "actual"}, "one file a plot"
    from dvc_render.vega_templates import NormalizedConfusionTemplate

    template = json.loads((ROOT / ".dvc/plots/classification_normalized.json").read_text())
    assert template == NormalizedConfusionTemplate().content, "DVC's confusion_normalized, as it ships"
    normalized = template["spec"]["transform"][3]
    assert normalized["joinaggregate"][0]["op"] == "sum" and normalized["groupby"] == ["<DVC_METRIC_Y>"]
    assert (ROOT / ".dvc/plots/regression_normalized.json").is_file()
