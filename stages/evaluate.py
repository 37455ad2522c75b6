"""Stage evaluate: test-split metrics of the head-only model, the fine-tuned model and a constant baseline, and the
review of the run (reports/review.md, a grid of the fine-tuned model's worst test images, its Grad-CAM heatmaps).
Calibration (calibration.py): the ECE and the reliability diagram, or the share within 5 and 10 units and the residuals.

Head-only: the trained head on the stored test features (the base as ImageNet left it).
Fine-tuned: models/model.keras on the raw test images, exactly as a user would load it.
Baseline: always the most frequent training class, or the training mean (regression).
"""

import pandas as pd

from transfer_learning import (
    batches,
    calibration,
    evaluation,
    files,
    heatmaps,
    image_sets,
    inference,
    model_files,
    params,
    paths,
    records,
    review,
    targets,
)
from transfer_learning.errors import run


def main():
    params.load()  # validates params.yaml; this stage reads no key of its own
    encoding = records.Encoding.read(paths.MODEL_ENCODING)
    task = encoding.task
    actual = targets.decode(files.load_npy(paths.targets("test")), encoding)
    baseline = targets.constant(files.load_npy(paths.split_array(paths.NORMALIZED, "train", "targets")), encoding)
    test_features = batches.from_files(paths.features("test"), None, inference.BATCH_SIZE)
    test_images = batches.Batches(image_sets.load("test"), None, inference.BATCH_SIZE)  # decoded from the files
    head_out = model_files.load(paths.HEAD_MODEL).predict(test_features, verbose=0)
    model = model_files.load(paths.MODEL)
    fine_out = model.predict(test_images, verbose=0)
    predictions = {"head": targets.from_head(head_out, encoding), "fine_tuned": targets.from_model(fine_out, encoding)}

    summary = evaluation.summary(actual, predictions, encoding, baseline)
    outputs = {"head": head_out, "fine_tuned": fine_out} if encoding.is_classification else predictions
    for name, figures in calibration.metrics(actual, outputs, encoding, baseline).items():
        summary[name] |= figures
    calibration.write_plots(actual, outputs, encoding, paths.CALIBRATION, paths.FIGURES)
    breakdown = evaluation.breakdown(actual, predictions, encoding)
    files.write_json(paths.EVALUATE_METRICS, summary)
    files.write_csv(paths.BREAKDOWN, breakdown, escape_formulas=True)  # class names: never spreadsheet formulas
    for name, predicted in predictions.items():
        files.write_csv(
            paths.PREDICTIONS / f"{name}.csv",
            pd.DataFrame({"actual": actual, "predicted": predicted}),
            escape_formulas=True,
        )
    if task == "classification":
        evaluation.confusion_figure(actual, predictions, encoding.classes, paths.FIGURES / "confusion.png")
    else:
        evaluation.regression_figures(actual, predictions, paths.FIGURES)

    # The review: the fine-tuned model's worst test images (with their files), and the report around them
    test_paths = test_images.inputs.paths  # of the very images predicted, row for row
    training_runs = {
        "head": files.read_json(paths.TRAIN_HEAD_METRICS),
        "fine_tuned": files.read_json(paths.FINE_TUNE_METRICS),
    }
    worst = review.worst_cases(actual, fine_out, encoding, test_paths)
    correct = heatmaps.correct_cases(actual, fine_out, encoding, test_paths)
    explained = heatmaps.write(
        model,
        test_images.inputs,
        worst=worst,
        correct=correct,
        encoding=encoding,
        folder=paths.HEATMAPS,
        report=paths.REVIEW,
    )
    grid = review.write(
        worst,
        test_images.inputs,
        summary=summary,
        breakdown=breakdown,
        baseline=baseline,
        training=training_runs,
        data_report=records.DataReport.read(paths.DATA_REPORT),
        encoding=encoding,
        extra=explained + [""] + calibration.review_lines(summary, encoding),
    )
    for name, figures in summary.items():
        print(f"evaluate: {name}: {figures}")
    print(f"evaluate: review -> {paths.REVIEW}, {grid}")


if __name__ == "__main__":
    run(main)
