"""Stage augment: training images -> training images plus augment.copies random variants of each.

Val and test are never augmented. copies: 0 passes the training set through unchanged.
Output order: image 0, its variants, image 1, its variants, ...
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from transfer_learning import augmentation, files, params, paths, settings
from transfer_learning.errors import run

BATCH = 64


def main():
    p = params.load()
    cfg, copies = p.augment, p.augment.copies
    images = files.load_npy(paths.split_array(paths.NORMALIZED, "train", "images"), mmap=True)
    targets = files.load_npy(paths.split_array(paths.NORMALIZED, "train", "targets"))

    per_image = copies + 1
    with ThreadPoolExecutor(settings.workers()) as pool, \
            files.npy_writer(paths.split_array(paths.AUGMENTED, "train", "images"), (len(images) * per_image, *images.shape[1:]), np.uint8) as out:

        def write_with_variants(i: int) -> None:  # straight into the output: memory holds one image per thread, whatever `copies`
            out[i * per_image] = images[i]
            for c in range(copies):
                out[i * per_image + 1 + c] = augmentation.variant(images[i], cfg, (cfg.seed, i, c))

        with tqdm(range(0, len(images), BATCH), desc=f"augment: {copies} copies", unit="batch") as batches:
            for start in batches:
                list(pool.map(write_with_variants, range(start, min(start + BATCH, len(images)))))
    files.save_npy(paths.split_array(paths.AUGMENTED, "train", "targets"), np.repeat(targets, per_image, axis=0))
    print(f"augment: {len(images)} training images -> {len(images) * per_image}")


if __name__ == "__main__":
    run(main)
