"""transfer_learning/targets.py: labels to numbers and back (class order, or the training mean and std)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from transfer_learning import targets


def test_targets_encoding_round_trips_with_training_statistics():
    enc = targets.encoding_of(pd.Series([10.0, 20.0, 30.0]), "regression")
    assert enc.mean == 20.0 and np.isclose(enc.std, np.std([10, 20, 30]))
    encoded = targets.encode(pd.Series([20.0, 40.0]), enc)
    assert np.allclose(targets.decode(encoded, enc), [20.0, 40.0])
    classes = targets.encoding_of(pd.Series(["cat", "ant", "cat"]), "classification")
    assert classes.classes == ("ant", "cat")
    assert list(targets.from_head(np.array([[0.9, 0.1], [0.2, 0.8]]), classes)) == ["ant", "cat"]
