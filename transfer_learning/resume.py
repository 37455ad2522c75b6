"""Resuming an interrupted train-head or fine-tune at its last finished epoch, to the bytes of an uninterrupted run.

Keras' BackupAndRestore keeps a model's weights, its optimizer's variables and the epoch, and nothing else. What else
decides the rest of a run is kept here too: the Dropout layers' seed state (Keras keeps it in a variable that no
.weights.h5 file holds), early stopping's best value, wait count and best weights, which weights SwapEMAWeights has
in the model, the dataset's epoch (batches.Batches orders and blends each epoch by it), the history of the epochs
run (metrics/<stage>.json is computed from it) and dvclive's files as they were at the end of that epoch. Schedules
follow the optimizer's `iterations`, a variable like the others; mixup and the batch order follow the dataset's epoch.

Each backup is a folder .dvc/tmp/resume/<stage>/<fingerprint>/epoch-<n>/, written at the end of epoch n by the last
callback of the fit (after early stopping and dvclive), first as epoch-<n>.tmp, flushed to the disk and then renamed:
a SIGKILL at any moment leaves the backup of epoch n-1, or that of n, never a torn one. .dvc/tmp is DVC's scratch
folder: no stage's output or input, never hashed, ignored by git. The fingerprint covers everything the stage's result
depends on (its command, deps and params keys from dvc.yaml, the bytes of every dep, the params' values, the number
of replicas, the TensorFlow and Keras versions), so a backup is resumed only by a run that would have computed the
same epochs; backups of other fingerprints are deleted when the stage starts, and the stage's backups once it has
written its outputs (`Backup.discard`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import yaml

from transfer_learning import distribute, files, paths
from transfer_learning.batches import Batches
from transfer_learning.errors import OS_HINTS, PipelineError, one_line, os_error

EPOCH_FOLDER = re.compile(r"epoch-(\d+)")


class Backup:
    """The latest backup in `folder` (epoch: how many epochs it has finished, 0 when there is none) and where the
    next ones go. `live`: dvclive's folder of the stage, kept with each backup. Only the chief writes or deletes."""

    def __init__(self, folder: Path, stage: str, live: Path | None = None, chief: bool = True):
        self.folder, self.stage, self.live, self.chief = Path(folder), stage, live, chief
        self.epoch, self.state, self.latest = 0, None, None
        for epoch, candidate in sorted(epoch_folders(self.folder), reverse=True):
            try:
                self.state = files.read_json(candidate / "state.json")
            except (OSError, ValueError) as exc:  # only a disk fault gets here: folders are complete once named
                print(f"{stage}: cannot read the backup {candidate} ({exc}); trying an older one", flush=True)
                continue
            self.epoch, self.latest = epoch, candidate
            break

    @classmethod
    def find(cls, stage: str, p, strategy: tf.distribute.Strategy, live: Path) -> Backup:
        """The backup an interrupted run of `stage` (params `p`) left, under this run's fingerprint; when there is one,
        dvclive's files are put back as they were at its epoch (DVC deleted them before the stage started)."""
        chief = distribute.is_chief(strategy)
        folder = paths.RESUME / stage / fingerprint(stage, p, strategy.num_replicas_in_sync)
        if chief:
            for stale in sorted(folder.parent.glob("*")):
                if stale != folder:
                    print(f"{stage}: deleting the backup {stale}: made with other params, inputs or code", flush=True)
                    shutil.rmtree(stale, ignore_errors=True)
        backup = cls(folder, stage, live, chief)
        found = epochs_found(strategy, backup.epoch)  # every worker asks, whatever it found
        if len(set(found)) > 1:
            print(
                f"{stage}: the workers found backups of epochs {', '.join(map(str, found))} (0: none) in {folder}: "
                "they do not share the chief's project folder; every worker starts at epoch 1",
                flush=True,
            )
            backup.epoch, backup.state, backup.latest = 0, None, None
        if not backup.epoch and chief:
            shutil.rmtree(folder, ignore_errors=True)  # unreadable or not shared: epochs written from now on replace it
        if backup.epoch and chief and live is not None:
            shutil.rmtree(live, ignore_errors=True)
            if (backup.latest / "live").is_dir():
                shutil.copytree(backup.latest / "live", live)
        return backup

    @property
    def stopped(self) -> bool:
        """Whether early stopping ended the run at the backed-up epoch (then nothing is left to train)."""
        return bool(self.state and self.state["stopped"])

    @property
    def history(self) -> list[dict]:
        """The figures of each finished epoch, as Keras logged them."""
        return list(self.state["history"]) if self.state else []

    def callback(self, train: Batches, others: list[keras.callbacks.Callback]) -> keras.callbacks.Callback:
        """The callback that restores this backup when the fit starts and writes one at the end of every epoch. It comes
        after the `others` of the fit: it keeps their state at the end of each epoch (that of early stopping and
        SwapEMAWeights; dvclive's is its files)."""
        return EpochBackup(self, train, others)

    def write(self, epoch: int, state: dict, arrays: dict[str, np.ndarray]) -> None:
        """epoch-<epoch>: written as epoch-<epoch>.tmp, flushed, renamed; then the older backups are deleted."""
        if not self.chief:
            return
        final, tmp = self.folder / f"epoch-{epoch}", self.folder / f"epoch-{epoch}.tmp"
        try:
            shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a killed run
            tmp.mkdir(parents=True)
            with open(tmp / "variables.npz", "wb") as f:
                np.savez(f, **arrays)
            (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
            if self.live is not None and self.live.is_dir():
                shutil.copytree(self.live, tmp / "live")
            for path in sorted(tmp.rglob("*"), reverse=True):  # files, then the folders holding them
                files.to_disk(path)
            files.to_disk(tmp)
            shutil.rmtree(final, ignore_errors=True)  # only there if it could not be read
            os.replace(tmp, final)
            files.to_disk(self.folder)
        except OSError as exc:
            if exc.errno in OS_HINTS:
                raise os_error(exc, final) from None
            raise
        for older, candidate in epoch_folders(self.folder):
            if older < epoch:
                shutil.rmtree(candidate, ignore_errors=True)
        self.epoch, self.state, self.latest = epoch, state, final

    def arrays(self) -> dict[str, np.ndarray]:
        try:
            with np.load(self.latest / "variables.npz", allow_pickle=False) as stored:
                return {name: stored[name] for name in stored.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise PipelineError(
                f"cannot read the backup {self.latest} ({one_line(exc)}); delete {self.folder} and run "
                "`dvc repro` again"
            ) from None

    def discard(self) -> None:
        """Delete the stage's backups: its outputs are written, nothing is left to resume."""
        if self.chief:
            shutil.rmtree(self.folder.parent, ignore_errors=True)


class EpochBackup(keras.callbacks.Callback):
    """Restores a Backup when the fit starts (after the other callbacks reset themselves) and writes one after every
    epoch: the model's and the optimizer's variables (the EMA, `iterations` and the Dropout seeds included), early
    stopping's state, the weights swap, the dataset's epoch, the history and dvclive's files."""

    def __init__(self, backup: Backup, train: Batches, others: list[keras.callbacks.Callback]):
        super().__init__()
        self.backup, self.train = backup, train
        self.stopping = next((c for c in others if isinstance(c, keras.callbacks.EarlyStopping)), None)
        self.averaging = next((c for c in others if isinstance(c, keras.callbacks.SwapEMAWeights)), None)
        self.rows = backup.history

    def on_train_begin(self, logs=None):
        if not self.backup.state:
            return
        state, stored = self.backup.state, self.backup.arrays()
        optimizer = self.model.optimizer
        if not optimizer.built:
            with self.model.distribute_strategy.scope():
                optimizer.build(self.model.trainable_variables)
        for kind, variables in (("model", self.model.variables), ("optimizer", optimizer.variables)):
            if describe(variables) != state[f"{kind}_variables"]:
                raise PipelineError(
                    f"the backup {self.backup.latest} does not fit the {self.model.name} being trained "
                    f"({kind} variables differ); delete {self.backup.folder} and run `dvc repro` again"
                )
            for i, variable in enumerate(variables):
                variable.assign(stored[f"{kind}_{i}"])
        if self.stopping is not None and state["early_stopping"]:
            kept, stopping = state["early_stopping"], self.stopping
            stopping.wait, stopping.best, stopping.best_epoch = kept["wait"], kept["best"], kept["best_epoch"]
            stopping.stopped_epoch = kept["stopped_epoch"]
            stopping.best_weights = [stored[f"best_{i}"] for i in range(kept["best_weights"])] or None
        if self.averaging is not None:
            self.averaging._ema_weights_in_model = state["ema_in_model"]  # noqa: SLF001  its only state
        while self.train.epoch < state["data_epoch"]:  # the dataset's order and mixup of the next epoch
            self.train.on_epoch_end()

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({name: float(value) for name, value in (logs or {}).items()})
        if not self.backup.chief:
            return
        optimizer = self.model.optimizer
        arrays = {f"model_{i}": np.asarray(v.numpy()) for i, v in enumerate(self.model.variables)}
        arrays |= {f"optimizer_{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}
        stopping = None
        if self.stopping is not None:
            best = self.stopping.best_weights or []
            arrays |= {f"best_{i}": np.asarray(w) for i, w in enumerate(best)}
            kept = self.stopping
            stopping = {
                "wait": kept.wait,
                "best": None if kept.best is None else float(kept.best),
                "best_epoch": kept.best_epoch,
                "stopped_epoch": kept.stopped_epoch,
                "best_weights": len(best),
            }
        state = {
            "epoch": epoch + 1,
            "stopped": bool(self.model.stop_training),
            "data_epoch": self.train.epoch,
            "history": self.rows,
            "early_stopping": stopping,
            "ema_in_model": bool(self.averaging and self.averaging._ema_weights_in_model),  # noqa: SLF001
            "model_variables": describe(self.model.variables),
            "optimizer_variables": describe(optimizer.variables),
        }
        self.backup.write(epoch + 1, state, arrays)


def describe(variables) -> list[str]:
    """What the variables restored must be, in order: shape and dtype (their names count up within a process)."""
    return [f"{tuple(v.shape)} {v.dtype}" for v in variables]


def epoch_folders(folder: Path) -> list[tuple[int, Path]]:
    """(epoch, folder) of every complete backup in `folder` (not the .tmp ones)."""
    found = [(EPOCH_FOLDER.fullmatch(path.name), path) for path in folder.glob("epoch-*")] if folder.is_dir() else []
    return [(int(match.group(1)), path) for match, path in found if match and path.is_dir()]


def epochs_found(strategy: tf.distribute.Strategy, epoch: int) -> list[int]:
    """The epoch of the backup each replica's worker found (multi_worker: each reads its own project folder and only the
    chief writes, so they can resume together only when they share it); one process: just `epoch`."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return [epoch]
    found = strategy.experimental_distribute_values_from_function(lambda _: tf.constant([epoch], tf.int64))
    return [int(e) for e in strategy.gather(found, axis=0).numpy()]


def fingerprint(stage: str, p, replicas: int) -> str:
    """A digest of what `stage`'s result depends on: its dvc.yaml entry, its params keys' values (params `p`), the
    bytes of its deps (files, or every file in a folder but DVC's ignored *.tmp), the replicas and the library versions.
    Reads every input once (DVC hashes them too before the stage runs)."""
    try:
        spec = yaml.safe_load(paths.DVC_YAML.read_text(encoding="utf-8"))["stages"][stage]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise PipelineError(
            f"cannot read the stage {stage} in {paths.DVC_YAML} ({one_line(exc)}), which says what its "
            "backups depend on; run the stage from the project's root folder"
        ) from None
    values = p.model_dump(mode="json")
    described = {
        "stage": spec,
        "params": {key: lookup(values, key) for key in spec.get("params", [])},
        "replicas": replicas,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    for dep in spec.get("deps", []):
        dep = Path(re.sub(r"\$\{([\w.]+)\}", lambda m: str(lookup(values, m.group(1))), dep))
        for file in files_of(dep):
            digest.update(f"{file.as_posix()}\0".encode())
            if file.is_file():
                with open(file, "rb") as f:
                    digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]


def files_of(dep: Path) -> list[Path]:
    """A dep's files as DVC hashes them: the file itself, or every file in the folder but the ignored *.tmp."""
    if not dep.is_dir():
        return [dep]
    return sorted(f for f in dep.rglob("*") if f.is_file() and not f.name.endswith(".tmp"))


def lookup(values: dict, dotted: str):
    """params_dict['train_head']['lr'] for 'train_head.lr' (None when a key is missing)."""
    for key in dotted.split("."):
        values = values.get(key) if isinstance(values, dict) else None
    return values
