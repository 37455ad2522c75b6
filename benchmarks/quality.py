"""Benchmark 7: model quality over split seeds, Flowers-17 and UTKFace ages, through DVC's experiment queue.

    python benchmarks/quality.py                                  # both datasets, split.seed 0 1 2
    python benchmarks/quality.py --dataset flowers --seeds 0      # one dataset, one seed
    python benchmarks/quality.py -S fine_tune.epochs=16           # the README configurations plus an override
    python benchmarks/quality.py --project /tmp/q/project -S ...  # reuse a clone: its DVC cache skips unchanged stages
    python benchmarks/quality.py --smoke                          # generated images, one seed, smallest params

In one clone (fresh, after a `dvc repro` of the committed params that fills its DVC cache; or --project, brought up to
this repository's commit with `git pull`), queues one
`dvc exp run --queue -n <dataset>-s<seed>-<tag> -S ...` per dataset and seed with the README's params (FLOWERS,
UTKFACE below) plus the -S overrides, runs them with `dvc queue start -j N`, and reads their metrics from
`dvc exp show --json`. Prints per seed and mean +/- std (over seeds, n-1) the test figures of the head only and the
fine-tuned model, their validation figures (metrics/train_head.json, fine_tune.json: what to select on) and the
wall time of each run (from `dvc queue status`, polled every 10 s; with -j 1 one run at a time). An experiment of
the same name (same dataset, seed and overrides) made on the clone's current commit is reported, not run again; after
`git pull` brings a new commit it runs again (its stages come from DVC's run cache where their code and params did not
change).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import subprocess
import time
from pathlib import Path

import harness

UTKFACE = harness.ROOT.parent / "shared" / "datasets" / "utkface-age"
CONFIGS = {
    "flowers": harness.FLOWERS_PARAMS,
    "utkface": {
        "data.task": "regression",
        "data.source": str(UTKFACE),
        "data.csv": "labels.csv",
        "data.target_column": "age",
        "normalize.image_size": 128,
        "augment.horizontal_flip": True,
        "fine_tune.unfreeze_from": "block_6_expand",
        "fine_tune.optimizer": "adam",
        "fine_tune.lr": 0.0003,
        "fine_tune.loss": "mae",
        "fine_tune.epochs": 30,
        "fine_tune.patience": 10,
        "fine_tune.tta": "flip",
    },  # the README's UTKFace line
}
POLL = 10  # seconds between two `dvc queue status`


def parse_overrides(pairs: list[str]) -> dict:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"-S {pair!r}: expected section.key=value")
        overrides[key] = value
    return overrides


def tag_of(overrides: dict) -> str:
    """'base' without overrides, else a short hash of them: the same overrides give the same experiment names."""
    if not overrides:
        return "base"
    return hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]


def smoke_configs() -> dict:
    """CONFIGS on a few generated images (classes; ages for the regression) with the smallest params."""
    return {
        "flowers": harness.smoke_flowers_params(),
        "utkface": CONFIGS["utkface"]
        | harness.SMOKE_PARAMS
        | {"data.source": str(harness.smoke_images("ages")), "split.bins": 3},
    }  # 24 ages: 8 a bin


def prepare(project_arg: str | None, baseline: dict | None = None) -> Path:
    """baseline: params set and committed in a fresh clone before its first `dvc repro` (--smoke: not the digits
    run)."""
    if project_arg is None:
        project = harness.clone("quality")
        if baseline:  # its run committed as the baseline: the committed dvc.lock then names what the cache holds
            harness.set_params(project, baseline)
            harness.skip_export(project)  # only --smoke passes a baseline
            print(f"dvc repro of the smoke baseline in {project} ...", flush=True)
            harness.run(["dvc", "repro"], project)
            subprocess.run(["git", "add", "-A"], cwd=project, check=True)
            subprocess.run(["git", "commit", "-qm", "smoke baseline"], cwd=project, check=True)
        else:
            # the committed run (digits) into the clone's DVC cache: an experiment whose data stages come from the run
            # cache still loads the committed dvc.lock's output folders, and fails where the cache lacks them
            print(f"dvc repro of the committed params (digits) in {project} ...", flush=True)
            harness.run(["dvc", "repro"], project)
            # the workspace as committed (the cache keeps the run)
            subprocess.run(["git", "checkout", "-q", "."], cwd=project, check=True)
    else:
        project = Path(project_arg).resolve()
        subprocess.run(["git", "pull", "-q", "--ff-only"], cwd=project, check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=project, capture_output=True, text=True
    ).stdout.strip()
    print(f"project: {project} at {commit}", flush=True)
    return project


def experiments(project: Path) -> dict:
    """`dvc exp show --json`: experiment name -> its metrics files' data."""
    shown = json.loads(harness.run(["dvc", "exp", "show", "--json"], project).output)
    found = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            rev = exp["revs"][0]
            if exp.get("name") and rev.get("data") and not rev.get("error"):  # not a failed run
                found[exp["name"]] = {
                    path: metric["data"] for path, metric in (rev["data"].get("metrics") or {}).items()
                }
    return found


