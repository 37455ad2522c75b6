"""Day to day in DVC, end to end on the shared fast run (conftest.fast_run): live metrics while an experiment runs,
the model fetched by name, predictions on new images, the review of a run, experiments shared through a git remote.
The review page in a browser: test_review_page.py."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import ROOT, make_image, run

pytestmark = pytest.mark.e2e


def experiments(project: Path) -> dict:
    """`dvc exp show --json`: experiment name -> its data (rev, params, metrics)."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    return {exp["name"]: exp["revs"][0] for commit in shown for exp in (commit.get("experiments") or []) if exp.get("name")}


def test_live_metrics_are_written_epoch_by_epoch_while_an_experiment_runs(fast_run):
    """dvclive's files in a queued experiment's workspace (what `dvc exp show` reads for a running experiment) change
    after every epoch, before the stage ends; afterwards `dvc exp show` lists them."""
    project = fast_run.project
    seen = fast_run.outputs["live"]  # (step, rows of eval/loss.tsv), read from disk while the queue ran
    assert any(step < 2 for step, _ in seen), f"lower-lr's live metrics were never seen before its third and last epoch: {sorted(seen)}"
    assert all(rows == step + 1 for step, rows in seen), "one row per epoch, written with the step"
    ran = experiments(project)["lower-lr"]
    live = ran["data"]["metrics"]["dvclive/fine_tune/metrics.json"]["data"]
    assert live["step"] == 2 and set(live) == {"train", "eval", "step"} and set(live["eval"]) == {"loss", "accuracy"}
    assert ran["data"]["metrics"]["metrics/fine_tune.json"]["data"]["epochs_run"] == 3, "the best-epoch summary stays"
    assert "dvclive/fine_tune/metrics.json:eval.loss" in run(["dvc", "exp", "show", "--csv"], project).stdout.splitlines()[0].split(",")
    curve = run(["git", "show", f"{ran['rev']}:dvclive/fine_tune/plots/metrics/train/loss.tsv"], project).stdout.splitlines()
    assert curve[0] == "step\tloss" and [row.split("\t")[0] for row in curve[1:]] == ["0", "1", "2"], "one row per epoch"


def test_the_registered_model_is_fetched_by_name(fast_run, tmp_path):
    """dvc.yaml's `artifacts:` names the model; a version registered with a git tag (gto) is what `dvc artifacts get`
    and dvc.api.artifacts_show find."""
    project = fast_run.project
    run(["gto", "register", "fine-tuned-model", "--version", "v1.0.0"], project)
    run(["gto", "assign", "fine-tuned-model", "--version", "v1.0.0", "--stage", "prod"], project)
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    show = ("import dvc.api, json, sys; print(json.dumps([dvc.api.artifacts_show('fine-tuned-model', repo=sys.argv[1]), "
            "dvc.api.artifacts_show('fine-tuned-model', stage='prod', repo=sys.argv[1])]))")  # in its own process, as a user's script
    latest, prod = json.loads(run([sys.executable, "-c", show, str(project)], tmp_path).stdout)
    assert latest == prod == {"rev": head, "path": "models/model.keras"}

    fetched = tmp_path / "model.keras"
    run(["dvc", "artifacts", "get", str(project), "fine-tuned-model", "--stage", "prod", "-o", str(fetched)], tmp_path)
    assert fetched.read_bytes() == (project / "models/model.keras").read_bytes()
    assert keras.models.load_model(fetched, safe_mode=True).output_shape == (None, 10)


