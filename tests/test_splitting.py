"""transfer_learning/splitting.py: stratified, seeded train/val/test assignment by content, never a picture in two
splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from support.images import make_image
from support.projects import run_stage, stage_project
from transfer_learning import splitting
from transfer_learning.errors import PipelineError


def manifest(labels, hashes=None):
    """Rows as ingest writes them: each its own picture (pixels_sha256, file_sha256), alone in its group unless `hashes`
    repeat."""
    hashes = hashes or [f"h{i}" for i in range(len(labels))]
    return pd.DataFrame(
        {
            "path": [f"{i}.png" for i in range(len(labels))],
            "label": labels,
            "pixels_sha256": hashes,
            "file_sha256": hashes,
            "group": hashes,
        }
    )


def test_split_is_stratified_seeded_and_keeps_duplicates_together():
    labels = ["a"] * 50 + ["b"] * 30
    hashes = [f"h{i}" for i in range(80)]
    hashes[1] = hashes[2] = hashes[3] = "dup"  # three copies of one image
    m = manifest(labels, hashes)
    split = splitting.assign(m, splitting.strata(m, "classification", 10), 0.2, 0.2, seed=0)
    assert split.iloc[1] == split.iloc[2] == split.iloc[3]
    counts = pd.crosstab(m["label"], split)
    assert counts.loc["b"].to_dict() == {"test": 6, "train": 18, "val": 6}
    assert split.equals(splitting.assign(m, splitting.strata(m, "classification", 10), 0.2, 0.2, seed=0))
    assert not split.equals(splitting.assign(m, splitting.strata(m, "classification", 10), 0.2, 0.2, seed=1))


def test_split_rejects_a_class_too_small():
    m = manifest(["a"] * 20 + ["tiny"] * 2)
    with pytest.raises(PipelineError, match=r"'tiny' has 2 distinct images.*need at least 3"):
        splitting.assign(m, splitting.strata(m, "classification", 10), 0.2, 0.2, seed=0)
    # tiny's images are near-duplicates of a's: they go with a's
    m["group"] = [f"h{i}" for i in range(20)] + ["h0", "h1"]
    with pytest.raises(
        PipelineError,
        match=r"^'tiny' has 0 distinct images \(2 of its images are near-duplicates of others' and go "
        r"with them; see metrics/data.json\); .* need at least 3",
    ):
        splitting.assign(m, splitting.strata(m, "classification", 10), 0.2, 0.2, seed=0)


def test_split_ignores_row_order_and_moves_few_images_when_one_is_added():
    """The split shuffled the rows of each class in manifest order: reordering a CSV, or adding one image, reassigned
    every image. Now a picture's split depends on its own pixels and the seed: adding one moves at most 2 others."""
    rng = np.random.default_rng(0)
    m = manifest(["a"] * 60 + ["b"] * 37, [f"{rng.integers(2**62):016x}" for _ in range(97)])
    split = splitting.assign(m, splitting.strata(m, "classification", 10), 0.2, 0.2, seed=0)
    shuffled = m.sample(frac=1, random_state=1)
    again = splitting.assign(shuffled, splitting.strata(shuffled, "classification", 10), 0.2, 0.2, seed=0)
    assert again.sort_index().equals(split), "the same rows in another order: the same assignment"
    moved = []
    for k in range(40):  # one more image of class a, 40 times over
        grown = pd.concat([m, manifest(["a"], [f"new{k}"])], ignore_index=True)
        after = splitting.assign(grown, splitting.strata(grown, "classification", 10), 0.2, 0.2, seed=0)
        moved.append(int((after.iloc[: len(m)] != split).sum()))
        assert after.iloc[: len(m)][m["label"] == "b"].equals(split[m["label"] == "b"]), "other classes never move"
    assert max(moved) <= 2, moved
    assert not split.equals(splitting.assign(m, splitting.strata(m, "classification", 10), 0.2, 0.2, seed=1)), (
        "the seed matters"
    )


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_split_does_not_move_when_ingest_makes_other_snapshots(tmp_path, task):
    """A group was named by its snapshot's pixels: raising ingest.max_short_side (needed for a larger input) gave every
    photo other pixels, hence another rank, and another test set; two experiments' test figures then came from
    different photos. Now the group is named by its files' bytes (and regression's ties are ordered by them)."""
    source = tmp_path / "images"
    rows = []
    for c, color in enumerate(((200, 40, 40), (40, 40, 200))):
        for i in range(15):
            make_image(source / f"c{c}" / f"{i}.png", color, size=(64, 48), noise_seed=100 * c + i)
            rows.append({"image": f"c{c}/{i}.png", "age": float(i % 5)})  # tied targets: their order decides the bins
    pd.DataFrame(rows).to_csv(source / "labels.csv", index=False)
    regression = {"data.task": "regression", "data.csv": "labels.csv", "data.target_column": "age", "split.bins": 3}
    results = []
    for side in (40, 24):  # both shrink every image: other snapshot pixels
        project = stage_project(
            tmp_path / str(side),
            {"data.source": str(source), "ingest.max_short_side": side} | (regression if task == "regression" else {}),
        )
        assert run_stage(project, "ingest").returncode == 0 and run_stage(project, "split").returncode == 0
        manifest_ = pd.read_csv(project / "data/ingested/manifest.csv", dtype=str).set_index("path")
        split = pd.read_csv(project / "data/split/split.csv").set_index("path")["split"]
        results.append((manifest_, split))
    (before, split_before), (after, split_after) = results
    assert (before["pixels_sha256"] != after["pixels_sha256"]).all()
    assert split_before.equals(split_after) and set(split_before) == {"train", "val", "test"}
    assert before["group"].equals(after["group"])


