"""Running a frozen network over memory-mapped images, chunk by chunk, into a memory-mapped .npy.

Memory holds one chunk of images and its outputs, whatever the dataset size; a progress bar
shows the chunks.
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm

from lib import batches, files

CHUNK = 512       # images per predict call; outputs are written as they come
BATCH_SIZE = 64   # images per forward pass


def predict_to_npy(model: keras.Model, images: np.ndarray, path: Path, dtype, desc: str, replicas: int = 1) -> tuple:
    """model(images) -> <path> (dtype), written chunk by chunk and published atomically. -> its shape.

    Batches are global (split over `replicas` under a tf.distribute strategy); see batches.Batches."""
    shape = (len(images), *model.output.shape[1:])
    with files.npy_writer(path, shape, dtype) as out, tqdm(total=len(images), desc=desc, unit="img") as progress:
        for chunk in chunks(len(images)):
            out[chunk.start:chunk.stop] = model.predict(batches.Batches(images[chunk.start:chunk.stop], None, BATCH_SIZE, replicas=replicas),
                                                        verbose=0)
            progress.update(len(chunk))
    return shape


def chunks(rows: int) -> list[range]:
    """CHUNK rows at a time; a last chunk smaller than a batch joins the one before it, so that its
    rows can join a batch (batches.batch_count)."""
    starts = list(range(0, rows, CHUNK))
    if len(starts) > 1 and rows - starts[-1] < BATCH_SIZE:
        starts.pop()
    return [range(start, stop) for start, stop in zip(starts, starts[1:] + [rows])]
