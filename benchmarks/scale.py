"""Benchmark: the pipeline on 1x, 4x and 16x a Flowers-sized set, per stage: time per 1,000 images, peak memory, disk.

    python benchmarks/scale.py                   # 1x, 4x, 16x of Flowers-17 (1,360 -> 21,760 images)
    python benchmarks/scale.py --scales 1 4      # fewer scales
    python benchmarks/scale.py --until split     # the stages up to split only (ingest's figures in minutes)
    python benchmarks/scale.py --smoke           # 1x and 2x of 16 images, tiny models: the test of this benchmark

The larger sets are distinct photos made from the real ones (a random crop of 60-100 % of each side, a rotation of up
to 20 degrees, a colour shift; JPEG quality 92), so ingest finds no duplicates among them. Every scale runs the same
lighter params than the README's line (96 px, 1 augmented copy, 2 epochs each, no k-fold), stage by stage
(`dvc repro -s <stage>` in order) in its own fresh clone, and prints for each stage and scale: seconds per 1,000
images, peak anonymous memory (what the stage's process holds, mapped file pages excluded; and with the `dvc repro`
around it, whose own memory grows with the files it hashes), the bytes of its outputs (each file
once: DVC links its cache), then the whole project's disk against the source, and `dvc status` seconds after a no-op
and after one added image.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import harness

STAGES = ["ingest", "split", "normalize", "augment", "extract-features", "train-head", "fine-tune", "evaluate"]
PARAMS = {
    "normalize.image_size": 96,
    "augment.copies": 1,
    "augment.horizontal_flip": True,
    "train_head.epochs": 2,
    "train_head.folds": 0,
    "fine_tune.epochs": 2,
    "fine_tune.unfreeze_from": "block_13_expand",
}
OUTPUTS = {
    "ingest": ["data/ingested"],
    "split": ["data/split"],
    "normalize": ["data/normalized"],
    "augment": ["data/augmented"],
    "extract-features": ["data/features", "data/activations"],
    "train-head": ["models/head.keras"],
    "fine-tune": ["models/model.keras"],
    "evaluate": ["plots", "reports", "metrics"],
}


def make_set(photos: list[Path], copies: int, where: Path, size: int | None = None) -> int:
    """`copies` distinct variants of every photo (class folders kept) under `where`, one process per core (21,760
    JPEGs at 16x); -> the number of images."""
    with ProcessPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        jobs = [(photo, i, copies, where, size) for i, photo in enumerate(photos)]
        return sum(pool.map(make_variants, *zip(*jobs), chunksize=8))


def make_variants(photo: Path, i: int, copies: int, where: Path, size: int | None) -> int:
    """The photo itself, then copies - 1 variants of it, each seeded by the photo's number: the same set every run."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(i)
    with Image.open(photo) as im:
        im = im.convert("RGB")
        if size:
            im = im.resize((size, size))
        for c in range(copies):
            out = where / photo.parent.name / f"{photo.stem}_{c}.jpg"
            out.parent.mkdir(parents=True, exist_ok=True)
            if c == 0:
                picture = im
            else:
                w, h = im.size
                cw, ch = int(w * rng.uniform(0.6, 1)), int(h * rng.uniform(0.6, 1))
                x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                picture = im.crop((x, y, x + cw, y + ch)).rotate(float(rng.uniform(-20, 20)), Image.Resampling.BILINEAR)
                shift = rng.uniform(0.8, 1.2, 3)
                picture = Image.fromarray(np.clip(np.asarray(picture, np.float32) * shift, 0, 255).astype(np.uint8))
            picture.save(out, quality=92)
    return copies


def unique_bytes(paths: list[Path], seen: set) -> int:
    total = 0
    for path in paths:
        files = [path] if path.is_file() else [Path(r) / n for r, _, ns in os.walk(path) for n in ns]
        for file in files:
            stat = os.lstat(file)
            if (stat.st_dev, stat.st_ino) not in seen and not file.is_symlink():
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total


