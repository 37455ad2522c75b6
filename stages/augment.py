"""Stage augment: training images -> training images plus augment.copies random variants of each.

Val and test are never augmented. copies: 0 passes the training set through unchanged.
Output order: image 0, its variants, image 1, its variants, ...
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from lib import augmentation, files, params, paths, settings
from lib.errors import run

BATCH = 64


def main():
    p = params.load()
    cfg, copies = p.augment, p.augment.copies
    images = files.load_npy(paths.split_array(paths.NORMALIZED, "train", "images"), mmap=True)
    targets = files.load_npy(paths.split_array(paths.NORMALIZED, "train", "targets"))

    def with_variants(i: int) -> list[np.ndarray]:
        return [images[i]] + [augmentation.variant(images[i], cfg, (cfg.seed, i, c)) for c in range(copies)]

    per_image = copies + 1
    with ThreadPoolExecutor(settings.workers()) as pool, \
            files.npy_writer(paths.split_array(paths.AUGMENTED, "train", "images"), (len(images) * per_image, *images.shape[1:]), np.uint8) as out:
        with tqdm(range(0, len(images), BATCH), desc=f"augment: {copies} copies", unit="batch") as batches:
            for start in batches:
                stop = min(start + BATCH, len(images))
                out[start * per_image:stop * per_image] = np.stack([im for group in pool.map(with_variants, range(start, stop)) for im in group])
    files.save_npy(paths.split_array(paths.AUGMENTED, "train", "targets"), np.repeat(targets, per_image, axis=0))
    print(f"augment: {len(images)} training images -> {len(images) * per_image}")


if __name__ == "__main__":
    run(main)
