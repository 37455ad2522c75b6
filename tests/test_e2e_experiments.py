"""Experiments end to end: live metrics while a queued experiment runs, the queue two at a time, sharing experiments
through a git remote, pushing data to a DVC remote, fetching the registered model by name."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from support.projects import (
    FAST_EXPERIMENTS,
    copy_project,
    run,
    stages_run,
)

pytestmark = pytest.mark.e2e


def experiments(project: Path) -> dict:
    """`dvc exp show --json`: experiment name -> its data (rev, params, metrics)."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    return {
        exp["name"]: exp["revs"][0] for commit in shown for exp in (commit.get("experiments") or []) if exp.get("name")
    }


def test_live_metrics_are_written_epoch_by_epoch_while_an_experiment_runs(fast_run):
    """dvclive's files in a queued experiment's workspace (what `dvc exp show` reads for a running experiment) change
    after every epoch, before the stage ends; afterwards `dvc exp show` lists them."""
    project = fast_run.project
    seen = fast_run.outputs["live"]  # (step, rows of eval/loss.tsv), read from disk while the queue ran
    assert any(step < 2 for step, _ in seen), (
        f"lower-lr's live metrics were never seen before its third and last epoch: {sorted(seen)}"
    )
    assert all(rows == step + 1 for step, rows in seen), f"one row per epoch, written with the step: {sorted(seen)}"
    ran = experiments(project)["lower-lr"]
    live = ran["data"]["metrics"]["dvclive/fine_tune/metrics.json"]["data"]
    assert live["step"] == 2 and set(live) == {"train", "eval", "step"} and set(live["eval"]) == {"loss", "accuracy"}
    assert ran["data"]["metrics"]["metrics/fine_tune.json"]["data"]["epochs_run"] == 3, "the best-epoch summary stays"
    assert "dvclive/fine_tune/metrics.json:eval.loss" in run(
        ["dvc", "exp", "show", "--csv"], project
    ).stdout.splitlines()[0].split(",")
    curve = run(
        ["git", "show", f"{ran['rev']}:dvclive/fine_tune/plots/metrics/train/loss.tsv"], project
    ).stdout.splitlines()
    assert curve[0] == "step\tloss" and [row.split("\t")[0] for row in curve[1:]] == ["0", "1", "2"], (
        "one row per epoch"
    )


def test_queued_experiments_run_two_at_a_time_and_are_compared(fast_run):
    """The fast run's experiments went through DVC's queue, two at a time, each in a temporary copy of the project
    holding only git/DVC-tracked files (.dvc/tmp/exps): a data.source outside the project works there when absolute;
    a relative one leaving the project fails before any stage runs."""
    outcome = dict(re.findall(r"^\w+\s+([\w-]+)\s.*\b(Success|Failed)\b", fast_run.outputs["queue"], re.M))
    assert outcome == {name: "Success" for name in FAST_EXPERIMENTS} | {
        "other-data": "Success",
        "relative-data": "Failed",
    }, fast_run.outputs["queue"] + fast_run.outputs["relative-data"]
    assert (
        stages_run(fast_run.outputs["other-data"]) == ["ingest", "split"]
        and "split: train 24 images, val 6 images, test 6 images" in fast_run.outputs["other-data"]
    )
    # DVC hashes a stage's dependencies before running it: in the copy, ../other_images is .dvc/tmp/exps/other_images
    assert re.search(
        r"failed to reproduce 'ingest': .*No such file or directory: '.*/\.dvc/tmp/exps/other_images'",
        fast_run.outputs["relative-data"],
    )
    assert stages_run(fast_run.outputs["relative-data"]) == [], "nothing ran"

    shown = json.loads(run(["dvc", "exp", "show", "--json"], fast_run.project).stdout)
    ran = {
        exp["name"]: exp["revs"][0]["data"]
        for commit in shown
        for exp in (commit.get("experiments") or [])
        if exp.get("name")
    }
    assert ran["lower-lr"]["params"]["params.yaml"]["data"]["fine_tune"]["lr"] == 0.0001
    assert all(
        0 <= ran[name]["metrics"]["metrics/evaluate.json"]["data"]["fine_tuned"]["accuracy"] <= 1
        for name in FAST_EXPERIMENTS
    )
    table = run(["dvc", "exp", "show", "--csv"], fast_run.project).stdout.splitlines()
    assert "fine_tune.lr" in table[0].split(",") and "fine_tuned.accuracy" in table[0].split(",")


