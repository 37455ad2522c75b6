"""Predict with the trained model: new images (a folder, or a CSV listing them) -> a CSV, one row per image.

    python predict.py new_images/                          # every image under the folder, nested folders too
    python predict.py new_images/list.csv --path-column file -o predictions.csv

Each image is decoded and resized exactly as ingest and normalize prepared the training images (the settings
are stored beside the model, in models/encoding.json), then predicted in batches. Files that cannot be used
(not an image, truncated, too large, ...) are skipped and listed on stderr with the reason.

Columns: path, predicted, probability, top_2, top_2_probability, ... up to --top-k (classification);
path, predicted (regression, in the target's unit).
Exit status: 0 every image predicted; 3 predictions written, some files skipped (listed on stderr);
1 an error (one line `error: ...`, nothing written); 2 bad arguments; 130 interrupted (nothing written).
"""
import argparse
import csv
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "stages"))
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lib import files, inference, models, prediction, settings, sources  # noqa: E402  lib configures TensorFlow first
from lib.errors import PipelineError, run  # noqa: E402

SOME_SKIPPED = 3  # exit status: the CSV is written, but some files were skipped


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Apply the trained model to new images (a folder, or a CSV listing them) "
                                                 "and write one CSV row per image.",
                                     epilog="exit status: 0 every image predicted; 3 predictions written, some files skipped; "
                                            "1 error (nothing written); 2 bad arguments")
    parser.add_argument("source", type=Path, help="a folder of images (nested folders too), or a .csv file listing them")
    parser.add_argument("-o", "--output", type=Path, default=Path("predictions.csv"), help="the CSV to write (default: %(default)s)")
    parser.add_argument("--model", type=Path, default=Path("models/model.keras"), help="default: %(default)s")
    parser.add_argument("--encoding", type=Path, help="the model's encoding.json (default: the one beside the model)")
    parser.add_argument("--path-column", default="image", help="CSV source: the column of image paths, relative to the "
                                                             "CSV's folder (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=3, help="classification: the most likely classes to list (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    return args


def main(argv: list[str] | None = None):
    args = arguments(argv)
    items, skipped = sources.new_images(args.source, args.path_column)
    model = models.load(args.model)
    encoding = prediction.model_card(args.encoding or args.model.parent / "encoding.json", model)
    top_k = min(args.top_k, len(encoding.get("classes", [])))
    predicted = 0
    with files.atomic_path(args.output) as tmp, open(tmp, "w", newline="", encoding="utf-8") as out, \
            ThreadPoolExecutor(settings.workers()) as pool, tqdm(total=len(items), desc="predict", unit="img") as progress:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(prediction.header(encoding, top_k))
        for start in range(0, len(items), inference.BATCH_SIZE):
            batch = items[start:start + inference.BATCH_SIZE]
            ready = []
            for item, (pixels, reason) in zip(batch, pool.map(lambda it: prediction.prepare(it, encoding["input"]), batch)):
                if reason:
                    skipped.append(sources.Skipped(item.path, reason))
                else:
                    ready.append((item.path, pixels))
            if ready:
                outputs = model.predict_on_batch(np.stack([pixels for _, pixels in ready]).astype(np.float32))
                writer.writerows(prediction.rows([path for path, _ in ready], np.asarray(outputs), encoding, top_k))
                predicted += len(ready)
            progress.update(len(batch))
        if not predicted:  # nothing is written
            examples = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3])
            raise PipelineError(f"{args.source}: no usable image" + (f" ({len(skipped)} skipped, e.g. {examples})" if skipped else ""))
    for s in sorted(skipped, key=lambda s: s.path):
        print(f"skipped {s.path}: {s.reason}", file=sys.stderr)
    print(f"predict: {predicted} images -> {args.output}" + (f"; {len(skipped)} skipped (listed on stderr)" if skipped else ""))
    if skipped:
        sys.exit(SOME_SKIPPED)


if __name__ == "__main__":
    run(main, again="nothing to resume: run it again")
