"""Benchmark: what an experiment costs in disk, as a multiple of the source folder's size.

    python benchmarks/disk.py                 # the README's Flowers-17 line, then a second experiment (augment.seed=1)
    python benchmarks/disk.py --quick         # the same files with 1 training epoch and no k-fold (sizes unchanged)
    python benchmarks/disk.py --digits        # the embedded default
    python benchmarks/disk.py --smoke         # a few generated images, in seconds (the test of this benchmark)

In one fresh clone: `dvc exp run` of the line, then `dvc exp run -S augment.seed=1` (an experiment that changes only
the augmented variants). After each it counts the bytes of every stage output in the workspace and of `.dvc/cache`,
each file once however many links lead to it (DVC links the cache into the workspace: .dvc/config cache.type), and
prints them against the source folder's size. Epochs and folds change no file's size (only dvclive's per-epoch rows),
so --quick measures the same layout in a fraction of the time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import harness

OUTPUTS = (
    "data/ingested",
    "data/split",
    "data/normalized",
    "data/augmented",
    "data/features",
    "data/activations",
    "models",
    "metrics",
    "plots",
    "dvclive",
    "reports",
)
QUICK = {"train_head.epochs": 1, "train_head.folds": 0, "fine_tune.epochs": 1}


def tree_bytes(folders: list[Path], seen: set) -> int:
    """Bytes of the files under `folders`, each inode once (a hard link counted where it is first met)."""
    total = 0
    for folder in folders:
        for root, _, names in os.walk(folder):
            for name in names:
                stat = os.lstat(os.path.join(root, name))
                if (stat.st_dev, stat.st_ino) not in seen:
                    seen.add((stat.st_dev, stat.st_ino))
                    total += stat.st_size if not os.path.islink(os.path.join(root, name)) else 0
    return total


def measure(project: Path) -> dict:
    """Per output folder and the cache, bytes not already counted (workspace first: a linked file counts there)."""
    seen: set = set()
    sizes = {name: tree_bytes([project / name], seen) for name in OUTPUTS}
    sizes["(.dvc/cache, beyond the workspace)"] = tree_bytes([project / ".dvc" / "cache"], seen)
    return sizes


def smoke_source(where: Path) -> Path:
    """12 small generated photos in 2 classes: the benchmark's code path in seconds."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(2):
        for i in range(12):
            (where / f"c{c}").mkdir(parents=True, exist_ok=True)
            pixels = np.clip(rng.normal(60 + 120 * c, 40, (48, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(where / f"c{c}" / f"{i}.jpg", quality=90)
    return where


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digits", action="store_true", help="the embedded default instead of Flowers-17")
    parser.add_argument("--quick", action="store_true", help="1 epoch, no k-fold: the same files, sooner")
    parser.add_argument("--smoke", action="store_true", help="a few generated images, tiny models: in seconds")
    args = parser.parse_args()

    project = harness.clone("disk")
    overrides = {} if args.digits else dict(harness.FLOWERS_PARAMS)
    if args.smoke:
        source = smoke_source(Path(tempfile.mkdtemp(prefix="bench-disk-src-")))
        overrides = {
            "data.source": str(source),
            "normalize.image_size": 32,
            "split.val": 0.25,
            "split.test": 0.25,
            "base.weights": "none",
            "fine_tune.unfreeze_from": "block_16_expand",
            "head.units": 8,
        } | QUICK
    elif args.quick:
        overrides |= QUICK
    source = Path(overrides.get("data.source", project / harness.read_params(project)["data"]["source"]))
    harness.set_params(project, overrides)
    harness.run(["git", "commit", "-qam", "the benchmark's params"], project)
    source_bytes = sum(f.stat().st_size for f in source.rglob("*") if f.is_file())

    first = harness.run(["dvc", "exp", "run", "-n", "first"], project)
    after_first = measure(project)
    second = harness.run(["dvc", "exp", "run", "-n", "augment-seed-1", "-S", "augment.seed=1"], project)
    after_second = measure(project)

    mb = 1e6
    print(
        f"\nsource {source}: {source_bytes / mb:.1f} MB; cache.type: "
        f"{harness.run(['dvc', 'config', 'cache.type'], project).output.strip() or 'copy (DVC default)'}"
    )
    print(f"{'output':38}{'1st experiment':>16}{'after 2nd':>12}")
    for name in after_first:
        print(f"{name:38}{after_first[name] / mb:13.1f} MB{after_second[name] / mb:9.1f} MB")
    total_first, total_second = sum(after_first.values()), sum(after_second.values())
    print(f"{'total':38}{total_first / mb:13.1f} MB{total_second / mb:9.1f} MB")
    print(
        f"first experiment: {total_first / source_bytes:.2f}x the source ({first.seconds:.0f} s); the second "
        f"(augment.seed=1, ran: {', '.join(harness.stages_run(second.output))}) added "
        f"{(total_second - total_first) / source_bytes:.2f}x ({second.seconds:.0f} s)"
    )
    if args.smoke:
        shutil.rmtree(source, ignore_errors=True)
    shutil.rmtree(project.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
