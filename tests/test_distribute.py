"""transfer_learning/distribute.py: train.strategy, and a multi_worker cluster told by TF_CONFIG (checked in one line).
The strategies on a real run: test_e2e_distributed.py."""

from __future__ import annotations

import pytest

from transfer_learning import distribute
from transfer_learning.errors import PipelineError


@pytest.mark.parametrize(
    "tf_config, message",
    [
        (None, 'train.strategy=multi_worker needs TF_CONFIG on every machine, e.g. TF_CONFIG=\'{"cluster"'),
        ("{cluster: x}", "TF_CONFIG is not valid JSON (Expecting property name enclosed in double quotes"),
        ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG needs a 'cluster' and a 'task'"),
        (
            '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}',
            'TF_CONFIG task {"type": "worker", "index": 2} is not in its cluster {"worker": ["a:1", "b:1"]}',
        ),
    ],
)
def test_multi_worker_without_a_usable_tf_config_is_one_line(monkeypatch, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(PipelineError) as info:
        distribute.strategy("multi_worker")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
