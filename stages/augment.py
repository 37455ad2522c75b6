"""Stage augment: the training images -> the list of the training set the models see: each image, then augment.copies
random variants of it, and a preview of a few.

No pixels are stored: a variant is a row (the image, its number, the copy) and augment.json holds the transform
and seed; extract-features (and fine-tune end to end) decode the file and apply augmentation.variant with the
variant's own seed (augment.seed, image, copy), the same pixels every time (image_sets.py). So an experiment with
another augment.seed adds the new features, not another augmented copy of the dataset.
Val and test are never augmented. copies: 0 passes the training set through unchanged.
"""

import numpy as np
import pandas as pd

from transfer_learning import files, image_sets, params, paths, records
from transfer_learning.errors import run

# rows of the preview: training images spread over the list, each with up to PREVIEW_COPIES variants
PREVIEW_IMAGES = 6
PREVIEW_COPIES = 5


def main():
    p = params.load()
    cfg = records.Augmentation(**dict(p.augment))  # every augment param, into augment.json
    listed = image_sets.read_list(paths.split_list("train"), image_sets.LIST_COLUMNS)
    targets = files.load_npy(paths.split_array(paths.NORMALIZED, "train", "targets"))
    per_image = cfg.copies + 1
    variants = pd.DataFrame(
        {
            "path": np.repeat(listed["path"].to_numpy(), per_image),
            "file_sha256": np.repeat(listed["file_sha256"].to_numpy(), per_image),
            "image": np.repeat(np.arange(len(listed)), per_image),
            "copy": np.tile(np.arange(per_image), len(listed)),
        }
    )
    training_set = image_sets.ImageSet(variants, image_sets.files_record(), cfg)
    picked = np.unique(np.linspace(0, len(listed) - 1, min(PREVIEW_IMAGES, len(listed))).astype(int))
    shown = variants[variants["image"].isin(picked) & (variants["copy"] <= PREVIEW_COPIES)].index.to_numpy()
    preview(training_set[shown], min(per_image, PREVIEW_COPIES + 1), cfg)
    files.write_csv(paths.image_list("train"), variants)
    files.save_npy(paths.targets("train"), np.repeat(targets, per_image, axis=0))
    cfg.write(paths.AUGMENT)
    print(
        f"augment: {len(listed)} training images -> {len(variants)} ({cfg.copies} variants each, made when read); "
        f"preview: {paths.AUGMENT_PREVIEW}"
    )


def preview(pictures: np.ndarray, columns: int, cfg: records.Augmentation) -> None:
    """A grid: a training image per row, the image then its variants; 96 px cells, whatever the image size."""
    from PIL import Image, ImageDraw

    cell, header = 96, 18
    rows = -(-len(pictures) // columns)
    sheet = Image.new("RGB", (columns * cell, header + rows * cell), "white")
    ImageDraw.Draw(sheet).text((4, 3), f"image, then variants (seed {cfg.seed})", fill="black")
    for i, picture in enumerate(pictures):
        sheet.paste(
            Image.fromarray(picture).resize((cell - 4, cell - 4), Image.Resampling.BILINEAR),
            (i % columns * cell + 2, header + i // columns * cell + 2),
        )
    with files.atomic_path(paths.AUGMENT_PREVIEW) as tmp:
        sheet.save(tmp, format="PNG")


if __name__ == "__main__":
    run(main)