def test_regression_split_covers_the_target_range():
    m = manifest(list(np.linspace(1, 100, 200)))
    split = splitting.assign(m, splitting.strata(m, "regression", 10), 0.2, 0.2, seed=0)
    for name in ("val", "test"):
        values = m.loc[split == name, "label"]
        assert values.min() < 11 and values.max() > 90


def test_every_val_and_test_class_must_be_a_training_class(tmp_path, class_folder):
    """A class with images in val or test but none in train encoded to -2147483648 (a RuntimeWarning only), and
    train-head or evaluate failed later with a TensorFlow traceback or an IndexError."""
    project = stage_project(tmp_path, {"data.source": str(class_folder)})
    assert run_stage(project, "ingest").returncode == 0 and run_stage(project, "split").returncode == 0
    split = pd.read_csv(project / "data/split/split.csv")
    blue = split["path"].str.startswith("blue/")
    split.loc[blue, "split"] = np.where(np.arange(blue.sum()) % 2, "val", "test")  # no blue image left in train
    split.to_csv(project / "data/split/split.csv", index=False)
    result = run_stage(project, "normalize")
    assert result.returncode == 1 and "Traceback" not in result.stderr and "RuntimeWarning" not in result.stderr, (
        result.stderr
    )
    assert result.stderr.strip() == (
        "error: class 'blue' has images in the val split but none in train, so the model cannot learn it: "
        "add training images of it, or remove it from data.source"
    )
    assert not (project / "data/normalized").exists() or not list((project / "data/normalized").iterdir())


def frame(labels, hashes=None):
    hashes = hashes or [f"h{i}" for i in range(len(labels))]
    return pd.DataFrame({"label": labels, "pixels_sha256": hashes, "file_sha256": hashes, "group": hashes})


def test_a_class_too_small_for_the_split_is_named_with_the_size_needed():
    m = frame(["big"] * 30 + ["small"] * 4 + ["dup"] * 5, [f"h{i}" for i in range(34)] + ["same"] * 5)
    with pytest.raises(
        PipelineError,
        match=r"^'dup' has 1 distinct images; split.val=0.2 and split.test=0.2 need at least 3 "
        r"\(one in each split\): add images to it or remove it",
    ):
        splitting.assign(m, splitting.strata(m, "classification", 10), 0.2, 0.2, seed=0)
    m = frame(["big"] * 30 + ["small"] * 4)  # 4 images fit 0.2/0.2, but not 0.45/0.45; 9 and more always do
    splitting.assign(m, splitting.strata(m, "classification", 10), 0.2, 0.2, seed=0)
    with pytest.raises(PipelineError, match=r"'small' has 4 distinct images; .* need at least 9"):
        splitting.assign(m, splitting.strata(m, "classification", 10), 0.45, 0.45, seed=0)
    m = frame(list(np.arange(12.0)))
    with pytest.raises(
        PipelineError, match=r"'target bin 1 of 6' has 2 distinct images; .*: lower split.bins or add images"
    ):
        splitting.assign(m, splitting.strata(m, "regression", 6), 0.2, 0.2, seed=0)
