"""Stage normalize: snapshot + split -> fixed-size uint8 image arrays per split, encoded targets.

Images are resized to normalize.image_size (aspect kept: crop or pad) and stored as raw uint8
pixels in memory-mappable .npy files; pixel scaling happens inside the model. Class order (or the
target's training mean/std) is saved to encoding.json.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from tqdm import tqdm

from transfer_learning import files, images, params, paths, settings, targets
from transfer_learning.errors import PipelineError, run

BATCH = 256


def main():
    p = params.load()
    size = p.normalize.image_size
    if p.ingest.max_short_side < size:  # the snapshot is smaller than the model input: every photo would be upscaled
        raise PipelineError(f"normalize.image_size={size} is above ingest.max_short_side={p.ingest.max_short_side}, so images would be "
                            f"upscaled from a shrunk snapshot: raise ingest.max_short_side to at least {size} (it reruns ingest)")
    manifest = files.read_manifest(paths.MANIFEST, p.data.task)
    split = pd.read_csv(paths.SPLIT)["split"]
    pixels = np.memmap(paths.PIXELS, dtype=np.uint8, mode="r")
    enc = targets.encoding_of(manifest.loc[split == "train", "label"], p.data.task)
    targets.check_classes(manifest["label"], split, enc)

    def resized(row) -> np.ndarray:
        h, w = row.stored_height, row.stored_width
        return images.square(np.asarray(pixels[row.offset:row.offset + h * w * 3]).reshape(h, w, 3), size, p.normalize.resize)

    with ThreadPoolExecutor(settings.workers()) as pool:
        for name in paths.SPLITS:
            rows = manifest[split == name]
            with files.npy_writer(paths.split_array(paths.NORMALIZED, name, "images"), (len(rows), size, size, 3), np.uint8) as out:
                with tqdm(range(0, len(rows), BATCH), desc=f"normalize: {name}", unit="batch") as batches:
                    for start in batches:
                        batch = rows.iloc[start:start + BATCH]
                        out[start:start + len(batch)] = np.stack(list(pool.map(resized, batch.itertuples())))
            files.save_npy(paths.split_array(paths.NORMALIZED, name, "targets"), targets.encode(rows["label"], enc))
    enc.write(paths.ENCODING)
    print(f"normalize: {size}x{size} ({p.normalize.resize}) -> {paths.NORMALIZED}")


if __name__ == "__main__":
    run(main)
