"""Running a frozen network over memory-mapped images, chunk by chunk, into a memory-mapped .npy.

Memory holds one chunk of images and its outputs, whatever the dataset size; a progress bar
shows the chunks.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm

from transfer_learning import batches, files

CHUNK = 512  # images per predict call; outputs are written as they come
BATCH_SIZE = 64  # images per forward pass


def predict_to_npy(
    model: keras.Model, images: np.ndarray, paths: list[Path], dtype, desc: str, replicas: int = 1
) -> list[tuple]:
    """model(images) -> one .npy (dtype) per output of the model, in the order of `paths`, written chunk by chunk and
    published atomically (all of them, or none if it fails). -> their shapes.

    Batches are global (split over `replicas` under a tf.distribute strategy); see batches.Batches."""
    shapes = [(len(images), *output.shape[1:]) for output in model.outputs]
    if len(shapes) != len(paths):
        raise ValueError(f"{model.name} has {len(shapes)} output(s), for {len(paths)} file(s)")
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(files.npy_writer(path, shape, dtype)) for path, shape in zip(paths, shapes)]
        progress = stack.enter_context(tqdm(total=len(images), desc=desc, unit="img"))
        for chunk in chunks(len(images)):
            predicted = model.predict(
                batches.Batches(images[chunk.start : chunk.stop], None, BATCH_SIZE, replicas=replicas), verbose=0
            )
            for out, values in zip(outs, predicted if len(outs) > 1 else [predicted]):
                out[chunk.start : chunk.stop] = values
            progress.update(len(chunk))
    return shapes


def chunks(rows: int) -> list[range]:
    """CHUNK rows at a time; a last chunk smaller than a batch joins the one before it, so that its
    rows can join a batch (batches.batch_count)."""
    starts = list(range(0, rows, CHUNK))
    if len(starts) > 1 and rows - starts[-1] < BATCH_SIZE:
        starts.pop()
    return [range(start, stop) for start, stop in zip(starts, starts[1:] + [rows])]