def run_scale(photos: list[Path], scale: int, params: dict, size: int | None, stages: list[str]) -> dict:
    source = Path(tempfile.mkdtemp(prefix=f"bench-scale-{scale}x-"))
    n = make_set(photos, scale, source, size)
    source_bytes = sum(f.stat().st_size for f in source.rglob("*") if f.is_file())
    project = harness.clone(f"scale-{scale}x")
    harness.set_params(project, params | {"data.source": str(source)})
    figures, seen = {}, set()
    for stage in stages:
        timed = harness.run(["dvc", "repro", "-s", stage], project)
        disk = unique_bytes([project / p for p in OUTPUTS[stage]], seen)
        figures[stage] = (timed.seconds, timed.peak_children_mb, disk, timed.peak_anon_mb)
        # as it goes: a long run that fails at 16x keeps its smaller scales' figures
        print(
            f"{scale}x {stage}: {n} images, {timed.seconds:.1f} s, the stage {timed.peak_children_mb:.0f} MB, "
            f"with dvc repro {timed.peak_anon_mb:.0f} MB",
            flush=True,
        )
    cache = unique_bytes([project / ".dvc" / "cache"], seen)
    start = time.perf_counter()
    harness.run(["dvc", "status"], project)
    noop = time.perf_counter() - start
    first = sorted(source.rglob("*.jpg"))[0]
    shutil.copy(first, first.with_name("added.jpg"))
    start = time.perf_counter()
    harness.run(["dvc", "status"], project)
    added = time.perf_counter() - start
    shutil.rmtree(project.parent, ignore_errors=True)
    shutil.rmtree(source, ignore_errors=True)
    return {
        "images": n,
        "source": source_bytes,
        "stages": figures,
        "cache": cache,
        "status_noop": noop,
        "status_added": added,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--until", choices=STAGES, default=STAGES[-1], help="the last stage to run (default: all)")
    parser.add_argument("--smoke", action="store_true", help="16 photos at 1x and 2x, tiny models: in a minute")
    args = parser.parse_args()
    photos = sorted(p for p in harness.FLOWERS.rglob("*.jpg"))
    params, size, scales = dict(PARAMS), None, args.scales
    if args.smoke:
        photos = [p for d in sorted({p.parent for p in photos})[:2] for p in sorted(d.glob("*.jpg"))[:8]]
        params |= {
            "normalize.image_size": 32,
            "base.weights": "none",
            "fine_tune.unfreeze_from": "block_16_expand",
            "head.units": 8,
            "train_head.epochs": 1,
            "fine_tune.epochs": 1,
        }
        size, scales = 64, [1, 2]
    stages = STAGES[: STAGES.index(args.until) + 1]
    results = {scale: run_scale(photos, scale, params, size, stages) for scale in scales}

    mb = 1e6
    print(
        "\nper stage: seconds per 1,000 images | peak anonymous memory of the stage's process (MB) | of it and "
        f"dvc repro around it (MB) | output MB; params {params}"
    )
    heads = [f"{s}x ({r['images']} images)" for s, r in results.items()]
    print(f"{'stage':18}" + "".join(f"{head:>45}" for head in heads))
    for stage in stages:
        cells = [r["stages"][stage] for r in results.values()]
        print(
            f"{stage:18}"
            + "".join(
                f"{1000 * sec / r['images']:12.2f} s {mem:8.0f} MB {total:8.0f} MB {disk / mb:7.1f} MB"
                for (sec, mem, disk, total), r in zip(cells, results.values())
            )
        )
    for scale, r in results.items():
        total = sum(d for _, _, d, _ in r["stages"].values()) + r["cache"]
        print(
            f"{scale}x: source {r['source'] / mb:.0f} MB, outputs + cache {total / mb:.0f} MB = "
            f"{total / r['source']:.2f}x the "
            f"source; dvc status {r['status_noop']:.1f} s (no-op), {r['status_added']:.1f} s (one image added)"
        )
    base = results[scales[0]]
    for scale, r in list(results.items())[1:]:
        ratios = [
            (
                stage,
                (r["stages"][stage][0] / r["images"]) / max(base["stages"][stage][0] / base["images"], 1e-9),
                r["stages"][stage][1] / max(base["stages"][stage][1], 1e-9),
                r["stages"][stage][3] / max(base["stages"][stage][3], 1e-9),
            )
            for stage in stages
        ]
        print(
            f"{scale}x against {scales[0]}x (time per image, peak memory of the stage, of it and dvc repro): "
            + ", ".join(f"{stage} {t:.2f}/{m:.2f}/{d:.2f}" for stage, t, m, d in ratios)
        )


if __name__ == "__main__":
    main()