def test_experiments_are_shared_through_a_git_remote(fast_run, tmp_path):
    """`dvc exp push` to a bare git repository; a teammate's clone sees nothing until `dvc exp pull`, then the same
    experiment (params and metrics: git-tracked, so no DVC remote is needed to compare)."""
    project = fast_run.project
    remote = tmp_path / "remote.git"
    run(["git", "init", "-q", "--bare", str(remote)], tmp_path)
    run(["git", "push", "-q", str(remote), "HEAD:refs/heads/main"], project)
    assert "Pushed experiment lower-lr" in run(["dvc", "exp", "push", str(remote), "lower-lr"], project).stdout

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", "-b", "main", str(remote), str(clone)], tmp_path)
    assert "lower-lr" not in run(["dvc", "exp", "list", "--all-commits"], clone).stdout
    run(["dvc", "exp", "pull", "origin", "lower-lr"], clone)
    ours, theirs = experiments(project)["lower-lr"], experiments(clone)["lower-lr"]
    assert theirs["rev"] == ours["rev"]
    assert theirs["data"]["params"] == ours["data"]["params"] and theirs["data"]["metrics"] == ours["data"]["metrics"]
    assert theirs["data"]["params"]["params.yaml"]["data"]["fine_tune"]["lr"] == 0.0001


def test_push_to_a_remote_then_a_fresh_clone_pulls_everything_up_to_date(fast_run, tmp_path):
    project = fast_run.project
    work = copy_project(project, tmp_path / "work")
    run(["dvc", "remote", "add", "-d", "storage", str(tmp_path / "remote")], work)
    run(["git", "commit", "-qam", "add a DVC remote"], work)
    run(["dvc", "push"], work)
    assert any((tmp_path / "remote").rglob("*")), "the remote holds the cached outputs"

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(work), str(clone)], tmp_path)
    assert not (clone / "models/model.keras").exists() and not (clone / "data/features").exists()
    run(["dvc", "pull"], clone)
    assert (clone / "models/model.keras").read_bytes() == (project / "models/model.keras").read_bytes()
    assert np.array_equal(
        np.load(clone / "data/features/train_features.npy"), np.load(project / "data/features/train_features.npy")
    )
    assert not (clone / "data/activations").exists(), "not in DVC's cache (cache: false), so not pushed"
    assert stages_run(run(["dvc", "repro"], clone).stdout) == ["extract-features"], (
        "after a pull only the activations are computed again: the same bytes, so nothing after them reruns"
    )
    assert "Data and pipelines are up to date." in run(["dvc", "status"], clone).stdout


def test_the_registered_model_is_fetched_by_name(fast_run, tmp_path):
    """dvc.yaml's `artifacts:` names the model; a version registered with a git tag (gto) is what `dvc artifacts get`
    and dvc.api.artifacts_show find."""
    project = fast_run.project
    run(["gto", "register", "fine-tuned-model", "--version", "v1.0.0"], project)
    run(["gto", "assign", "fine-tuned-model", "--version", "v1.0.0", "--stage", "prod"], project)
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    show = (
        "import dvc.api, json, sys; print(json.dumps([dvc.api.artifacts_show('fine-tuned-model', repo=sys.argv[1]), "
        # in its own process, as a user's script
        "dvc.api.artifacts_show('fine-tuned-model', stage='prod', repo=sys.argv[1])]))"
    )
    latest, prod = json.loads(run([sys.executable, "-c", show, str(project)], tmp_path).stdout)
    assert latest == prod == {"rev": head, "path": "models/model.keras"}

    fetched = tmp_path / "model.keras"
    run(["dvc", "artifacts", "get", str(project), "fine-tuned-model", "--stage", "prod", "-o", str(fetched)], tmp_path)
    assert fetched.read_bytes() == (project / "models/model.keras").read_bytes()
    assert keras.models.load_model(fetched, safe_mode=True).output_shape == (None, 10)


def test_a_queued_experiment_with_a_relative_source_outside_the_project_fails_as_the_docs_say(tmp_path, class_folder):
    """The real input: `dvc exp run --queue -S data.source=../images`. In the queue's copy of the project DVC hashes the
    folder before ingest runs and fails with its own message (docs/data.md and docs/troubleshooting.md quote it); in
    the workspace, `transfer-learning check-params` with the same override gives the stages' one-line error naming
    the absolute path."""
    from support.projects import FAST, make_project, run_queue

    project = make_project(tmp_path, FAST | {"data.source": str(class_folder)})
    assert class_folder == project.parent / "images"
    run(["dvc", "exp", "run", "--queue", "-n", "outside", "-S", "data.source=../images", "ingest"], project)
    status, _ = run_queue(project, timeout=120)
    assert re.search(r"outside\s.*\bFailed\b", status), status
    logs = run(["dvc", "queue", "logs", "outside"], project, check=False).stdout
    assert (
        f"ERROR: failed to reproduce 'ingest': [Errno 2] No such file or directory: '{project}/.dvc/tmp/exps/images'"
        in logs
    ), logs

    one_line = (
        f"error: params.yaml: data.source ../images is a relative path outside the project: give its absolute path "
        f"({class_folder}) or bring the data in with `dvc import-url` or `dvc add` (docs/data.md)"
    )
    checked = run(["transfer-learning", "check-params", "-S", "data.source=../images"], project, check=False)
    assert checked.returncode == 1 and checked.stderr.startswith(one_line) and checked.stderr.count("\n") == 1, (
        checked.stderr
    )
