"""Stage extract-features: images -> the frozen pretrained base's outputs, one pass per image.

Runs the base (inference mode) over the augmented training set, val and test, in batches decoded from the image
files as they are read (image_sets.py: each variant made again from its seed), and stores from that one pass:
- data/features: the pooled features the head trains on (and evaluate scores the head on: test);
- data/activations (train, val; fine_tune.cache_activations: true): the activations at fine_tune.unfreeze_from.
  Everything below that cut stays frozen during fine-tuning and the augmented training set is fixed, so those
  layers give the same activations every epoch: fine-tune trains the top of the base + head on them (float32, so
  the result is that of end-to-end training) instead of pushing every image through the whole base each epoch.
  With false, only info.json (fine-tune then runs end to end on images).
base.precision: bfloat16 computes the pass in mixed bfloat16 (benchmark it on your CPU); outputs are stored as float32,
but the cached activations then carry bfloat16 rounding (the two-stage layout before 2026-11-27 kept them float32).
oneDNN has no bfloat16 kernels under the project's AVX2 cap, so this stage then runs its native ones (settings.py):
its outputs are the same run to run, not across CPU models.
The base runs under train.strategy (transfer_learning/distribute.py): each batch is split over the replicas.
base.runtime: litert runs the same pass as a TFLite model on this machine's CPU (transfer_learning/runtimes.py).
"""

import numpy as np

from transfer_learning import (
    backbones,
    distribute,
    files,
    image_sets,
    inference,
    networks,
    params,
    paths,
    runtimes,
    seeding,
    settings,
)
from transfer_learning.errors import run


def main():
    p = params.load()
    lifted = settings.kernels_for(p.base.precision)  # before any op: oneDNN reads its kernel cap once
    if lifted:
        print(f"extract-features: {lifted}", flush=True)
    cut = backbones.cut(p.base.name, p.fine_tune.unfreeze_from) if p.fine_tune.cache_activations else None
    strategy = distribute.strategy(p.train.strategy)
    seeding.make_deterministic(0)
    networks.set_precision(p.base.precision)
    with strategy.scope():
        base = networks.build_base(
            p.base.name, p.base.alpha, p.base.weights, p.base.minimalistic, p.normalize.image_size
        )
        features_only = networks.feature_extractor(base, p.base.name, p.normalize.image_size, p.base.pooling)
        extractor = (
            networks.feature_extractor(base, p.base.name, p.normalize.image_size, p.base.pooling, cut)
            if cut
            else features_only
        )
    features_only, extractor = runtimes.on_runtime(p.base.runtime, features_only, extractor, settings.workers())
    info = {
        "cache_activations": p.fine_tune.cache_activations,
        "unfreeze_from": p.fine_tune.unfreeze_from,
        "dtype": "float32",
    }
    for split in paths.SPLITS:
        images, targets = image_sets.load(split), files.load_npy(paths.targets(split))  # decoded as read
        model, outputs = features_only, [paths.features(split)]
        # fine-tune trains and validates on activations; the test set is scored on images
        if cut and split in ("train", "val"):
            model, outputs = extractor, outputs + [paths.activations(split)]
        with distribute.only_chief_writes(strategy):
            shapes = inference.predict_to_npy(
                model,
                images,
                outputs,
                np.float32,
                desc=f"extract-features: {split}",
                replicas=strategy.num_replicas_in_sync,
            )
            files.save_npy(paths.feature_targets(split), targets)
        images.close()  # its decoding threads
        if len(shapes) > 1:
            info[f"{split}_shape"] = list(shapes[1])
    with distribute.only_chief_writes(strategy):
        files.write_json(paths.ACTIVATIONS_INFO, info)
    cached = f" and activations below {cut} ({info['train_shape'][1:]} per image) -> {paths.ACTIVATIONS}" if cut else ""
    print(
        f"extract-features: {p.base.name} ({p.base.precision}, {p.base.runtime}) on "
        f"{strategy.num_replicas_in_sync} replica(s) "
        f"-> {shapes[0][1]} features per image -> {paths.FEATURES}{cached}"
    )


if __name__ == "__main__":
    run(main)
