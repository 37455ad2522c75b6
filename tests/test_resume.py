"""Resuming an interrupted fit (transfer_learning/resume.py): in one process, a fit that crashes after its second epoch
and is fitted again from its backup ends with the bits of an uninterrupted fit (same process, same CPU: the same
kernels), its history and dvclive's files included; the fingerprint tells a stale backup from a current one."""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import yaml

from support.projects import ROOT
from transfer_learning import batches, live, networks, params, resume, training
from transfer_learning.errors import PipelineError
from transfer_learning.records import Encoding

ENCODING = Encoding(task="classification", classes=("a", "b", "c"))


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Out of the repository: dvclive looks for a DVC project from the working folder up."""
    monkeypatch.chdir(tmp_path)


class Crash(Exception):
    pass


class CrashAt(keras.callbacks.Callback):
    """Dies as epoch `epoch` (from 0) begins, after the previous epoch was backed up: a kill between two epochs."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Crash


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6)).astype("float32")
    y = np.argmax(x[:, :3] + rng.normal(scale=0.7, size=(120, 3)), axis=1).astype(np.int32)
    return x, y


# train-head's way (dropout, mixup, a cosine schedule, Adam) and fine-tune's (SGD with momentum, a warm-up, weight
# averaging), each with early stopping that stops before the last epoch, or that only keeps the best epoch
SETTINGS = {
    "dropout-mixup-cosine": dict(
        dropout=0.5, mixup=0.4, optimizer="adam", lr=0.05, momentum=0.0, warmup=0, ema=0.0, epochs=10, patience=2
    ),
    "ema-momentum-warmup": dict(
        dropout=0.3, mixup=0.0, optimizer="sgd", lr=0.05, momentum=0.9, warmup=5, ema=0.9, epochs=6, patience=6
    ),
}


def fit(settings: dict, backup: resume.Backup | None, live_folder: Path, crash_at: int | None = None):
    """A head built, compiled and fitted as the stages do, from the same seed every time. -> (model, history)"""
    x, y = data()
    keras.utils.set_random_seed(0)
    classes = training.one_hot_classes(ENCODING, settings["mixup"])
    train = batches.Batches(x[:90], y[:90], 16, seed=3, classes=classes, mixup=settings["mixup"])
    val = batches.Batches(x[90:], y[90:], 16, classes=classes)
    model = networks.build_head(6, 12, settings["dropout"], 3, "classification")
    opt = training.optimizer(
        settings["optimizer"],
        settings["lr"],
        settings["momentum"],
        "cosine",
        total_steps=settings["epochs"] * len(train),
        warmup_steps=settings["warmup"],
        ema=settings["ema"],
    )
    training.compile_for(model, ENCODING, "auto", opt, mixup=settings["mixup"], steps_per_call=4)
    callbacks = [CrashAt(crash_at)] if crash_at is not None else []
    history = training.fit(
        model,
        train,
        val,
        epochs=settings["epochs"],
        patience=settings["patience"],
        encoding=ENCODING,
        callbacks=callbacks + live.callbacks(live_folder, resumed=backup.epoch if backup else 0),
        backup=backup,
    )
    return model, history


def resumed_backup(folder: Path, live_folder: Path) -> resume.Backup:
    """What Backup.find does after its fingerprint: the latest backup, and dvclive's files as they were then."""
    backup = resume.Backup(folder, "train-head", live_folder)
    shutil.rmtree(live_folder)  # DVC deletes a stage's outputs before it runs it
    shutil.copytree(backup.latest / "live", live_folder)
    return backup


def tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name, crashed", [("dropout-mixup-cosine", 2), ("ema-momentum-warmup", 1)])
def test_a_crashed_fit_resumes_at_the_next_epoch_to_the_bits_of_an_uninterrupted_one(name, crashed, tmp_path, capsys):
    """Crashed after its second epoch, or its first (dvclive's own resume would log the second epoch as step 0)."""
    settings = SETTINGS[name]
    reference, history = fit(settings, None, tmp_path / "live_reference")
    assert len(history) >= crashed + 2, "the resumed part trains at least two epochs"

    folder, live_folder = tmp_path / "backup", tmp_path / "live"
    with pytest.raises(Crash):
        fit(settings, resume.Backup(folder, "train-head", live_folder), live_folder, crash_at=crashed)
    assert [epoch for epoch, _ in resume.epoch_folders(folder)] == [crashed], "one backup, of the last finished epoch"
    backup = resumed_backup(folder, live_folder)
    capsys.readouterr()
    model, resumed = fit(settings, backup, live_folder)
    out = capsys.readouterr().out
    epochs, latest = settings["epochs"], folder / f"epoch-{crashed}"
    assert f"train-head: resuming at epoch {crashed + 1} of {epochs} from {latest}" in out
    assert f"Epoch {crashed}/" not in out and f"Epoch {crashed + 1}/" in out, "no finished epoch is trained again"

    pd.testing.assert_frame_equal(resumed, history, check_exact=True)
    for got, want in zip(model.variables, reference.variables):  # the Dropout layer's seed state too
        assert np.array_equal(got.numpy(), want.numpy()), got.path
    for got, want in zip(model.optimizer.variables, reference.optimizer.variables):
        assert np.array_equal(got.numpy(), want.numpy()), got.path
    assert tree(live_folder) == tree(tmp_path / "live_reference"), "dvclive's TSV files and metrics.json, byte for byte"
    assert [epoch for epoch, _ in resume.epoch_folders(folder)] == [len(history)]
    backup.discard()
    assert not folder.exists()


