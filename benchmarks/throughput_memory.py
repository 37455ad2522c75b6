"""Benchmark 4: extract-features throughput, bfloat16 vs float32, and peak memory of every stage
on Flowers-17 and on a 10x larger copy of it.

    python benchmarks/throughput_memory.py               # 1x and 10x (the 10x run takes a while)
    python benchmarks/throughput_memory.py --scale 1     # 1x only
    python benchmarks/throughput_memory.py --smoke       # a few generated images, 1x and 2x, smallest params (tests)

Runs each stage's script in order in a fresh clone (224 px, 1 augmented copy, 2 fine-tune epochs)
and records its wall time and peak memory: anonymous (sampled from /proc) and resident (wait4's ru_maxrss). The 10x set
repeats every image 10 times (hard links) in its class folder. Memory should stay flat, not grow ~10x: arrays are
memory-mapped and processed a chunk at a time.
"""

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import harness

STAGES = ["ingest", "split", "normalize", "augment", "extract_features", "train_head", "fine_tune", "evaluate"]


def repeated(source: Path, times: int) -> Path:
    """A copy of an image-folder dataset with every image `times` times (hard links where possible)."""
    root = Path(tempfile.mkdtemp(prefix="bench-repeated-")) / "images"
    for image in sorted(source.rglob("*")):
        if image.is_file():
            for i in range(times):
                target = root / image.relative_to(source).with_name(f"{image.stem}_{i}{image.suffix}")
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(image, target)
                except OSError:
                    shutil.copyfile(image, target)
    return root


def run_stages(source: Path, copies: int, precision: str = "float32", smoke: bool = False) -> tuple[Path, dict]:
    project = harness.clone("memory")
    harness.set_params(
        project,
        harness.FLOWERS_PARAMS
        | {
            "data.source": str(source),
            "normalize.image_size": 224,
            "augment.copies": copies,
            "fine_tune.epochs": 2,
            "base.precision": precision,
        }
        | (harness.SMOKE_PARAMS | {"augment.copies": copies} if smoke else {}),
    )
    timings = {}
    for stage in STAGES:
        timings[stage] = harness.run(["python", "-m", f"stages.{stage}"], project)
        print(
            f"  {stage:22}{timings[stage].seconds:8.1f} s {timings[stage].peak_anon_mb:8.0f} MB anonymous "
            f"{timings[stage].peak_mb:8.0f} MB resident",
            flush=True,
        )
    return project, timings


def extracted_images(project: Path) -> int:
    import numpy as np

    return sum(
        len(np.load(project / f"data/features/{s}_features.npy", mmap_mode="r")) for s in ("train", "val", "test")
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=harness.FLOWERS)
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--scale", type=int, default=10, help="size of the larger set, as a multiple (1: skip it)")
    parser.add_argument("--smoke", action="store_true", help="a few generated images, 32 px, --scale 2: that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.source, args.scale = harness.smoke_images(), 2

    print(f"1x: {args.source}")
    project, one = run_stages(args.source, args.copies, smoke=args.smoke)
    n_images = extracted_images(project)
    float32 = one["extract_features"].seconds
    head_float32 = harness.read_json(project / "metrics/evaluate.json")["head"]["accuracy"]
    harness.set_params(project, {"base.precision": "bfloat16"})
    bfloat16 = harness.run(["python", "-m", "stages.extract_features"], project).seconds
    for stage in ("train_head", "evaluate"):
        harness.run(["python", "-m", f"stages.{stage}"], project)
    head_bfloat16 = harness.read_json(project / "metrics/evaluate.json")["head"]["accuracy"]

    size = harness.read_params(project)["normalize"]["image_size"]
    print(f"\nextract-features, {n_images} images at {size} px (whole stage, start-up included):")
    print(
        f"  float32  {float32:7.1f} s  {n_images / float32:6.1f} images/s  head-only test accuracy {head_float32:.4f}"
    )
    print(
        f"  bfloat16 {bfloat16:7.1f} s  {n_images / bfloat16:6.1f} images/s  head-only test accuracy "
        f"{head_bfloat16:.4f}"
    )
    print(
        f"  bfloat16 speed-up {float32 / bfloat16:.2f}x, accuracy change {100 * (head_bfloat16 - head_float32):+.2f} "
        "points"
    )

    if args.scale > 1:
        print(f"\n{args.scale}x: every image repeated {args.scale} times")
        _, big = run_stages(repeated(args.source, args.scale), args.copies, smoke=args.smoke)
        print(
            "\npeak memory per stage, MB: anonymous (what the stage holds) and resident (ru_maxrss, which also "
            "counts\n"
            "the pages of the memory-mapped arrays it streams through; the kernel reclaims those), 1x vs "
            f"{args.scale}x the images:"
        )
        print(
            "  "
            f"{'stage':22}{'anon 1x':>9}{f'{args.scale}x':>8}{'ratio':>7}{'rss 1x':>9}{f'{args.scale}x':>8}{'ratio':>7}"
        )
        for stage in STAGES:
            a, b = one[stage], big[stage]
            print(
                f"  {stage:22}{a.peak_anon_mb:9.0f}{b.peak_anon_mb:8.0f}{b.peak_anon_mb / max(a.peak_anon_mb, 1):7.2f}"
                f"{a.peak_mb:9.0f}{b.peak_mb:8.0f}{b.peak_mb / a.peak_mb:7.2f}"
            )


if __name__ == "__main__":
    main()
