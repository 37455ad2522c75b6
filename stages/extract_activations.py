"""Stage extract-activations: images -> the frozen base's activations at the fine-tune cut, once per image.

Everything below fine_tune.unfreeze_from stays frozen during fine-tuning, and the augmented
training set is fixed, so those layers give the same activations every epoch: fine-tune trains
the top of the base + head on these (float32, so the result is exactly that of end-to-end
training) instead of pushing every image through the whole
base each epoch. Its own stage, so changing fine_tune.lr or .epochs never recomputes them;
changing the cut, the base or the images does.
fine_tune.cache_activations: false writes only info.json (fine-tune then runs end to end on images).
The base runs under train.strategy (stages/lib/distribute.py): each batch is split over the replicas.
"""
import numpy as np

from lib import distribute, files, inference, models, params, paths, training
from lib.errors import run


def main():
    p = params.load()
    cut = p.fine_tune.unfreeze_from
    strategy = distribute.strategy(p.train.strategy)
    training.make_deterministic(0)
    info = {"cache_activations": p.fine_tune.cache_activations, "unfreeze_from": cut, "dtype": "float32"}
    if p.fine_tune.cache_activations:
        with strategy.scope():
            base = models.build_base(p.base.name, p.base.alpha, p.base.weights)
            extractor = models.activation_extractor(base, p.base.name, p.normalize.image_size, cut)
        for split in ("train", "val"):
            images = files.load_npy(paths.images(split), mmap=True)
            with distribute.only_chief_writes(strategy):
                shape = inference.predict_to_npy(extractor, images, paths.activations(split), np.float32,
                                                 desc=f"extract-activations: {split}", replicas=strategy.num_replicas_in_sync)
            info[f"{split}_shape"] = list(shape)
        print(f"extract-activations: {p.base.name} below {cut} on {extractor.distribute_strategy.num_replicas_in_sync} replica(s) "
              f"-> {shape[1:]} per image -> {paths.ACTIVATIONS}")
    with distribute.only_chief_writes(strategy):
        files.write_json(paths.ACTIVATIONS_INFO, info)


if __name__ == "__main__":
    run(main)
