"""Shared logic of the pipeline stages: one module per concern.

Only models.py and training.py import TensorFlow; stages that do not need it never import them.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of stage logs
