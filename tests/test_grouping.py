"""Subjects (split.group_column, split.filename_groups; transfer_learning/grouping.py): every image of a subject, and
its copies, in one split and in one k-fold fold, stratified as far as the subjects allow."""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from support.images import make_image
from support.projects import run_stage, stage_project
from transfer_learning import crossval, csv_source, files, grouping, params, paths, sources, splitting
from transfer_learning.errors import PipelineError
from transfer_learning.records import Encoding


def subjects_csv(root, subjects=12):
    """Two classes, `subjects` people with 1-4 images each (all of one class), in labels.csv (image, label, person).
    person0's first image is a copy of person1's: the two people must travel together."""
    rows, rng = [], np.random.default_rng(0)
    for s in range(subjects):
        label = "cat" if s % 2 == 0 and s != 0 else "dog"  # person0 and person1: dogs, so the copy keeps its label
        for i in range(1 + s % 4):
            name = f"img/{s}_{i}.png"
            make_image(root / name, tuple(int(v) for v in rng.integers(0, 255, 3)), noise_seed=10 * s + i)
            rows.append({"image": name, "label": label, "person": f"person{s}"})
    shutil.copy(root / "img/1_0.png", root / "img/0_0.png")  # the same picture, listed for person0
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def test_a_csv_group_column_keeps_every_subject_in_one_split_and_one_fold(tmp_path):
    source = subjects_csv(tmp_path / "people")
    project = stage_project(
        tmp_path,
        {"data.source": str(source), "data.csv": "labels.csv", "split.group_column": "person"},
    )
    for stage in ("ingest", "split", "normalize"):
        result = run_stage(project, stage)
        assert result.returncode == 0, result.stderr
    manifest = pd.read_csv(project / "data/ingested/manifest.csv", dtype=str)
    split = pd.read_csv(project / "data/split/split.csv", dtype=str)
    assert manifest["path"].tolist() == split["path"].tolist()
    person = manifest["subject"]
    assert split.groupby(person)["split"].nunique().max() == 1, "a subject in two splits"
    assert set(split["split"]) == {"train", "val", "test"}
    one = split[person.isin(["person0", "person1"])]
    assert one["split"].nunique() == 1 and one["group"].nunique() == 1, "a copy joins its subject with the other's"

    report = json.loads((project / "metrics/data.json").read_text())
    assert report["subjects"] == 12 and report["images"] == 30
    held = json.loads((project / "metrics/split.json").read_text())
    assert sum(s["images"] for s in held.values()) == 30 and sum(s["subjects"] for s in held.values()) == 12
    assert sum(s["groups"] for s in held.values()) == 11, "person0 and person1 are one group"
    assert held["train"]["images"] == (split["split"] == "train").sum()

    # train-head's k-fold folds, over train + val in the features' order, keep the groups too
    cwd = os.getcwd()
    os.chdir(project)
    try:
        groups = crossval.image_groups()
    finally:
        os.chdir(cwd)
    by_path = split.set_index("path")["group"]
    listed = [pd.read_csv(project / f"data/normalized/{name}_images.csv")["path"] for name in ("train", "val")]
    assert groups.tolist() == by_path.loc[pd.concat(listed)].tolist()
    labels = manifest.set_index("path")["label"].loc[pd.concat(listed)].to_numpy()
    folds = crossval.assign_groups(labels, groups, 3, seed=0, task="classification")
    assert pd.Series(folds).groupby(groups).nunique().max() == 1 and set(folds) == {0, 1, 2}


def test_folder_subjects_come_from_the_file_names(tmp_path):
    """split.filename_groups: `person3_scan1.png` is person3's, in whichever class folder; a name without `_` is
    alone."""
    root = tmp_path / "scans"
    for c, label in enumerate(("normal", "sick")):
        for person in range(6):
            for scan in range(2):
                make_image(root / label / f"person{person}_scan{scan}.png", (60 + 30 * person, 90 * c, 40 * scan))
    make_image(root / "sick" / "loose.png", (250, 250, 250))
    project = stage_project(tmp_path, {"data.source": str(root), "split.filename_groups": True})
    for stage in ("ingest", "split"):
        result = run_stage(project, stage)
        assert result.returncode == 0, result.stderr
    manifest = pd.read_csv(project / "data/ingested/manifest.csv", dtype=str)
    split = pd.read_csv(project / "data/split/split.csv", dtype=str)
    assert dict(zip(manifest["path"], manifest["subject"]))["sick/loose.png"] == "sick/loose.png"
    person = manifest["path"].str.extract(r"/(person\d)_")[0].fillna("loose")
    assert split.groupby(person)["split"].nunique().max() == 1, "one person's scans of both classes in one split"
    assert json.loads((project / "metrics/data.json").read_text())["subjects"] == 7
    assert sources.filename_subject("a/b/p7_x_y.jpg") == "p7" and sources.filename_subject("a/_x.jpg") == "a/_x.jpg"


