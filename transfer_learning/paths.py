"""Every file the pipeline reads or writes, in one place (mirrors the outs/deps in dvc.yaml; the e2e test
test_each_stage_reads_and_writes_what_dvc_yaml_declares holds dvc.yaml to what each stage does with them)."""

from pathlib import Path

PARAMS = Path("params.yaml")
DVC_YAML = Path("dvc.yaml")  # the stages: what each reads (resume.fingerprint)

INGESTED = Path("data/ingested")
MANIFEST = INGESTED / "manifest.csv"  # one row per usable image: its file, label, sha256s, duplicate group

SPLIT = Path("data/split/split.csv")  # manifest row -> train | val | test
SPLIT_REPORT = Path("metrics/split.json")  # per split: images, groups that never cross splits (and subjects)

# No stage stores pixels: lists of image files and how to decode them (image_sets.py)
NORMALIZED = Path("data/normalized")  # <split>_images.csv (path, file_sha256), <split>_targets.npy
ENCODING = NORMALIZED / "encoding.json"  # class order, or target mean/std
IMAGE_FILES = NORMALIZED / "images.json"  # where the files are, and how one becomes the model's input

AUGMENTED = Path("data/augmented")  # train_images.csv (each image, then its variants), train_targets.npy
AUGMENT = AUGMENTED / "augment.json"  # the variants' transform and seed
AUGMENT_PREVIEW = AUGMENTED / "preview.png"  # a few training images with their variants

FEATURES = Path("data/features")  # <split>_features.npy, <split>_targets.npy

ACTIVATIONS = Path("data/activations")  # <split>_activations.npy (float32): the base below the fine-tune cut
ACTIVATIONS_INFO = ACTIVATIONS / "info.json"

WEIGHTS = Path("weights")  # your own base weights (base.weights: weights/<name>.weights.h5)

HEAD_MODEL = Path("models/head.keras")
MODEL = Path("models/model.keras")
MODEL_ENCODING = Path("models/encoding.json")
EXPORT = Path("models/export")  # the deployable formats (exports.py), and a copy of encoding.json

DATA_REPORT = Path("metrics/data.json")
TRAIN_HEAD_METRICS = Path("metrics/train_head.json")
FINE_TUNE_METRICS = Path("metrics/fine_tune.json")
EVALUATE_METRICS = Path("metrics/evaluate.json")
EXPORT_METRICS = Path("metrics/export.json")  # per export format: test figures, agreement with the Keras model
EXPORT_SPEED = Path("metrics/export_speed.json")  # per export format: images/s (changes from run to run)
BREAKDOWN = Path("metrics/breakdown.csv")  # per class, or per target range

# dvclive's folders (live.py): metrics.json (the last epoch) and plots/metrics/{train,eval}/<metric>.tsv, epoch by epoch
TRAIN_HEAD_LIVE = Path("dvclive/train_head")
FINE_TUNE_LIVE = Path("dvclive/fine_tune")
# Backups of an interrupted train-head or fine-tune, per stage and fingerprint (resume.py): in DVC's scratch folder,
# which is no stage's output, ignored by git and never hashed
RESUME = Path(".dvc/tmp/resume")
EVALUATE_PLOTS = Path("plots/evaluate")
PREDICTIONS = EVALUATE_PLOTS / "predictions"  # <model>.csv: actual, predicted per test image
FIGURES = EVALUATE_PLOTS / "figures"  # confusion matrices or scatter plots, the worst test images
HEATMAPS = FIGURES / "heatmaps"  # Grad-CAM of the fine-tuned model: mistakes.png, correct.png
CALIBRATION = EVALUATE_PLOTS / "calibration"  # <model>.csv: the reliability diagram per model
REVIEW = Path("reports/review.md")  # the review of the run (evaluate), for a pull request

SPLITS = ("train", "val", "test")
# Folders the pipeline writes: data.source may not overlap them.
OUTPUT_FOLDERS = (
    INGESTED,
    SPLIT.parent,
    NORMALIZED,
    AUGMENTED,
    FEATURES,
    ACTIVATIONS,
    HEAD_MODEL.parent,
    DATA_REPORT.parent,
    EVALUATE_PLOTS.parent,
    TRAIN_HEAD_LIVE.parent,
    REVIEW.parent,
)


def split_array(folder: Path, split: str, kind: str) -> Path:
    """<folder>/<split>_<kind>.npy, e.g. data/normalized/train_targets.npy."""
    return folder / f"{split}_{kind}.npy"


def split_list(split: str) -> Path:
    """normalize's list of a split's image files, data/normalized/<split>_images.csv."""
    return NORMALIZED / f"{split}_images.csv"


# What the models see of each split: the training set augmented (each image followed by its variants),
# validation and test as normalize listed them. The one place that says which folder holds which split.


def image_list(split: str) -> Path:
    return AUGMENTED / "train_images.csv" if split == "train" else split_list(split)


def targets(split: str) -> Path:
    """The encoded targets, row for row with image_list(split)."""
    return split_array(AUGMENTED if split == "train" else NORMALIZED, split, "targets")


def features(split: str) -> Path:
    """The frozen base's pooled output, row for row with image_list(split); beside it a copy of targets(split)."""
    return split_array(FEATURES, split, "features")


def feature_targets(split: str) -> Path:
    return split_array(FEATURES, split, "targets")


def activations(split: str) -> Path:
    """The frozen base's output below fine_tune.unfreeze_from, row for row with image_list(split) (train and val
    only)."""
    return split_array(ACTIVATIONS, split, "activations")
