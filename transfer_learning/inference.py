"""Running a frozen network over images, batch by batch, into a memory-mapped .npy.

Memory holds a few batches of images and their outputs, whatever the dataset size; a progress bar
shows the images.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from transfer_learning import batches, files

BATCH_SIZE = 64  # images per forward pass
PREFETCH = 2  # batches decoded ahead while the model runs the current one


def predict_to_npy(
    model: keras.Model, images: np.ndarray, paths: list[Path], dtype, desc: str, replicas: int = 1
) -> list[tuple]:
    """model(images) -> one .npy (dtype) per output of the model, in the order of `paths`, written batch by batch and
    published atomically (all of them, or none if it fails). -> their shapes.

    Batches are global (split over `replicas` under the model's tf.distribute strategy); see batches.Batches."""
    shapes = [(len(images), *output.shape[1:]) for output in model.outputs]
    if len(shapes) != len(paths):
        raise ValueError(f"{model.name} has {len(shapes)} output(s), for {len(paths)} file(s)")
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(files.npy_writer(path, shape, dtype)) for path, shape in zip(paths, shapes)]
        progress = stack.enter_context(tqdm(total=len(images), desc=desc, unit="img"))
        start = 0
        # predict_on_batch, not one model.predict per chunk: each predict call builds its own data pipeline and
        # Keras 3.12 (TF 2.20) kept ~2 batches of every one alive (extract-features grew by 14 MB per 512 images)
        for x in batch_stream(batches.Batches(images, None, BATCH_SIZE, replicas=replicas), model):
            predicted = model.predict_on_batch(x)
            predicted = predicted if len(outs) > 1 else [predicted]
            stop = start + len(predicted[0])
            for out, values in zip(outs, predicted):
                out[start:stop] = values
            progress.update(stop - start)
            start = stop
    return shapes


def batch_stream(data: batches.Batches, model: keras.Model) -> tf.distribute.DistributedDataset:
    """The batches of `data`: on one device (the default strategy, or a LiteRT model) NumPy batches decoded as they
    are asked for; under a strategy of several replicas one tf.data pipeline for the whole split, split over them as
    Keras' predict splits them (experimental_distribute_dataset), the next batches decoded meanwhile. One device takes
    no pipeline: a Ctrl-C or SIGTERM while its Python generator thread ran crashed the stage (SIGSEGV) instead of the
    one-line exit (tests/test_robustness.py)."""
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is None or strategy.num_replicas_in_sync == 1:
        return (data[i] for i in range(len(data)))
    spec = tf.TensorSpec((None, *data.inputs.shape[1:]), tf.float32)
    dataset = tf.data.Dataset.from_generator(lambda: (data[i] for i in range(len(data))), output_signature=spec)
    return strategy.experimental_distribute_dataset(dataset.prefetch(PREFETCH))
