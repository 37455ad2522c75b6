"""Shared logic of the pipeline stages: one module per concern.

TensorFlow/Keras is imported by models, training, batches, inference, distribute and live (and by
nothing else), so ingest, split, normalize and augment never load it; stage scripts import it only
through these modules.

TensorFlow is configured here, before any module imports it, so that the same inputs and params
give the same bits on any x86-64 CPU with AVX2 (docs/reproducibility.md): TensorFlow turns its
oneDNN kernels on by default only on CPUs with AVX-512 features (elsewhere its Eigen kernels give
other bits, which also change with the number of cores), and oneDNN picks kernels by instruction
set (AVX2 and AVX-512 kernels round differently when training). Set either variable yourself to
trade that for speed on your CPU.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of stage logs
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # oneDNN kernels on every CPU, not only AVX-512 ones
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")  # their AVX2 versions, also on AVX-512 CPUs
