"""Benchmark: class imbalance, train_head.class_weight and fine_tune.class_weight `none` against `balanced`.

    python benchmarks/imbalance.py                # Flowers-17, 10 classes (80 photos in one, 10 in each other), 3 seeds
    python benchmarks/imbalance.py --classes 5    # the first 5 of them (the run of 2026-12-03)
    python benchmarks/imbalance.py --seeds 3 4 5  # other split seeds
    python benchmarks/imbalance.py --smoke        # generated images, smallest params, seed 0 (tests)

The subset: the first `--classes` flowers of CLASSES (yellow, then white flowers of Flowers-17), the first 80 photos
(by file name) of daffodil and the first 10 of each other, hard-linked (or copied) into a temporary folder: read from
../shared/datasets/flowers17, never added to git. Five classes the ImageNet features tell apart easily (the first five
in alphabetical order) leave nothing to weigh: every test photo right, with either class_weight; these look alike, as
the classes of real imbalanced data often do. With 10 classes the test split holds 27 minority photos (3 of each), not
12: the minority recall moves in steps of 1/27, not 1/12. In a fresh clone (harness.clone), with light params (LIGHT:
128 px, a few epochs, Flowers-17's line otherwise), for each split seed, `dvc repro evaluate` with class_weight `none`
for both trainings, then with `balanced` (only train-head, fine-tune and evaluate rerun). Prints per seed and as a mean
over the seeds, for the head only and the fine-tuned model: the mean test recall of the minority classes
(metrics/breakdown.csv), the balanced accuracy and the accuracy (metrics/evaluate.json).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import pandas as pd

import harness

CLASSES = [  # the first is the majority; yellow flowers, then white ones
    "daffodil",
    "buttercup",
    "colts_foot",
    "cowslip",
    "dandelion",
    "sunflower",
    "daisy",
    "snowdrop",
    "lily_valley",
    "windflower",
]
MAJORITY, MINORITY = 80, 10  # photos of the first class, and of each other
SMOKE_MAJORITY, SMOKE_MINORITY = 8, 4  # of harness.smoke_images' 3 classes of 8
# The test split holds 3 photos of each minority class (0.3 of 10).
LIGHT = harness.FLOWERS_PARAMS | {
    "normalize.image_size": 128,
    "ingest.max_short_side": 160,
    "augment.copies": 2,
    "split.test": 0.3,
    "train_head.folds": 3,
    "fine_tune.epochs": 6,
    "fine_tune.patience": 3,
}
MODES = ("none", "balanced")
MODELS = {"head": "head only", "fine_tuned": "fine-tuned"}


def subset(source: Path, classes: list[str], majority: int, minority: int) -> Path:
    """The class folders `classes` of `source`, `majority` files of the first and `minority` of each other (the first
    by name), linked into a new temporary folder (copied where a hard link cannot be made)."""
    root = Path(tempfile.mkdtemp(prefix="bench-imbalance-")) / "images"
    for c, folder in enumerate(source / name for name in classes):
        (root / folder.name).mkdir(parents=True)
        for file in sorted(f for f in folder.iterdir() if f.is_file())[: majority if c == 0 else minority]:
            try:
                os.link(file, root / folder.name / file.name)
            except OSError:
                shutil.copy(file, root / folder.name / file.name)
    return root


def figures(project: Path, minority: list[str]) -> dict:
    """(model, figure) -> value, from the run's metrics/evaluate.json and metrics/breakdown.csv."""
    evaluate = harness.read_json(project / "metrics/evaluate.json")
    breakdown = pd.read_csv(project / "metrics/breakdown.csv", dtype={"class": str})
    row = {}
    for model in MODELS:
        recall = breakdown[(breakdown["model"] == model) & breakdown["class"].isin(minority)]["recall"]
        row[model, "minority recall"] = float(recall.mean())
        row[model, "balanced accuracy"] = evaluate[model]["balanced_accuracy"]
        row[model, "accuracy"] = evaluate[model]["accuracy"]
    return row


def report(rows: dict, seeds: list[int]) -> None:
    columns = list(next(iter(rows.values())))
    header = "".join(f"{f'{MODELS[m]}: {f}':>31}" for m, f in columns)
    print(f"\n{'split.seed':>10}{'class_weight':>14}{header}")
    for seed in seeds:
        for mode in MODES:
            print(f"{seed:>10}{mode:>14}" + "".join(f"{rows[seed, mode][c]:>31.4f}" for c in columns))
    for mode in MODES:
        values = [[rows[s, mode][c] for s in seeds] for c in columns]
        cells = "".join(
            (f"{statistics.mean(v):.4f} ±{statistics.stdev(v):.4f}" if len(v) > 1 else f"{v[0]:.4f}").rjust(31)
            for v in values
        )
        print(f"{'mean ± std':>10}{mode:>14}{cells}")
    gain = [
        rows[s, "balanced"][m, "minority recall"] - rows[s, "none"][m, "minority recall"] for s in seeds for m in MODELS
    ]
    print(f"\nminority recall, balanced - none (per seed and model): {' '.join(f'{g:+.4f}' for g in gain)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split.seed values")
    parser.add_argument("--classes", type=int, default=10, choices=range(2, len(CLASSES) + 1), help="the first N")
    parser.add_argument("--smoke", action="store_true", help="generated images, smallest params, seed 0: that it runs")
    args = parser.parse_args()
    if args.smoke:
        images = subset(harness.smoke_images(), ["class_0", "class_1", "class_2"], SMOKE_MAJORITY, SMOKE_MINORITY)
        config, args.seeds = harness.SMOKE_PARAMS | {"split.val": 0.25, "split.test": 0.25}, [0]
    else:
        images = subset(harness.FLOWERS, CLASSES[: args.classes], MAJORITY, MINORITY)
        config = LIGHT
    classes = [d.name for d in sorted(images.iterdir(), key=lambda d: -len(list(d.iterdir())))]  # the majority first
    print(f"images: {images}: " + ", ".join(f"{c} {len(list((images / c).iterdir()))}" for c in classes), flush=True)
    project = harness.clone("imbalance")
    rows = {}
    for seed in args.seeds:
        for mode in MODES:
            harness.set_params(
                project,
                config
                | {
                    "data.source": str(images),
                    "split.seed": seed,
                    "train_head.class_weight": mode,
                    "fine_tune.class_weight": mode,
                },
            )
            timed = harness.run(["dvc", "repro", "evaluate"], project)
            rows[seed, mode] = figures(project, classes[1:])
            print(
                f"split.seed {seed}, class_weight {mode}: {timed.seconds / 60:.1f} min, "
                f"stages {' '.join(harness.stages_run(timed.output))}; "
                + ", ".join(f"{MODELS[m]} {f} {v:.4f}" for (m, f), v in rows[seed, mode].items()),
                flush=True,
            )
    report(rows, args.seeds)


if __name__ == "__main__":
    main()
