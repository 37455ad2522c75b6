"""Stage extract-features: images -> pooled features of the frozen pretrained base, once per image.

Runs the base (inference mode) over the augmented training set, val and test, in batches straight
from the memory-mapped image arrays, and stores what the head trains on.
base.precision: bfloat16 computes in mixed bfloat16 (benchmark it on your CPU); features are stored as float32.
The base runs under train.strategy (stages/lib/distribute.py): each batch is split over the replicas.
"""
import numpy as np

from lib import distribute, files, inference, models, params, paths, training
from lib.errors import run


def main():
    p = params.load()
    strategy = distribute.strategy(p.train.strategy)
    training.make_deterministic(0)
    models.set_precision(p.base.precision)
    with strategy.scope():
        base = models.build_base(p.base.name, p.base.alpha, p.base.weights)
        extractor = models.feature_extractor(base, p.base.name, p.normalize.image_size, p.base.pooling)
    for split in paths.SPLITS:
        images, targets = files.load_npy(paths.images(split), mmap=True), files.load_npy(paths.targets(split))
        with distribute.only_chief_writes(strategy):
            shape = inference.predict_to_npy(extractor, images, paths.features(split), np.float32,
                                             desc=f"extract-features: {split}", replicas=strategy.num_replicas_in_sync)
            files.save_npy(paths.feature_targets(split), targets)
    print(f"extract-features: {p.base.name} ({p.base.precision}) on {extractor.distribute_strategy.num_replicas_in_sync} replica(s) "
          f"-> {shape[1]} features per image -> {paths.FEATURES}")


if __name__ == "__main__":
    run(main)
