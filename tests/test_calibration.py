"""Calibration (calibration.py): the ECE over 10 equal-width bins, the reliability table, the shares within 5 and 10
units."""

from __future__ import annotations

import numpy as np
import pytest

from transfer_learning import calibration
from transfer_learning.records import Encoding

ENCODING = Encoding(task="classification", classes=("a", "b"))


def test_the_ece_weighs_each_bin_by_its_images():
    # 4 images at 0.9 (3 right) and 2 at 0.6 (both right): |0.75 - 0.9| * 4/6 + |1 - 0.6| * 2/6
    probabilities = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 2)
    actual = np.array([0, 0, 0, 1, 0, 0])
    assert calibration.expected_calibration_error(probabilities, actual) == pytest.approx(0.15 * 4 / 6 + 0.4 * 2 / 6)
    table = calibration.reliability(probabilities, actual)
    assert table["range"].tolist() == ["(0.5, 0.6]", "(0.8, 0.9]"] and table["images"].tolist() == [2, 4]
    assert table["observed"].tolist() == [1.0, 0.75] and table["predicted"].tolist() == pytest.approx([0.6, 0.9])
    assert calibration.bins(np.array([0.1, 0.10001, 1.0])).tolist() == [0, 1, 9], "bins are (b/10, (b+1)/10]"


def test_the_baseline_is_always_sure_so_its_ece_is_its_error_rate():
    actual = np.array(["a", "a", "a", "b"])
    figures = calibration.metrics(actual, {"head": np.array([[0.5, 0.5]] * 4)}, ENCODING, "a")
    assert figures["baseline"]["ece"] == pytest.approx(0.25) and figures["head"]["ece"] == pytest.approx(0.25)


def test_regression_shares_within_5_and_10_units_and_its_reliability_bins():
    actual = np.array([10.0, 20.0, 30.0, 40.0])
    figures = calibration.metrics(
        actual, {"fine_tuned": np.array([14.0, 27.0, 41.0, 40.0])}, Encoding(task="regression", mean=0, std=1), 25.0
    )
    assert figures["fine_tuned"] == {"within_5": 0.5, "within_10": 0.75} and figures["baseline"] == {
        "within_5": 0.5,
        "within_10": 0.5,
    }
    table = calibration.regression_reliability(np.array([3.0, 1.0, 2.0]), np.array([30.0, 10.0, 20.0]))
    assert table["predicted"].tolist() == [1.0, 2.0, 3.0] and table["observed"].tolist() == [10.0, 20.0, 30.0]