def frame(labels, subjects, groups=None):
    """A manifest as ingest writes it with subjects: each row its own picture unless `groups` repeat."""
    groups = groups or [f"h{i:03d}" for i in range(len(labels))]
    return pd.DataFrame({"label": labels, "file_sha256": groups, "group": groups, "subject": subjects})


def test_subjects_are_dealt_out_stratified_and_seeded():
    rng = np.random.default_rng(0)
    labels, subjects = [], []
    for s in range(80):  # subjects of 1-9 images, mostly of one class
        own = rng.choice(["a", "b", "c"], p=[0.5, 0.3, 0.2])
        for _ in range(rng.integers(1, 10)):
            labels.append(own if rng.random() < 0.8 else "a")
            subjects.append(f"s{s}")
    m = frame(labels, subjects)
    stratum = splitting.strata(m, "classification", 10)
    split, unit = splitting.assign_subjects(m, stratum, 0.2, 0.2, seed=0)
    assert split.groupby(m["subject"]).nunique().max() == 1
    shares = pd.crosstab(m["label"], split, normalize="index")
    assert np.allclose(shares[["train", "val", "test"]].to_numpy(), [0.6, 0.2, 0.2], atol=0.04), shares
    again, _ = splitting.assign_subjects(m.sample(frac=1, random_state=1), stratum, 0.2, 0.2, seed=0)
    assert again.sort_index().equals(split), "the row order does not matter"
    assert not splitting.assign_subjects(m, stratum, 0.2, 0.2, seed=1)[0].equals(split), "the seed does"

    m["label"] = np.linspace(1, 100, len(m))[rng.permutation(len(m))]  # regression: stratified on target bins
    split, _ = splitting.assign_subjects(m, splitting.strata(m, "regression", 5), 0.2, 0.2, seed=0)
    assert split.groupby(m["subject"]).nunique().max() == 1
    for name in ("val", "test"):
        assert m.loc[split == name, "label"].min() < 20 and m.loc[split == name, "label"].max() > 80


def test_more_folds_than_groups_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, n in (("train", 8), ("val", 4)):
        files.save_npy(paths.features(name), np.zeros((n, 2), np.float32))
        files.save_npy(paths.feature_targets(name), np.zeros(n, np.int32))
    cfg = SimpleNamespace(folds=3, seed=0)
    with pytest.raises(PipelineError, match=r"^train_head.folds=3: the train \+ val images are 2 groups of subjects"):
        crossval.estimate(
            cfg,
            None,
            1,
            Encoding(task="classification", classes=("a",)),
            None,
            epochs=1,
            groups=np.array(["x", "y"] * 6),
        )


def test_units_join_subjects_through_copies_transitively():
    # s1 and s2 share the picture "x", s2 and s3 share "y": one unit, named by its smallest group
    m = frame(["a"] * 6, ["s1", "s1", "s2", "s2", "s3", "s4"], ["k", "x", "x", "y", "y", "z"])
    assert grouping.units(m["group"], m["subject"]).tolist() == ["k", "k", "k", "k", "k", "z"]


def test_too_few_subjects_to_fill_the_splits_is_one_line():
    m = frame(["a", "b"] * 4, ["s1"] * 4 + ["s2"] * 4)
    with pytest.raises(PipelineError, match=r"^the 2 subjects .* make 2 groups .* too few to put one in val and test "):
        splitting.assign_subjects(m, splitting.strata(m, "classification", 10), 0.2, 0.2, seed=0)


def test_subject_errors_name_the_csv_the_column_and_the_fix(tmp_path):
    make_image(tmp_path / "a.png", (200, 0, 0))
    make_image(tmp_path / "b.png", (0, 200, 0))
    csv = tmp_path / "labels.csv"

    def listed(text, column="person"):
        csv.write_text(text)
        return csv_source.csv_manifest(csv, "classification", "image", "label", group_column=column)

    items, _ = listed("image,label,person\na.png,x,p1\nb.png,y,p2\n")
    assert [item.subject for item in items] == ["p1", "p2"]
    with pytest.raises(PipelineError, match=r"labels.csv has no column 'subject' \(split.group_column\); its columns"):
        listed("image,label,person\na.png,x,p1\n", column="subject")
    with pytest.raises(
        PipelineError,
        match=r"labels.csv: row 3 \(b.png\) has no value in column 'person' \(split.group_column\); give every image",
    ):
        listed("image,label,person\na.png,x,p1\nb.png,y,\n")
    with pytest.raises(
        PipelineError, match=r"rows 2 and 3 list the same file a.png with the subjects 'p1' and 'p2'.*one subject"
    ):
        listed("image,label,person\na.png,x,p1\n./a.png,x,p2\n")
    with pytest.raises(PipelineError, match=r"split.group_column='person' names a column of data.csv, and data.csv"):
        params.load(overrides={"split.group_column": "person"})
    with pytest.raises(PipelineError, match=r"split.group_column and split.filename_groups both name the subjects"):
        params.load(overrides={"split.group_column": "person", "data.csv": "x.csv", "split.filename_groups": True})
