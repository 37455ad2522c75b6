"""Stratified, seeded train/val/test assignment that never puts identical images in two splits."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from lib.errors import PipelineError


def strata(manifest: pd.DataFrame, task: str, bins: int) -> pd.Series:
    """The stratum of each row: its class, or for regression the quantile bin of its target."""
    if task == "classification":
        return manifest["label"].astype(str)
    ranks = manifest["label"].astype(float).rank(method="first")
    return pd.qcut(ranks, q=min(bins, len(manifest)), labels=False).map(lambda b: f"target bin {b + 1} of {bins}")


def assign(manifest: pd.DataFrame, stratum: pd.Series, val: float, test: float, seed: int) -> pd.Series:
    """-> 'train' | 'val' | 'test' per manifest row; rows with the same sha256 always share a split."""
    groups = manifest.groupby("sha256", sort=True).head(1)  # one representative per distinct image
    group_stratum = stratum.loc[groups.index]
    rng = np.random.default_rng(seed)
    split_of_hash = {}
    for name in sorted(group_stratum.unique()):
        hashes = groups.loc[group_stratum == name, "sha256"].to_numpy()
        n_val, n_test = round(len(hashes) * val), round(len(hashes) * test)
        if not fills_every_split(len(hashes), val, test):
            fix = "lower split.bins or add images" if name.startswith("target bin") else "add images to it or remove it"
            raise PipelineError(f"{name!r} has {len(hashes)} distinct images; split.val={val:g} and split.test={test:g} "
                                f"need at least {minimum_size(val, test)} (one in each split): {fix}")
        shuffled = rng.permutation(hashes)
        split_of_hash.update({h: "test" for h in shuffled[:n_test]})
        split_of_hash.update({h: "val" for h in shuffled[n_test:n_test + n_val]})
        split_of_hash.update({h: "train" for h in shuffled[n_test + n_val:]})
    return manifest["sha256"].map(split_of_hash)


def fills_every_split(n: int, val: float, test: float) -> bool:
    """Whether n distinct images give at least one to train, val and test (the counts are rounded)."""
    return min(round(n * val), round(n * test), n - round(n * val) - round(n * test)) >= 1


def minimum_size(val: float, test: float) -> int:
    """The smallest n from which every size fills all three splits (rounding can make n work and n+1 fail)."""
    limit = 10 * math.ceil(1 / min(val, test, 1 - val - test)) + 10
    return 1 + max(n for n in range(1, limit) if not fills_every_split(n, val, test))
