"""Every file the pipeline reads or writes, in one place (mirrors the outs/deps in dvc.yaml)."""
from pathlib import Path

PARAMS = Path("params.yaml")

INGESTED = Path("data/ingested")
MANIFEST = INGESTED / "manifest.csv"        # one row per usable image
PIXELS = INGESTED / "pixels.u8"             # decoded RGB pixels, back to back

SPLIT = Path("data/split/split.csv")        # manifest row -> train | val | test

NORMALIZED = Path("data/normalized")        # <split>_images.npy (uint8), <split>_targets.npy
ENCODING = NORMALIZED / "encoding.json"     # class order, or target mean/std

AUGMENTED = Path("data/augmented")          # train_images.npy, train_targets.npy

FEATURES = Path("data/features")           # <split>_features.npy, <split>_targets.npy

ACTIVATIONS = Path("data/activations")     # <split>_activations.npy (float32): the base below the fine-tune cut
ACTIVATIONS_INFO = ACTIVATIONS / "info.json"

WEIGHTS = Path("weights")                   # your own base weights (base.weights: weights/<name>.weights.h5)

HEAD_MODEL = Path("models/head.keras")
MODEL = Path("models/model.keras")
MODEL_ENCODING = Path("models/encoding.json")

DATA_REPORT = Path("metrics/data.json")
TRAIN_HEAD_METRICS = Path("metrics/train_head.json")
FINE_TUNE_METRICS = Path("metrics/fine_tune.json")
EVALUATE_METRICS = Path("metrics/evaluate.json")
BREAKDOWN = Path("metrics/breakdown.csv")        # per class, or per target range

# dvclive's folders (live.py): metrics.json (the last epoch) and plots/metrics/{train,eval}/<metric>.tsv, epoch by epoch
TRAIN_HEAD_LIVE = Path("dvclive/train_head")
FINE_TUNE_LIVE = Path("dvclive/fine_tune")
EVALUATE_PLOTS = Path("plots/evaluate")
REVIEW = Path("reports/review.md")              # the review of the run (evaluate), for a pull request

SPLITS = ("train", "val", "test")
# Folders the pipeline writes: data.source may not overlap them.
OUTPUT_FOLDERS = (INGESTED, SPLIT.parent, NORMALIZED, AUGMENTED, FEATURES, ACTIVATIONS, HEAD_MODEL.parent, DATA_REPORT.parent,
                  EVALUATE_PLOTS.parent, TRAIN_HEAD_LIVE.parent, REVIEW.parent)


def split_array(folder: Path, split: str, kind: str) -> Path:
    """`kind` is images, targets or features: e.g. data/normalized/train_images.npy."""
    return folder / f"{split}_{kind}.npy"


def fine_tune_inputs(cached: bool) -> dict[str, Path]:
    """What fine-tune trains on: cached activations, or (end to end) the augmented train and val images."""
    if cached:
        return {split: split_array(ACTIVATIONS, split, "activations") for split in ("train", "val")}
    return {"train": split_array(AUGMENTED, "train", "images"), "val": split_array(NORMALIZED, "val", "images")}
