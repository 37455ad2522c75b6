"""The images the models see, decoded from the source files when they are read: no stage stores pixels.

A decoded copy of a dataset is 5-50x the size of its JPEGs (Flowers-17 at 256 px: 58 MB of photos, 267 MB as uint8
arrays; with the augmented copies and DVC's cache copy, 49x the photos before this layout). So the data stages write
lists and recipes instead, and every reader decodes:

- normalize writes, per split, the list of its images (`data/normalized/<split>_images.csv`: path, file_sha256, in
  the manifest's order) and how a file becomes the model's input (`data/normalized/images.json`: where the files are,
  records.ImageFiles);
- augment writes which variants the training set holds (`data/augmented/train_images.csv`: each image, then its
  `copies` variants, with the numbers that seed them) and the transform (`data/augmented/augment.json`).

`ImageSet` reads such a list as an (n, size, size, 3) uint8 array: `images[rows]` decodes the files of `rows` (each
file once, in threads), checks each file's sha256 against the manifest's (a file changed since ingest is an error,
not a silent other picture), squares it as normalize said and, for a variant, applies augmentation.variant with its
own seed: the bytes the stored arrays held, so features, activations and models are the same as before.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from transfer_learning import augmentation, images, paths, records, settings
from transfer_learning.errors import PipelineError

LIST_COLUMNS = ["path", "file_sha256"]  # normalize's <split>_images.csv
# augment's: `image` numbers the training image, `copy` 0 is it
VARIANT_COLUMNS = ["path", "file_sha256", "image", "copy"]


def source_folder(files_record: records.ImageFiles) -> Path:
    """The folder the manifest's paths are relative to: data.source, or the folder of its CSV (data.csv)."""
    root = Path(files_record.source)
    return (root / files_record.csv).parent if files_record.csv else root


class ImageSet:
    """An (n, size, size, 3) uint8 array-like over image files: what Batches, inference and the review index."""

    def __init__(
        self, rows: pd.DataFrame, files_record: records.ImageFiles, augment: records.Augmentation | None = None
    ):
        self.root = source_folder(files_record)
        self.preparation = files_record.preparation
        self.paths = rows["path"].astype(str).to_numpy()
        self.sha256 = rows["file_sha256"].astype(str).to_numpy()
        # per row: which training image seeds the variant, and which copy (0: the image itself)
        self.image = rows["image"].to_numpy(dtype=np.int64) if "image" in rows else np.arange(len(rows))
        self.copy = rows["copy"].to_numpy(dtype=np.int64) if "copy" in rows else np.zeros(len(rows), np.int64)
        self.augment = augment
        size = self.preparation.image_size
        self.shape, self.dtype, self.ndim = (len(rows), size, size, 3), np.dtype(np.uint8), 4
        self._pool = None

    def __len__(self) -> int:
        return self.shape[0]

    def __enter__(self) -> ImageSet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the decoding threads (`with image_sets.load(split) as images:` does it when done); reading again
        starts new ones."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.rows(np.array([key]))[0]
        return self.rows(np.arange(len(self))[key])

    def __array__(self, dtype=None, copy=None):
        return self.rows(np.arange(len(self))).astype(dtype or np.uint8, copy=False)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """The images of `rows`: each distinct file decoded once, then each row's variant, in threads."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if self._pool is None:  # PIL's decoders and scipy's transform release the GIL
            self._pool = ThreadPoolExecutor(settings.workers())
        first = {}
        for row in rows.tolist():
            first.setdefault(self.paths[row], row)
        decoded = dict(zip(first, self._pool.map(self.decode, first.values())))
        out = np.empty((len(rows), *self.shape[1:]), np.uint8)

        def fill(i: int) -> None:
            row = rows[i]
            picture = decoded[self.paths[row]]
            copy = int(self.copy[row])
            out[i] = (
                picture
                if copy == 0
                else augmentation.variant(picture, self.augment, (self.augment.seed, int(self.image[row]), copy - 1))
            )

        list(self._pool.map(fill, range(len(rows))))
        return out

    def decode(self, row: int) -> np.ndarray:
        """The model-size picture of one file, as ingest decoded it and normalize squared it."""
        path, file = self.paths[row], self.root / self.paths[row]
        prep = self.preparation
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise PipelineError(
                f"{file}: cannot read it ({exc.strerror or exc}); data.source changed after ingest: run `dvc repro`"
            ) from None
        if hashlib.sha256(data).hexdigest() != self.sha256[row]:
            raise PipelineError(
                f"{file} changed after ingest read it (its sha256 differs from {paths.MANIFEST}'s); run `dvc repro`"
            )
        try:
            pixels, _ = images.decode(data, prep.max_short_side, int(prep.max_megapixels * 1e6))
        except images.Unusable as exc:  # cannot happen to the bytes ingest decoded, unless the decoder changed
            raise PipelineError(f"{file} ({path}): {exc}; run `dvc repro --force`") from None
        return images.square(pixels, prep.image_size, prep.resize)


def files_record() -> records.ImageFiles:
    return records.ImageFiles.read(paths.IMAGE_FILES)


def load(split: str) -> ImageSet:
    """What the models see of a split: train augmented (each image, then its variants), val and test as listed."""
    if split == "train":
        augment = records.Augmentation.read(paths.AUGMENT)
        return ImageSet(read_list(paths.image_list("train"), VARIANT_COLUMNS), files_record(), augment)
    return ImageSet(read_list(paths.image_list(split), LIST_COLUMNS), files_record())


def listed(split: str) -> ImageSet:
    """A split's images as normalize listed them, never augmented (augment's input, the previews)."""
    return ImageSet(read_list(paths.split_list(split), LIST_COLUMNS), files_record())


def read_list(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype={"path": str, "file_sha256": str}, keep_default_na=False)
    except FileNotFoundError:
        raise PipelineError(f"{path} does not exist; run `dvc repro`") from None
    if list(frame.columns) != columns:
        raise PipelineError(f"{path} has columns {list(frame.columns)}, not {columns}; rerun `dvc repro --force`")
    return frame
