"""Benchmark 2: the whole pipeline on Flowers-17 vs a single-script Keras tutorial baseline.

    python benchmarks/vs_tutorial.py
    python benchmarks/vs_tutorial.py --smoke   # a few generated images at 32 px, 1 + 1 tutorial epochs (tests)

Runs the full `dvc repro` in a fresh clone with the README's Flowers-17 params, then the
tutorial-style script (tutorial_baseline.py) on the same split, and prints the wall time each
needs to reach the pipeline's fine-tuned test accuracy. If the tutorial never gets there, it also
compares the time to the tutorial's best test accuracy (the whole pipeline run, conservatively).
"""

import argparse
import json
import sys
from pathlib import Path

import harness


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="split.seed")
    parser.add_argument("--smoke", action="store_true", help="a few generated images, smallest params: that it runs")
    args = parser.parse_args()

    project = harness.clone("vs-tutorial")
    harness.set_params(
        project, (harness.smoke_flowers_params() if args.smoke else harness.FLOWERS_PARAMS) | {"split.seed": args.seed}
    )
    if args.smoke:
        harness.skip_export(project)
    pipeline = harness.run(["dvc", "repro"], project)
    accuracy = harness.read_json(project / "metrics/evaluate.json")["fine_tuned"]["accuracy"]
    print(f"pipeline: dvc repro {pipeline.seconds:.1f} s, fine-tuned test accuracy {accuracy:.4f}", flush=True)

    smallest = ["--image-size", "32", "--head-epochs", "1", "--fine-tune-epochs", "1"] if args.smoke else []
    baseline = harness.run(
        [
            sys.executable,
            str(Path(__file__).with_name("tutorial_baseline.py")),
            str(project),
            "--target",
            str(accuracy),
            *smallest,
        ],
        project,
    )
    print(baseline.output[-4000:])
    result = json.loads(baseline.output.strip().splitlines()[-1])
    data = "smoke" if args.smoke else "Flowers-17"
    print(
        f"\n{data}, split.seed {args.seed}: pipeline {pipeline.seconds:.1f} s to test accuracy {accuracy:.4f} (whole "
        "dvc repro)"
    )
    if result["reached_target_s"] is None:
        print(
            f"tutorial: never reached it in {result['total_s']:.1f} s of training (best "
            f"{result['best_accuracy']:.4f}); "
            f"speed-up > {result['total_s'] / pipeline.seconds:.1f}x"
        )
        print(
            f"at the tutorial's best accuracy instead: tutorial {result['reached_best_s']:.1f} s to "
            f"{result['best_accuracy']:.4f}, "
            f"pipeline {pipeline.seconds:.1f} s (its only test score, {accuracy:.4f}, is the end of the run): "
            f"speed-up {result['reached_best_s'] / pipeline.seconds:.1f}x"
        )
    else:
        print(
            f"tutorial: reached it after {result['reached_target_s']:.1f} s of training; "
            f"speed-up {result['reached_target_s'] / pipeline.seconds:.1f}x"
        )


if __name__ == "__main__":
    main()