def test_predict_on_new_images_gives_what_the_evaluated_model_gives(fast_run, tmp_path):
    """Test images of the run as new files (one in a nested folder), next to broken ones: the good ones get the
    probabilities the model gives their normalized arrays, so predict.py prepares images exactly as the pipeline."""
    project = fast_run.project
    manifest = pd.read_csv(project / "data/ingested/manifest.csv", dtype={"label": str})
    test = manifest[pd.read_csv(project / "data/split/split.csv")["split"] == "test"].reset_index(drop=True)
    chosen = test.iloc[[0, 50, 100, 150, 200, 358]]
    new = tmp_path / "new"
    for i, row in enumerate(chosen.itertuples()):
        target = new / ("nested" if i % 2 else "") / f"{i}_{Path(row.path).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(project / "data/raw/digits" / row.path, target)
    (new / "empty.png").write_bytes(b"")
    (new / "cut.png").write_bytes((project / "data/raw/digits" / chosen.iloc[0].path).read_bytes()[:60])
    (new / "notes.txt").write_text("not an image")
    make_image(new / "nested" / ".hidden.png", (0, 0, 0))

    result = subprocess.run([sys.executable, str(ROOT / "predict.py"), str(new), "-o", "predictions.csv",
                             "--model", str(project / "models/model.keras")], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 3, result.stderr  # written, some files skipped
    skipped = sorted(line for line in result.stderr.splitlines() if line.startswith("skipped "))
    assert [line.split(":")[0] for line in skipped] == ["skipped cut.png", "skipped empty.png", "skipped nested/.hidden.png", "skipped notes.txt"]
    assert "predict: 6 images -> predictions.csv; 4 skipped" in result.stdout

    rows = pd.read_csv(tmp_path / "predictions.csv", dtype={"predicted": str, "top_2": str, "top_3": str})
    assert list(rows.columns) == ["path", "predicted", "probability", "top_2", "top_2_probability", "top_3", "top_3_probability"]
    order = [int(Path(path).name.split("_")[0]) for path in rows["path"]]
    assert sorted(order) == list(range(6))
    model = keras.models.load_model(project / "models/model.keras", safe_mode=True)
    expected = model.predict(np.load(project / "data/normalized/test_images.npy")[chosen.index[order]].astype("float32"), verbose=0)
    classes = json.loads((project / "models/encoding.json").read_text())["classes"]
    assert list(rows["predicted"]) == [classes[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose(rows["probability"], expected.max(axis=1), atol=2e-6)
    np.testing.assert_allclose(rows["top_3_probability"], np.sort(expected, axis=1)[:, -3], atol=2e-6)


def test_the_review_of_a_run_reports_the_three_models_and_shows_the_worst_mistakes(fast_run):
    project = fast_run.project
    text = (project / "reports/review.md").read_text()
    metrics = json.loads((project / "metrics/evaluate.json").read_text())
    row = f"| accuracy | {metrics['head']['accuracy']:.3f} | {metrics['fine_tuned']['accuracy']:.3f} | {metrics['baseline']['accuracy']:.3f} |"
    assert row in text and "## Per class" in text and text.count("| 36 |") >= 5, "a row per class with its test images"
    assert "1797 images, 0 duplicates (same file content), 0 skipped." in text and "### Skipped files\n\nNone." in text
    mistakes = text.split("## Most confident mistakes of the fine-tuned model")[1].split("## Training")[0]
    link = mistakes.split("](")[1].split(")")[0]
    assert (project / "reports" / link).resolve() == project / "plots/evaluate/figures/most_confident_mistakes.png"
    table = [line.split(" | ") for line in mistakes.splitlines() if line.startswith("| ") and "---" not in line][1:]
    wrong = round((1 - metrics["fine_tuned"]["accuracy"]) * metrics["test_images"])
    assert len(table) == min(16, wrong) and f"its {len(table)} most confident mistakes (of {wrong})" in mistakes
    probabilities = [float(cells[3].rstrip(" |")) for cells in table]
    assert probabilities == sorted(probabilities, reverse=True)
    for cells in table:  # the image's file, its class folder, and another class predicted
        path, true, predicted = cells[0].lstrip("| "), cells[1], cells[2]
        assert (project / "data/raw/digits" / path).is_file() and path.split("/")[0] == true != predicted
    with Image.open(project / "plots/evaluate/figures/most_confident_mistakes.png") as grid:
        assert grid.size == (1200, round((3.7 * -(-len(table) // 4) + 0.6) * 100)), "rows of four mistakes"
    lock = (project / "dvc.lock").read_text()
    assert "path: reports/review.md" in lock and "path: dvclive/fine_tune" in lock


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
