"""Stage train-head: stored features -> a trained dense head (no images, no base forward pass).

Built, compiled and trained under train.strategy (stages/lib/distribute.py); train_head.batch_size is global.
"""
import math

from lib import distribute, files, models, params, paths, targets, training
from lib.errors import run


def main():
    p = params.load()
    cfg = p.train_head
    strategy = distribute.strategy(p.train.strategy)
    training.make_deterministic(cfg.seed)
    encoding = files.read_json(paths.ENCODING)
    x_train, y_train, x_val, y_val = (files.load_npy(paths.split_array(paths.FEATURES, split, kind))
                                      for split in ("train", "val") for kind in ("features", "targets"))
    with strategy.scope():
        head = models.build_head(x_train.shape[1], p.head.units, p.head.dropout, targets.n_outputs(encoding), encoding["task"])
        training.compile_for(head, encoding, cfg.loss, training.optimizer(cfg.optimizer, cfg.lr, schedule=cfg.schedule,
                                                                         total_steps=cfg.epochs * math.ceil(len(x_train) / cfg.batch_size)))
    history = training.fit(head, (x_train, y_train), (x_val, y_val), cfg.epochs, cfg.patience, encoding, cfg.batch_size)
    with distribute.outputs(strategy) as out:  # multi_worker: only the chief writes into the project
        models.save(head, out / paths.HEAD_MODEL)
        training.write_curves(history, out / paths.TRAIN_HEAD_PLOTS, encoding)
        files.write_json(out / paths.TRAIN_HEAD_METRICS, training.best_epoch(history, encoding))


if __name__ == "__main__":
    run(main)
