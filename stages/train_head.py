"""Stage train-head: stored features -> a trained dense head (no images, no base forward pass).

The features are read memory-mapped, a batch at a time, reshuffled every epoch from train_head.seed.
Each epoch's figures go to dvclive/train_head as it trains (transfer_learning/live.py); the restored best epoch to
metrics/train_head.json. Built, compiled and trained under train.strategy (transfer_learning/distribute.py);
train_head.batch_size is global. train_head.class_weight: balanced weighs each class's rows inversely to their number
(the weights in the metrics). train_head.folds > 0 adds a k-fold cross-validated estimate of the head on train + val
(transfer_learning/crossval.py) to the metrics. Each finished epoch is backed up (transfer_learning/resume.py): rerun
after an interruption, it resumes at the next one (an interrupted k-fold estimate starts its folds again).
"""

from transfer_learning import (
    batches,
    crossval,
    distribute,
    files,
    model_files,
    params,
    paths,
    records,
    seeding,
    training,
)
from transfer_learning.errors import run


def main():
    p = params.load()
    cfg = p.train_head
    strategy = distribute.strategy(p.train.strategy)
    seeding.make_deterministic(cfg.seed)
    encoding = records.Encoding.read(paths.ENCODING)
    replicas = strategy.num_replicas_in_sync
    classes = training.one_hot_classes(encoding, cfg.mixup)
    train = batches.from_files(
        paths.features("train"),
        paths.feature_targets("train"),
        cfg.batch_size,
        seed=cfg.seed,
        replicas=replicas,
        classes=classes,
        mixup=cfg.mixup,
    )
    val = batches.from_files(
        paths.features("val"),
        paths.feature_targets("val"),
        cfg.batch_size,
        seed=None,
        replicas=replicas,
        classes=classes,
    )
    with strategy.scope():
        head = training.compiled_head(train.inputs.shape[1], p.head, cfg, encoding, steps_per_epoch=len(train))
    # resumed after the epochs an interrupted run finished; epoch by epoch to dvclive/train_head
    history, weights, backup = training.fit_stage(
        "train-head", p, cfg, strategy, head, train, val, encoding, paths.TRAIN_HEAD_LIVE
    )
    with distribute.only_chief_writes(strategy):
        model_files.save(head, paths.HEAD_MODEL)
    metrics = training.best_epoch(history, encoding)
    if weights:  # what each class's rows weighed (the k-fold's heads weigh their own training rows alike)
        metrics["class_weight"] = training.named_weights(weights, encoding)
    if cfg.folds:  # after the head is saved: its own heads, seeded per fold
        metrics["kfold"] = crossval.estimate(
            cfg,
            p.head,
            p.augment.copies + 1,
            encoding,
            strategy,
            epochs=metrics["best_epoch"],
            groups=crossval.image_groups(),  # subjects (split.group_column), each kept in one fold
        )
    with distribute.only_chief_writes(strategy):
        files.write_json(paths.TRAIN_HEAD_METRICS, metrics)
    backup.discard()


if __name__ == "__main__":
    run(main)
