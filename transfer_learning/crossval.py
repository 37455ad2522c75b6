"""K-fold cross-validation of the head on the stored features (train_head.folds): a mean and a spread of its quality
instead of one split's figure, cheap because no image goes through the base again.

The folds divide the images of train + val, stratified (by class, or by target quantile for regression). The training
split's features hold each image followed by its augment.copies variants: an image and its variants always fall in the
same fold. Each fold's head is built, compiled and trained like the single-split head (same params; with
train_head.class_weight: balanced, weighted over its own training rows) on the other folds' rows, variants included,
for a fixed number of epochs (the single-split head's best epoch: early stopping on the held-out fold would peek at
it), then scored on the fold's original images. The test split is never read.

With subjects (split.group_column or split.filename_groups, which make split.csv name each image's group) the folds
take whole groups, as the splits do (grouping.py): no subject is trained on and scored in one fold.
"""

from __future__ import annotations

import statistics

import keras
import numpy as np
import pandas as pd

from transfer_learning import batches, files, grouping, packaging, paths, training
from transfer_learning.errors import PipelineError
from transfer_learning.records import Encoding


def assign(values: np.ndarray, k: int, seed: int, task: str) -> np.ndarray:
    """The fold (0 .. k-1) of each image, stratified: classification deals each class's images, in an order shuffled by
    `seed`, to the folds in turn; regression sorts the images by target and deals each run of k neighbours to the k
    folds in a shuffled order. Fold sizes differ by at most one per class (or overall, for regression)."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(values), dtype=np.int64)
    if task == "classification":
        order = np.lexsort((rng.permutation(len(values)), values))  # by class, shuffled within each class
        folds[order] = np.arange(len(values)) % k
    else:
        order = np.argsort(np.asarray(values, dtype=np.float64), kind="stable")
        for start in range(0, len(values), k):
            run = order[start : start + k]
            folds[run] = rng.permutation(k)[: len(run)]
    return folds


def assign_groups(values: np.ndarray, groups: np.ndarray, k: int, seed: int, task: str) -> np.ndarray:
    """The fold of each image, whole groups at a time, stratified by class (or target decile) as far as the groups
    allow (grouping.deal)."""
    values = pd.Series(values)
    if task == "classification":
        stratum = values.astype(str)
    else:
        stratum = pd.Series(pd.qcut(values.rank(method="first"), q=min(10, len(values)), labels=False))
    return grouping.deal(pd.Series(groups), stratum, dict.fromkeys(range(k), 1 / k), seed).to_numpy(dtype=np.int64)


def image_groups() -> np.ndarray | None:
    """The group of each train + val image in the features' order, or None when split.csv names none (no subjects)."""
    split = pd.read_csv(paths.SPLIT, dtype=str, keep_default_na=False)
    # the lists are read either way: train-head depends on them for the groups, which only split.csv says it has
    listed = [
        pd.read_csv(paths.split_list(name), dtype=str, keep_default_na=False)["path"] for name in ("train", "val")
    ]
    if "group" not in split:
        return None
    group = split.set_index("path")["group"]
    return np.concatenate([group.loc[images].to_numpy() for images in listed])


class Rows:
    """Rows `index` (ascending) of arrays stacked one after the other, read on demand: memory-mapped features stay on
    disk. What batches.Batches reads (len, shape, rows by an ascending index array)."""

    def __init__(self, arrays: list[np.ndarray], index: np.ndarray):
        self.arrays, self.index = arrays, index
        self.offsets = np.cumsum([0] + [len(a) for a in arrays])
        self.shape = (len(index), *arrays[0].shape[1:])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, rows):
        wanted = self.index[rows]
        which = np.searchsorted(self.offsets, wanted, side="right") - 1
        return np.concatenate([self.arrays[a][wanted[which == a] - self.offsets[a]] for a in range(len(self.arrays))])


def estimate(cfg, head_cfg, per_image: int, encoding: Encoding, strategy, epochs: int, groups=None) -> dict:
    """cfg: train_head's params; head_cfg: head's; per_image: rows per training image (augment.copies + 1); groups:
    image_groups() (None: each image alone).
    -> {'folds', 'epochs', '<metric>_mean', '<metric>_std' (over folds, n-1), '<metric>_min', '<metric>_max',
    'per_fold'}."""
    train_x, val_x = (
        files.load_npy(paths.features("train"), mmap=True),
        files.load_npy(paths.features("val"), mmap=True),
    )
    train_y, val_y = files.load_npy(paths.feature_targets("train")), files.load_npy(paths.feature_targets("val"))
    n_train = len(train_y) // per_image
    image_of_row = np.concatenate([np.arange(len(train_y)) // per_image, n_train + np.arange(len(val_y))])
    original = np.concatenate([np.arange(len(train_y)) % per_image == 0, np.ones(len(val_y), bool)])
    all_y = np.concatenate([train_y, val_y])
    if original.sum() < 2 * cfg.folds:
        raise PipelineError(
            f"train_head.folds={cfg.folds} needs at least {2 * cfg.folds} images in train + val, "
            f"there are {original.sum()}; use fewer folds or 0 (off)"
        )
    if groups is None:
        fold_of_image = assign(all_y[original], cfg.folds, cfg.seed, encoding.task)
    else:
        fold_of_image = assign_groups(all_y[original], groups, cfg.folds, cfg.seed, encoding.task)
        if len(np.unique(fold_of_image)) < cfg.folds:
            raise PipelineError(
                f"train_head.folds={cfg.folds}: the train + val images are {len(set(groups))} groups of subjects "
                "(split.group_column or split.filename_groups), each kept in one fold, too few to fill every fold; "
                "use fewer folds or 0 (off)"
            )
    fold_of_row = fold_of_image[image_of_row]
    replicas = strategy.num_replicas_in_sync
    scores = []
    for fold in range(cfg.folds):
        train_rows, held_rows = np.flatnonzero(fold_of_row != fold), np.flatnonzero((fold_of_row == fold) & original)
        keras.utils.set_random_seed((cfg.seed + fold) % 2**32)
        train = batches.Batches(
            Rows([train_x, val_x], train_rows),
            all_y[train_rows],
            cfg.batch_size,
            seed=cfg.seed,
            replicas=replicas,
            classes=training.one_hot_classes(encoding, cfg.mixup),
            mixup=cfg.mixup,
        )
        held = batches.Batches(
            Rows([train_x, val_x], held_rows), all_y[held_rows], cfg.batch_size, seed=None, replicas=replicas
        )
        with strategy.scope():
            head = training.compiled_head(train.inputs.shape[1], head_cfg, cfg, encoding, steps_per_epoch=len(train))
        if epochs:  # train_head.class_weight: balanced over this fold's training rows, as the head's over its own
            weights = training.class_weights(all_y[train_rows], cfg.class_weight)
            head.fit(train, epochs=epochs, shuffle=False, verbose=0, class_weight=weights)
        scores.append(training.score(packaging.package(head, encoding), held, encoding))
        print(
            f"train-head: fold {fold + 1}/{cfg.folds}: {encoding.metric} {scores[-1]:.4f} on {len(held_rows)} "
            "held-out images"
        )
    m = encoding.metric
    return {
        "folds": cfg.folds,
        "epochs": epochs,
        f"{m}_mean": round(statistics.mean(scores), 6),
        f"{m}_std": round(statistics.stdev(scores), 6),
        f"{m}_min": round(min(scores), 6),
        f"{m}_max": round(max(scores), 6),
        "per_fold": [round(s, 6) for s in scores],
    }
