"""Benchmark 5: three queued experiments run one at a time vs two at a time (DVC's experiment queue).

    python benchmarks/queue_experiments.py                 # the embedded default (digits)
    python benchmarks/queue_experiments.py --smoke         # a few generated images, one experiment a batch (tests)

In a fresh clone: `dvc repro` once (the baseline, which fills the DVC cache) and a commit, then
three `dvc exp run --queue -S train_head.seed=...` + `dvc queue start -j 1`, and three more (other
seeds, so DVC's run cache cannot skip them) + `dvc queue start -j 2`. Each experiment reruns
train-head, fine-tune and evaluate with early stopping off (patience 0), so every one does the same
work. Prints the wall time of each batch of three, from `dvc queue start` until the queue is empty.
"""

import argparse
import os
import re
import subprocess
import time

import harness

FIXED_WORK = ["-S", "train_head.patience=0", "-S", "fine_tune.patience=0"]


def ended(status: str, state: str = "Success|Failed") -> int:
    """Tasks of `dvc queue status` in that state (earlier batches' too)."""
    return len(re.findall(rf"\b({state})\b", status))


def queue_status(project, attempts: int = 5) -> str:
    """`dvc queue status`, asked again after 2 s when it fails while a worker writes a task's state file ("unexpected
    error - Expecting value"), up to `attempts` times."""
    for attempt in range(attempts):
        try:
            return harness.run(["dvc", "queue", "status"], project).output
        except SystemExit:
            if attempt == attempts - 1:
                raise
            time.sleep(2)


def run_queued(project, seeds: list[int], jobs: int) -> float:
    before = queue_status(project)
    for seed in seeds:
        harness.run(["dvc", "exp", "run", "--queue", "-S", f"train_head.seed={seed}", *FIXED_WORK], project)
    start = time.perf_counter()
    harness.run(["dvc", "queue", "start", "-j", str(jobs)], project)
    # until every task of this batch has ended: one that a worker is taking from the queue is listed as neither Queued
    # nor Running for a moment (DVC lists the queue, then the workers' tasks), which ended a wait for those two states
    # early (a -j 2 batch "done" in 25 s while its experiment ran on)
    while ended(status := queue_status(project)) < ended(before) + len(seeds):
        time.sleep(2)
    seconds = time.perf_counter() - start
    if ended(status, "Success") < ended(before, "Success") + len(seeds):
        raise SystemExit(f"queued experiments failed in {project}:\n{status}")
    # and until its workers have stopped (they do a few seconds after the queue empties): `dvc queue start` of the
    # next batch names its workers like these, and a task taken by a worker that is told to shut down stays Running
    # forever with no worker (seen: the -j 2 batch's experiment, while the -j 1 worker was still idle)
    for _ in range(150):
        if re.search(r"Worker status: 0 active, 0 idle", status):
            return seconds
        time.sleep(2)
        status = queue_status(project)
    raise SystemExit(f"the queue's workers did not stop in {project}:\n{status}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few generated images, smallest params, one experiment per batch: that it runs",
    )
    args = parser.parse_args()

    project = harness.clone("queue")
    if args.smoke:  # committed below: queued experiments run from the commit
        harness.set_params(project, harness.smoke_flowers_params())
        harness.skip_export(project)
    print(f"baseline dvc repro in {project} ...", flush=True)
    baseline = harness.run(["dvc", "repro"], project)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "baseline", "--allow-empty"], cwd=project, check=True)

    one = run_queued(project, [1] if args.smoke else [1, 2, 3], jobs=1)
    two = run_queued(project, [4] if args.smoke else [4, 5, 6], jobs=2)
    table = harness.run(["dvc", "exp", "show", "--csv", "--only-changed"], project).output

    n = 1 if args.smoke else 3
    print(
        f"\n{'smoke' if args.smoke else 'digits'}, {os.cpu_count()} CPU cores; baseline dvc repro "
        f"{baseline.seconds:.0f} s"
    )
    print(f"{n} queued experiments, dvc queue start -j 1: {one:7.1f} s")
    print(f"{n} queued experiments, dvc queue start -j 2: {two:7.1f} s   ({one / two:.2f}x faster)")
    print(f"\n{table}")


if __name__ == "__main__":
    main()
