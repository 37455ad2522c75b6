"""Subjects (split.group_column, split.filename_groups): every image of a patient, a person or a session in one split,
and in one fold of train-head's k-fold estimate, so that no test figure comes from a subject the model trained on.

The unit of assignment is a subject joined with the duplicate groups of its images (duplicates.py), transitively: an
image, its near-copy and the near-copy's subject's images all travel together. A unit is named by the smallest group
name in it (the smallest sha256 of its files' bytes), so it does not depend on the order of the rows.

Units differ in size, so they cannot be cut by a count as splitting.py cuts single pictures. They are dealt out instead,
largest first (ties in an order fixed by the seed), each to the split (or fold) that keeps every stratum's images
closest to the wanted shares, like scikit-learn's StratifiedGroupKFold: stratified as far as the subjects allow.
A new subject can move others across splits, where splitting.py's cut moves at most a couple of pictures.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd


def units(group: pd.Series, subject: pd.Series) -> pd.Series:
    """Each row's unit: its duplicate group joined with every group that shares a subject with it (transitively),
    named by the smallest group name in it."""
    # scipy.sparse is imported here, as duplicates.py does: only grouped splits need it
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    groups, at_group = np.unique(group.to_numpy(dtype=str), return_inverse=True)
    subjects, at_subject = np.unique(subject.to_numpy(dtype=str), return_inverse=True)
    # one graph: a node per group and per subject, an edge per row between its group and its subject
    n = len(groups) + len(subjects)
    edges = coo_matrix((np.ones(len(group), dtype=np.int32), (at_group, len(groups) + at_subject)), shape=(n, n))
    _, component = connected_components(edges, directed=False)
    name = pd.Series(groups).groupby(component[: len(groups)]).min()  # groups are sorted: the first is the smallest
    return pd.Series(name.loc[component[at_group]].to_numpy(), index=group.index)


def deal(unit: pd.Series, stratum: pd.Series, shares: dict, seed: int) -> pd.Series:
    """-> one key of `shares` per row (a split, or a fold), whole units at a time, each stratum's images shared out
    as close to the shares as the units allow."""
    counts = pd.crosstab(unit, stratum)  # units x strata: images
    images = counts.to_numpy(dtype=np.float64)
    sizes = images.sum(axis=1)
    order = np.lexsort(([rank(u, seed) for u in counts.index], -sizes))  # largest first: the hardest to place
    wanted = np.array(list(shares.values()), dtype=np.float64)[:, None] * images.sum(axis=0)  # shares x strata
    placed = np.zeros_like(wanted)
    chosen = np.empty(len(images), dtype=np.int64)
    for i in order:
        costs = []
        for s in range(len(wanted)):
            trial = placed.copy()
            trial[s] += images[i]
            # how unevenly the strata are filled across the splits, each split against its own share: 0 when every
            # split holds the same fraction of what it should get of every stratum
            costs.append((float(np.mean(np.std(trial / wanted, axis=0))), placed[s].sum() / wanted[s].sum(), s))
        chosen[i] = min(costs)[2]  # ties: the split least filled, then the first
        placed[chosen[i]] += images[i]
    keys = list(shares)
    return unit.map(dict(zip(counts.index, (keys[c] for c in chosen))))


def rank(unit: str, seed: int) -> str:
    """A unit's place among units of its size: fixed by the seed and the unit's own files."""
    return hashlib.sha256(f"{seed}:{unit}".encode()).hexdigest()


def counts(split: pd.Series, unit: pd.Series, subject: pd.Series | None, names) -> dict:
    """{split: {images, groups[, subjects]}}: what each split holds (metrics/split.json). groups: the units that never
    cross splits (a picture with its copies and near-duplicates, joined with its subject's images when there are
    subjects); subjects only when the data has them."""
    held = {}
    for name in names:
        rows = split == name
        held[name] = {"images": int(rows.sum()), "groups": int(unit[rows].nunique())}
        if subject is not None:
            held[name]["subjects"] = int(subject[rows].nunique())
    return held
