"""Stage extract-features: images -> pooled features of the frozen pretrained base, once per image.

Runs the base (inference mode) over the augmented training set, val and test, in batches straight
from the memory-mapped image arrays, and stores what the head trains on.
"""
import numpy as np
from tqdm import tqdm

from lib import files, models, params, paths, training
from lib.errors import run

CHUNK = 512  # images per predict call; features are written as they come


def main():
    p = params.load()
    training.make_deterministic(0)
    base = models.build_base(p.base.name, p.base.alpha, p.base.weights)
    extractor = models.feature_extractor(base, p.base.name, p.normalize.image_size, p.head.pooling)
    n_features = extractor.output.shape[-1]
    sources = {"train": paths.AUGMENTED, "val": paths.NORMALIZED, "test": paths.NORMALIZED}
    for split, folder in sources.items():
        images = files.load_npy(paths.split_array(folder, split, "images"), mmap=True)
        with files.npy_writer(paths.split_array(paths.FEATURES, split, "features"), (len(images), n_features), np.float32) as out:
            for start in tqdm(range(0, len(images), CHUNK), desc=f"extract-features: {split}", unit="chunk"):
                batch = np.asarray(images[start:start + CHUNK], dtype=np.float32)
                out[start:start + len(batch)] = extractor.predict(batch, batch_size=64, verbose=0)
        files.save_npy(paths.split_array(paths.FEATURES, split, "targets"), files.load_npy(paths.split_array(folder, split, "targets")))
    print(f"extract-features: {p.base.name} -> {n_features} features per image -> {paths.FEATURES}")


if __name__ == "__main__":
    run(main)
