"""The data is a tracked input, end to end: adding, removing, replacing or relabelling images reruns ingest and only
what changed; settings and weights files; a dataset under DVC reaches a teammate."""

from __future__ import annotations

import json
import shutil

import keras
import pytest

from support.images import make_image
from support.projects import (
    DATA_STAGES,
    FAST,
    ages_csv,
    commit,
    copy_project,
    make_project,
    run,
    stages_run,
    status_of,
    write_params,
)

pytestmark = pytest.mark.e2e


def test_adding_removing_replacing_or_relabeling_an_image_reruns_ingest_and_only_what_changed(tmp_path, class_folder):
    project = make_project(tmp_path, FAST | {"data.source": str(class_folder)})
    assert stages_run(run(["dvc", "repro", "split"], project).stdout) == ["ingest", "split"]
    commit(project)
    assert status_of(project, "split") == {}

    (class_folder / "red" / "notes.txt").write_text("not an image")  # ingest reruns, skips it: nothing after it changes
    assert list(status_of(project, "split")) == ["ingest"]
    assert stages_run(run(["dvc", "repro", "split"], project).stdout) == ["ingest"]
    assert {"path": "red/notes.txt"} | {
        "reason": "not an image file extension (.bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp)"
    } in json.loads((project / "metrics/data.json").read_text())["skipped_files"]
    commit(project)

    changes = {
        "an added image": lambda: make_image(class_folder / "green" / "new.png", (40, 200, 40), noise_seed=999),
        "a removed image": lambda: (class_folder / "blue" / "img_03.jpg").unlink(),
        "a replaced image": lambda: make_image(class_folder / "red" / "img_00.png", (200, 40, 40), noise_seed=998),
        "a relabeled image": lambda: (class_folder / "red" / "img_01.jpg").rename(class_folder / "blue" / "img_01.jpg"),
    }
    for change, apply in changes.items():
        apply()
        assert list(status_of(project, "split")) == ["ingest"], f"{change} must make ingest stale"
        assert stages_run(run(["dvc", "repro", "split"], project).stdout) == ["ingest", "split"], change
        commit(project, change)


def test_editing_a_csv_source_or_an_image_it_lists_reruns_ingest(tmp_path):
    folder = tmp_path / "faces"
    for i in range(12):
        make_image(folder / "images" / f"{i:02d}.png", (i * 20,) * 3, noise_seed=i)
    (folder / "labels.csv").write_text("image,age\n" + "".join(f"images/{i:02d}.png,{i + 20}\n" for i in range(12)))
    project = make_project(tmp_path, FAST | ages_csv(folder, bins=2))
    run(["dvc", "repro", "ingest"], project)
    commit(project)
    assert status_of(project, "ingest") == {}
    with open(folder / "labels.csv", "a") as csv:
        csv.write("images/00.png,99\n")  # a duplicate row
    assert list(status_of(project, "ingest")) == ["ingest"]
    run(["dvc", "repro", "ingest"], project)
    assert status_of(project, "ingest") == {}
    make_image(folder / "images" / "05.png", (0, 0, 0), noise_seed=5)
    assert list(status_of(project, "ingest")) == ["ingest"], "an image the CSV lists is a dependency too"


def test_settings_change_no_output_and_rerun_nothing(fast_run, tmp_path):
    """Threads are settings (environment variables), not params: the same bytes with 1 worker as with the default."""
    copy = copy_project(fast_run.project, tmp_path / "copy")
    lock = (copy / "dvc.lock").read_text()
    forced = run(["dvc", "repro", "--force", "augment"], copy, env={"PIPELINE_WORKERS": "1"})
    assert stages_run(forced.stdout) == DATA_STAGES
    assert (copy / "dvc.lock").read_text() == lock
    bad = run(["dvc", "repro", "--force", "ingest"], copy, check=False, env={"PIPELINE_WORKERS": "many"})
    assert (
        "error: PIPELINE_WORKERS='many': expected a whole number of threads from 1 to 256 (or unset it: one per CPU)"
        in bad.stderr
    )


