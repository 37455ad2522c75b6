"""Stage evaluate: test-split metrics of the head-only model and the fine-tuned model, side by side.

Head-only: the trained head on the stored test features (the base as ImageNet left it).
Fine-tuned: models/model.keras on the raw test images, exactly as a user would load it.
"""
import pandas as pd

from lib import files, inference, models, params, paths, reports, targets, training
from lib.errors import run


def main():
    params.load()  # validates params.yaml; this stage reads no key of its own
    encoding = files.read_json(paths.MODEL_ENCODING)
    actual = targets.decode(files.load_npy(paths.split_array(paths.NORMALIZED, "test", "targets")), encoding)
    test_features = training.batches(paths.split_array(paths.FEATURES, "test", "features"), None, inference.BATCH_SIZE)
    test_images = training.batches(paths.split_array(paths.NORMALIZED, "test", "images"), None, inference.BATCH_SIZE)
    head_out = models.load(paths.HEAD_MODEL).predict(test_features, verbose=0)
    fine_out = models.load(paths.MODEL).predict(test_images, verbose=0)
    predictions = {"head": targets.from_head(head_out, encoding), "fine_tuned": targets.from_model(fine_out, encoding)}

    summary = reports.summary(actual, predictions, encoding)
    files.write_json(paths.EVALUATE_METRICS, summary)
    files.write_csv(paths.BREAKDOWN, reports.breakdown(actual, predictions, encoding), escape_formulas=True)  # class names: no formulas
    for name, predicted in predictions.items():
        files.write_csv(paths.EVALUATE_PLOTS / "predictions" / f"{name}.csv", pd.DataFrame({"actual": actual, "predicted": predicted}),
                        escape_formulas=True)
    if encoding["task"] == "classification":
        reports.confusion_figure(actual, predictions, encoding["classes"], paths.EVALUATE_PLOTS / "figures" / "confusion.png")
    else:
        reports.regression_figures(actual, predictions, paths.EVALUATE_PLOTS / "figures")
    for name, figures in summary.items():
        print(f"evaluate: {name}: {figures}")


if __name__ == "__main__":
    run(main)
