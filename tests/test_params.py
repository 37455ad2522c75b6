"""params.yaml is validated in one place before any work: typos, types and ranges."""
from __future__ import annotations

import pytest
import yaml

from conftest import ROOT
from lib import params
from lib.errors import PipelineError


def write(tmp_path, **changes):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        data[section][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_committed_params_are_valid():
    p = params.load(ROOT / "params.yaml")
    assert p.data.source == "builtin:digits" and p.base.name == "mobilenet_v2"


@pytest.mark.parametrize("change, message", [
    ({"fine_tune__lr_rate": 0.1}, "unknown key fine_tune.lr_rate"),
    ({"train_head__epochs": -1}, "train_head.epochs: Input should be greater than or equal to 0"),
    ({"train_head__epochs": "ten"}, "train_head.epochs: Input should be a valid integer"),
    ({"split__val": 0.5, "split__test": 0.5}, "leaves no training set"),
    ({"split__test": 1.5}, "split.test: Input should be less than 1"),
    ({"base__name": "resnet"}, "base.name: Input should be 'mobilenet_v2' or 'vgg16'"),
    ({"base__weights": "missing.weights.h5"}, "base.weights file missing.weights.h5 does not exist"),
    ({"data__task": "ranking"}, "data.task: Input should be 'classification' or 'regression'"),
])
def test_bad_params_are_rejected_with_the_key(tmp_path, change, message):
    with pytest.raises(PipelineError, match=message.replace(".", r"\.").replace("(", r"\(")):
        params.load(write(tmp_path, **change))
