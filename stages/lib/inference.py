"""Running a frozen network over memory-mapped images, chunk by chunk, into a memory-mapped .npy.

Memory holds one chunk of images and its outputs, whatever the dataset size; a progress bar
shows the chunks.
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm

from lib import files

CHUNK = 512       # images per predict call; outputs are written as they come
BATCH_SIZE = 64   # images per forward pass


def predict_to_npy(model: keras.Model, images: np.ndarray, path: Path, dtype, desc: str) -> tuple:
    """model(images) -> <path> (dtype), written chunk by chunk and published atomically. -> its shape."""
    shape = (len(images), *model.output.shape[1:])
    with files.npy_writer(path, shape, dtype) as out, tqdm(total=len(images), desc=desc, unit="img") as progress:
        for start in range(0, len(images), CHUNK):
            batch = np.asarray(images[start:start + CHUNK], dtype=np.float32)
            out[start:start + len(batch)] = model.predict(batch, batch_size=BATCH_SIZE, verbose=0)
            progress.update(len(batch))
    return shape
