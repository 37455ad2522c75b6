"""Stratified, seeded train/val/test assignment that never puts the same picture in two splits and that moves as few
images as possible when the data changes.

The unit of assignment is a group of copies and near-duplicates (the manifest's `group`, see
duplicates.py), placed in the stratum of most of its rows. Within a stratum, groups are ranked by a
hash of (split.seed, group) and cut by the fractions: test first, then val, then train. A group's
rank depends on its own files' bytes and the seed only, never on the order of the rows or on ingest's
params (a larger ingest.max_short_side keeps every image in its split): reordering a CSV
changes nothing, and adding an image to a class moves at most a couple of that class's images
across a cut (where a shuffle of the rows would reassign every image).

With subjects (the manifest's `subject`: split.group_column or split.filename_groups) the unit is a subject joined
with its images' groups, and units are dealt out by size instead (assign_subjects, grouping.py).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd

from transfer_learning import grouping
from transfer_learning.errors import PipelineError


def strata(manifest: pd.DataFrame, task: str, bins: int) -> pd.Series:
    """The stratum of each row: its class, or for regression the quantile bin of its target (ties ordered by the files'
    bytes, not by row order)."""
    if task == "classification":
        return manifest["label"].astype(str)
    ranks = pd.Series(np.empty(len(manifest)), index=manifest.index)
    ranks.iloc[np.lexsort((manifest["file_sha256"].to_numpy(), manifest["label"].astype(float).to_numpy()))] = (
        np.arange(len(manifest))
    )
    return pd.qcut(ranks, q=min(bins, len(manifest)), labels=False).map(lambda b: f"target bin {b + 1} of {bins}")


def assign(manifest: pd.DataFrame, stratum: pd.Series, val: float, test: float, seed: int) -> pd.Series:
    """-> 'train' | 'val' | 'test' per manifest row; rows of one group always share a split."""
    group_stratum = (
        pd.DataFrame({"group": manifest["group"], "stratum": stratum})
        .groupby("group")["stratum"]
        .agg(lambda s: s.value_counts().sort_index().idxmax())
    )  # most of its rows; a tie goes to the first name
    split_of_group = {}
    for name in sorted(stratum.unique()):
        groups = sorted(group_stratum.index[group_stratum == name], key=lambda group: rank(group, seed))
        if not fills_every_split(len(groups), val, test):
            fix = "lower split.bins or add images" if name.startswith("target bin") else "add images to it or remove it"
            joined = (stratum == name) & manifest["group"].map(group_stratum).ne(name)
            near = (
                f" ({int(joined.sum())} of its images are near-duplicates of others' and go with them; see "
                "metrics/data.json)"
                if joined.any()
                else ""
            )
            raise PipelineError(
                f"{name!r} has {len(groups)} distinct images{near}; split.val={val:g} and split.test={test:g} "
                f"need at least {minimum_size(val, test)} (one in each split): {fix}"
            )
        n_val, n_test = round(len(groups) * val), round(len(groups) * test)
        split_of_group.update({group: "test" for group in groups[:n_test]})
        split_of_group.update({group: "val" for group in groups[n_test : n_test + n_val]})
        split_of_group.update({group: "train" for group in groups[n_test + n_val :]})
    return manifest["group"].map(split_of_group)


def rank(group: str, seed: int) -> str:
    """A group's place in its stratum: uniform, fixed by the seed and the group's own files."""
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


def fills_every_split(n: int, val: float, test: float) -> bool:
    """Whether n distinct images give at least one to train, val and test (the counts are rounded)."""
    return min(round(n * val), round(n * test), n - round(n * val) - round(n * test)) >= 1


def minimum_size(val: float, test: float) -> int:
    """The smallest n from which every size fills all three splits (rounding can make n work and n+1 fail)."""
    limit = 10 * math.ceil(1 / min(val, test, 1 - val - test)) + 10
    return 1 + max(n for n in range(1, limit) if not fills_every_split(n, val, test))


def assign_subjects(manifest: pd.DataFrame, stratum: pd.Series, val: float, test: float, seed: int):
    """-> ('train' | 'val' | 'test' per row, its unit per row): every image of a subject, and its copies and
    near-duplicates, in one split, stratified as far as the subjects allow."""
    unit = grouping.units(manifest["group"], manifest["subject"])
    split = grouping.deal(unit, stratum, {"train": 1 - val - test, "val": val, "test": test}, seed)
    empty = [name for name in ("train", "val", "test") if not (split == name).any()]
    if empty:
        raise PipelineError(
            f"the {manifest['subject'].nunique()} subjects (split.group_column or split.filename_groups) make "
            f"{unit.nunique()} groups with their images' copies, too few to put one in {' and '.join(empty)} "
            f"at split.val={val:g} and split.test={test:g}: add subjects, or check that the column names subjects, "
            "not classes"
        )
    return split, unit