def queue_tasks(project: Path, attempts: int = 5, poll: float = POLL) -> list[tuple[str, str, str]]:
    """`dvc queue status`: (task, name, state) of every task, old ones included. It sometimes fails while a worker
    writes a task's state file ("unexpected error - Expecting value"): asked again after a poll interval, up to
    `attempts` times."""
    for attempt in range(attempts):
        try:
            status = harness.run(["dvc", "queue", "status"], project).output
            break
        except SystemExit:
            if attempt == attempts - 1:
                raise
            time.sleep(poll)
    return re.findall(r"^([0-9a-f]+)\s+(\S+)\s.*?\b(Queued|Running|Success|Failed)\b", status, re.M)


def run_queue(
    project: Path, names: list[str], jobs: int, timings: Path, old_tasks: set[str], poll: float = POLL
) -> None:
    """Start the queue and wait for it, noting when each experiment starts and stops running (wall time). Tasks from
    before (old_tasks: a failed run of the same name) are not looked at."""
    seconds = {
        name: s
        for name, s in (json.loads(timings.read_text()) if timings.exists() else {}).items()
        if name not in names
    }
    # a name run again (on a new commit) gets its new time
    harness.run(["dvc", "queue", "start", "-j", str(jobs)], project)
    started = {}
    while True:
        now = time.monotonic()
        states = {
            name: state
            for task, name, state in queue_tasks(project, poll=poll)
            if task not in old_tasks and name in names
        }
        for name, state in states.items():
            if state == "Running" and name not in started:
                started[name] = now
                print(f"  {name} running", flush=True)
            elif state in ("Success", "Failed") and name in started and name not in seconds:
                seconds[name] = round(now - started[name], 1)
                print(f"  {name}: {state} after {seconds[name] / 60:.1f} min", flush=True)
                timings.write_text(json.dumps(seconds, indent=1))
        # done when every name has ended: a task that a worker is taking from the queue is listed as neither Queued nor
        # Running for a moment (DVC lists the queue, then the workers' tasks)
        if all(states.get(name) in ("Success", "Failed") for name in names):
            failed = [name for name, state in states.items() if state == "Failed"]
            if failed:
                raise SystemExit(f"failed: {', '.join(failed)}; see `dvc queue logs <name>` in {project}")
            return
        time.sleep(poll)


def figures(metrics: dict, task: str) -> dict:
    m = "accuracy" if task == "classification" else "mae"
    evaluate, head, fine = (
        metrics["metrics/evaluate.json"],
        metrics["metrics/train_head.json"],
        metrics["metrics/fine_tune.json"],
    )
    row = {
        "head test": evaluate["head"][m],
        "fine-tuned test": evaluate["fine_tuned"][m],
        "head val": head[f"val_{m}"],
        "fine-tuned val": fine[f"val_{m}"],
    }
    if "kfold" in head:  # train_head.folds > 0: k-fold estimate of the head on train + val (stored features)
        row["head k-fold"] = head["kfold"][f"{m}_mean"]
    if f"model_val_{m}" in fine:  # the saved model (with its test-time augmentation) on val
        row["saved val"] = fine[f"model_val_{m}"]
    return row