def test_replacing_a_base_weights_file_reruns_the_stages_that_build_the_base(fast_run, tmp_path):

    copy = copy_project(fast_run.project, tmp_path / "copy")
    write_params(copy, {"base.weights": "weights/mine.weights.h5"})
    keras.applications.MobileNetV2(
        input_shape=(None, None, 3), include_top=False, weights=None, alpha=0.35
    ).save_weights(copy / "weights" / "mine.weights.h5")
    assert stages_run(run(["dvc", "repro", "extract-features"], copy).stdout) == ["extract-features"]
    commit(copy)
    assert status_of(copy, "extract-features") == {}
    keras.utils.set_random_seed(1)
    keras.applications.MobileNetV2(
        input_shape=(None, None, 3), include_top=False, weights=None, alpha=0.35
    ).save_weights(copy / "weights" / "mine.weights.h5")
    changed = status_of(copy, "extract-features")
    assert list(changed) == ["extract-features"] and "weights" in json.dumps(changed)


def test_a_dataset_under_dvc_reaches_a_teammate_and_a_change_reruns_from_ingest(tmp_path, class_folder):
    """The README's DVC way: `dvc add data/raw/<name>`, push, a teammate's clone pulls the same bytes; adding an
    image and `dvc add` again makes ingest stale, and `dvc repro` reruns it."""
    project = make_project(tmp_path, FAST | {"data.source": "data/raw/shapes"})
    shutil.copytree(class_folder, project / "data/raw/shapes")
    run(["dvc", "add", "data/raw/shapes"], project)
    run(["dvc", "remote", "add", "-d", "storage", str(tmp_path / "remote")], project)
    assert stages_run(run(["dvc", "repro", "split"], project).stdout) == ["ingest", "split"]
    commit(project, "data under DVC")

    make_image(project / "data/raw/shapes/red/new.png", (210, 30, 30), noise_seed=7)
    run(["dvc", "add", "data/raw/shapes"], project)
    assert list(status_of(project, "split")) == ["ingest"]
    assert stages_run(run(["dvc", "repro", "split"], project).stdout) == ["ingest", "split"]
    commit(project, "one more image")
    run(["dvc", "push"], project)

    clone = tmp_path / "teammate"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    run(["dvc", "pull", "--with-deps", "split"], clone)  # the data and the outputs up to split (the rest never ran)
    assert (clone / "data/raw/shapes/red/new.png").read_bytes() == (
        project / "data/raw/shapes/red/new.png"
    ).read_bytes()
    assert status_of(clone, "split") == {}, "the pulled data and outputs match the committed dvc.lock"


# ---------------------------------------------------------------- a fresh clone reproduces the committed run


def test_a_failed_params_check_in_ingest_keeps_the_git_tracked_data_report(tmp_path, class_folder):
    """DVC removes a stage's outputs before running it, and metrics/data.json (cache: false, tracked by git) cannot
    be restored by `dvc checkout`: a bad ingest param deleted it (` D metrics/data.json`). The report persists; the
    stage still replaces it atomically when it runs through, and the cached data/ingested comes back with checkout."""
    project = make_project(tmp_path, FAST | {"data.source": str(class_folder)})
    run(["dvc", "repro", "ingest"], project)
    commit(project)
    report = (project / "metrics/data.json").read_bytes()

    write_params(project, {"ingest.max_short_side": 4})
    failed = run(["dvc", "repro", "ingest"], project, check=False)
    assert (
        failed.returncode != 0
        and "error: params.yaml: ingest.max_short_side: Input should be greater than or equal to 8"
        in failed.stdout + failed.stderr
    )
    assert run(["git", "status", "--porcelain"], project).stdout == " M params.yaml\n", (
        "nothing else changed or deleted"
    )
    assert (project / "metrics/data.json").read_bytes() == report

    run(["git", "checkout", "params.yaml"], project)
    run(["dvc", "checkout", "ingest"], project)
    assert status_of(project, "ingest") == {} and (project / "metrics/data.json").read_bytes() == report
    (class_folder / "red" / "img_00.png").unlink()  # a real rerun still writes the new report
    run(["dvc", "repro", "ingest"], project)
    assert json.loads((project / "metrics/data.json").read_text())["images"] == 35