def test_without_its_backup_a_resumed_fit_would_differ(tmp_path):
    """The comparison above can fail: a fit that starts its third epoch from the second's weights alone (Keras'
    BackupAndRestore), without the dataset's epoch, early stopping's state and the dropout seeds, ends elsewhere."""
    settings = SETTINGS["dropout-mixup-cosine"]
    reference, history = fit(settings, None, tmp_path / "live_reference")
    folder, live_folder = tmp_path / "backup", tmp_path / "live"
    with pytest.raises(Crash):
        fit(settings, resume.Backup(folder, "train-head", live_folder), live_folder, crash_at=2)
    backup = resumed_backup(folder, live_folder)
    state = backup.state | {"data_epoch": 0, "early_stopping": None}
    backup.state = state
    model, resumed = fit(settings, backup, live_folder)
    assert not all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(model.variables, reference.variables))


def test_a_leftover_temporary_backup_is_ignored_and_a_finished_fit_is_not_trained_again(tmp_path, capsys):
    """A kill while epoch 3 was being written leaves epoch-3.tmp beside epoch-2: the resumed fit uses epoch-2. A kill
    after the fit ended (early stopping), before the stage wrote its outputs, trains nothing again."""
    settings = SETTINGS["dropout-mixup-cosine"]
    reference, history = fit(settings, None, tmp_path / "live_reference")
    assert len(history) < settings["epochs"], "early stopping ended it"
    folder, live_folder = tmp_path / "backup", tmp_path / "live"
    fit(settings, resume.Backup(folder, "train-head", live_folder), live_folder)
    (folder / f"epoch-{len(history) + 1}.tmp").mkdir()  # torn: no state.json
    backup = resumed_backup(folder, live_folder)
    assert backup.epoch == len(history) and backup.stopped
    capsys.readouterr()
    model, resumed = fit(settings, backup, live_folder)
    out = capsys.readouterr().out
    assert f"train-head: its training ended at epoch {len(history)} of {settings['epochs']}: restoring it" in out
    assert "Epoch " not in out, "no epoch is trained again"
    pd.testing.assert_frame_equal(resumed, history, check_exact=True)
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(model.variables, reference.variables))
    assert tree(live_folder) == tree(tmp_path / "live_reference")


def test_the_fingerprint_changes_with_a_params_key_or_a_dep_of_the_stage_and_nothing_else():
    shutil.copy(ROOT / "dvc.yaml", "dvc.yaml")
    shutil.copy(ROOT / "params.yaml", "params.yaml")
    for dep in yaml.safe_load(Path("dvc.yaml").read_text())["stages"]["train-head"]["deps"]:
        Path(dep).parent.mkdir(parents=True, exist_ok=True)
        Path(dep).write_bytes(b"x" * 10)

    def fingerprint(replicas: int = 1) -> str:
        return resume.fingerprint("train-head", params.load(), replicas)

    def set_param(section: str, key: str, value) -> None:
        raw = yaml.safe_load(Path("params.yaml").read_text())
        raw[section][key] = value
        Path("params.yaml").write_text(yaml.safe_dump(raw))

    first = fingerprint()
    assert fingerprint() == first and len(first) == 16
    set_param("fine_tune", "lr", 0.5)  # fine-tune's, not train-head's
    assert fingerprint() == first
    assert fingerprint(replicas=2) != first
    Path("data/features/val_features.npy").write_bytes(b"x" * 9 + b"y")  # one byte of an input
    second = fingerprint()
    assert second != first
    set_param("train_head", "lr", 0.5)
    assert fingerprint() not in (first, second)
    Path("dvc.yaml").unlink()  # run from another folder than the project's root
    with pytest.raises(PipelineError, match=r"^cannot read the stage train-head in dvc.yaml \(.*the project's root"):
        fingerprint()
