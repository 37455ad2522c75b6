"""What the review features cost evaluate: the stage as it is against the same stage without its Grad-CAM heatmaps
and calibration (issue 29: at most +25 %).

    python benchmarks/review_cost.py           # the embedded default (digits), 3 runs of each, interleaved
    python benchmarks/review_cost.py --repeat 5
    python benchmarks/review_cost.py --smoke   # a few generated images, smallest params: that it runs (tests)

In one fresh clone: `dvc repro` once, then evaluate alone (`python -m stages.evaluate`), alternately without the
review features and with them. "Without" is this script run as `--evaluate-without-review`: the same stage with
heatmaps.write and calibration's metrics, plots and review lines replaced by nothing, so the difference is exactly
what they add (the rest of the stage, its TensorFlow start-up, model loading and predictions, runs the same).
"With" is the stage as committed, timed inside too (--evaluate-timed): the seconds of the heatmaps and of the
calibration. The last run is a normal one, so the clone's outputs end as the pipeline writes them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import harness


def evaluate(without_review: bool) -> None:
    """stages.evaluate in this process (cwd: the project, on PYTHONPATH), the review features off or timed."""
    from stages import evaluate as stage

    from transfer_learning import calibration, heatmaps

    seconds = {"heatmaps": 0.0, "calibration": 0.0}

    def timed(name, function, replacement=None):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return replacement if without_review else function(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - start

        return wrapper

    heatmaps.write = timed("heatmaps", heatmaps.write, [])
    calibration.metrics = timed("calibration", calibration.metrics, {})
    calibration.write_plots = timed("calibration", calibration.write_plots)
    calibration.review_lines = timed("calibration", calibration.review_lines, [])
    stage.main()
    print(f"review features inside: heatmaps {seconds['heatmaps']:.2f} s, calibration {seconds['calibration']:.2f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant (the median is reported)")
    parser.add_argument("--smoke", action="store_true", help="a few generated images, smallest params: that it runs")
    parser.add_argument("--evaluate-without-review", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--evaluate-timed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.evaluate_without_review or args.evaluate_timed:
        return evaluate(args.evaluate_without_review)

    project = harness.clone("review-cost")
    if args.smoke:
        harness.set_params(project, harness.SMOKE_PARAMS | {"data.source": str(harness.smoke_images())})
    harness.run(["dvc", "repro"], project)
    script = str(project / "benchmarks" / "review_cost.py")
    times = {"without": [], "with": []}
    inside = []
    for _ in range(1 if args.smoke else args.repeat):
        stage_env = {"PYTHONPATH": str(project)}  # the project's stages/, as `python -m stages.evaluate` finds them
        without = harness.run([sys.executable, script, "--evaluate-without-review"], project, env=stage_env)
        times["without"].append(without.seconds)
        timed = harness.run([sys.executable, script, "--evaluate-timed"], project, env=stage_env)
        times["with"].append(timed.seconds)
        inside.append(timed.output.strip().splitlines()[-1])
    status = harness.run(["dvc", "status"], project).output.strip()  # the last run was a normal one

    print(f"\n{'smoke' if args.smoke else 'digits'}: evaluate, seconds per run (interleaved, without first)")
    for name, values in times.items():
        print(
            f"{name + ' review features':28}{' '.join(f'{v:6.1f}' for v in values)}   median "
            f"{statistics.median(values):6.1f} s"
        )
    growth = statistics.median(times["with"]) / statistics.median(times["without"]) - 1
    print(f"evaluate's time growth from the review features: {100 * growth:+.1f} % (target at most +25 %)")
    for line in inside:
        print(f"  with: {line}")
    print(f"dvc status after the runs: {status.splitlines()[-1] if status else 'nothing'}")


if __name__ == "__main__":
    main()
