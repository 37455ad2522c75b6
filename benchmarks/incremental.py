"""Benchmark 3: how much of a full run DVC reruns after a small change, and after none.

    python benchmarks/incremental.py           # Flowers-17 at 224 (the README's flowers params)
    python benchmarks/incremental.py --digits  # the embedded default
    python benchmarks/incremental.py --smoke   # a few generated images, smallest params: that it runs (tests)

Times, in one fresh clone: the full `dvc repro`, a no-op `dvc repro`, and `dvc repro` after
changing one train-head param (train_head.lr), and prints each as a fraction of the full run.
"""

import argparse

import harness


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digits", action="store_true", help="the embedded default instead of Flowers-17")
    parser.add_argument("--smoke", action="store_true", help="a few generated images, smallest params: that it runs")
    args = parser.parse_args()

    project = harness.clone("incremental")
    if args.smoke:
        harness.set_params(project, harness.smoke_flowers_params())
        harness.skip_export(project)
    elif not args.digits:
        harness.set_params(project, harness.FLOWERS_PARAMS)
    full = harness.run(["dvc", "repro"], project)
    noop = harness.run(["dvc", "repro"], project)
    harness.set_params(project, {"train_head.lr": 0.0005})
    head = harness.run(["dvc", "repro"], project)

    print(f"\n{'smoke' if args.smoke else 'digits' if args.digits else 'Flowers-17'}:")
    for name, timed in (("full dvc repro", full), ("no-op dvc repro", noop), ("train_head.lr changed", head)):
        ran = ", ".join(harness.stages_run(timed.output)) or "nothing"
        print(
            f"{name:24}{timed.seconds:8.1f} s  {100 * timed.seconds / full.seconds:5.1f} % of the full run  (ran: "
            f"{ran})"
        )


if __name__ == "__main__":
    main()