def report(dataset: str, seeds: list[int], rows: dict, seconds: dict, overrides: dict) -> None:
    task = "classification" if dataset == "flowers" else "regression"
    unit = "accuracy" if task == "classification" else "MAE, years"
    print(
        f"\n{dataset} ({unit}); README "
        f"params{' + ' + ' '.join(f'{k}={v}' for k, v in overrides.items()) if overrides else ''}"
    )
    columns = list(next(iter(rows.values())))
    print(f"{'split.seed':>12}" + "".join(f"{c:>17}" for c in columns) + f"{'minutes':>10}")
    for seed in seeds:
        minutes = seconds.get(seed)
        print(
            f"{seed:>12}"
            + "".join(f"{rows[seed][c]:>17.4f}" for c in columns)
            + (f"{minutes / 60:>10.1f}" if minutes else f"{'-':>10}")
        )
    if len(seeds) > 1:
        spreads = ([rows[s][c] for s in seeds] for c in columns)
        cells = "".join(f"{statistics.mean(v):.4f} ±{statistics.stdev(v):.4f}".rjust(17) for v in spreads)
        print(f"{'mean ± std':>12}" + cells)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["flowers", "utkface", "both"], default="both")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split.seed values")
    parser.add_argument(
        "-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="params override for every run"
    )
    parser.add_argument(
        "-j", dest="jobs", type=int, default=1, help="queue workers (1: one run at a time, honest wall times)"
    )
    parser.add_argument("--project", help="an existing clone to reuse (its DVC cache and experiments)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="generated images, smallest params, seed 0, a fresh clone "
        "whose baseline is the smoke flowers run: that it runs",
    )
    args = parser.parse_args()
    overrides = parse_overrides(args.overrides)
    datasets = ["flowers", "utkface"] if args.dataset == "both" else [args.dataset]
    configs, poll = CONFIGS, POLL
    if args.smoke:
        configs, poll, args.seeds, args.project = smoke_configs(), 1, [0], None
    project = prepare(args.project, configs["flowers"] if args.smoke else None)
    timings = project.parent / "quality_timings.json"  # wall time per experiment name, kept beside the clone

    tag = tag_of(overrides)
    names = {(d, s): f"{d}-s{s}-{tag}" for d in datasets for s in args.seeds}
    harness.run(["dvc", "queue", "remove", "--failed"], project)  # failed runs of these names, if any: queued again
    done = experiments(project)
    queued = [name for name in names.values() if name not in done]
    old_tasks = {task for task, _, _ in queue_tasks(project, poll=poll)}
    for (dataset, seed), name in names.items():
        if name in queued:
            params = configs[dataset] | overrides | {"split.seed": seed}
            harness.run(
                [
                    "dvc",
                    "exp",
                    "run",
                    "--queue",
                    "-n",
                    name,
                    *[a for k, v in params.items() for a in ("-S", f"{k}={v}")],
                ],
                project,
            )
    if queued:
        print(f"running {len(queued)} experiment(s), {args.jobs} at a time: {', '.join(queued)}", flush=True)
        run_queue(project, queued, args.jobs, timings, old_tasks, poll)
        done = experiments(project)
    seconds = json.loads(timings.read_text()) if timings.exists() else {}
    for dataset in datasets:
        task = "classification" if dataset == "flowers" else "regression"
        rows = {seed: figures(done[names[dataset, seed]], task) for seed in args.seeds}
        report(dataset, args.seeds, rows, {s: seconds.get(names[dataset, s]) for s in args.seeds}, overrides)


if __name__ == "__main__":
    main()
