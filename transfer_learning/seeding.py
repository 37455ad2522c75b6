"""Seeds and deterministic ops (TensorFlow/Keras): the same inputs and params give the same weights, bit for bit.

Its own module because every TensorFlow stage needs it: extract-features depends on this file, not on training.py,
so changing how models are trained does not rerun the most expensive stage.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def make_deterministic(seed: int, threads: int | None = None) -> None:
    """Same inputs and params -> same weights, bit for bit (Python, NumPy and TF seeds; deterministic ops).

    `threads` fixes TensorFlow's pool of threads for one op: oneDNN splits the sums of some gradients
    (convolution weights) over that many threads, so their last bits depend on it. Call this before
    anything starts TensorFlow's runtime (even the distribution strategy)."""
    if threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
