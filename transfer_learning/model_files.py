""".keras files: saved byte-reproducibly, loaded without running code from them.
"""
from __future__ import annotations

import io
import json
import tempfile
import zipfile
from pathlib import Path

import keras

from transfer_learning import files
from transfer_learning.errors import PipelineError


def save(model: keras.Model, path: Path) -> None:
    """model.save, made byte-reproducible: no save date in the metadata, fixed zip timestamps."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.keras"
        model.save(raw)
        buffer = io.BytesIO()
        with zipfile.ZipFile(raw) as src, zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in sorted(src.infolist(), key=lambda i: i.filename):
                data = src.read(info.filename)
                if info.filename == "metadata.json":
                    metadata = json.loads(data)
                    metadata.pop("date_saved", None)
                    data = json.dumps(metadata, sort_keys=True).encode()
                elif info.filename == "config.json":
                    data = json.dumps(renumber_shared_objects(json.loads(data))).encode()
                dst.writestr(zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0)), data)
    with files.atomic_path(path) as tmp_path:
        tmp_path.write_bytes(buffer.getvalue())



def renumber_shared_objects(config, ids: dict | None = None):
    """Keras names shared objects (dtype policies) by their Python id(), which changes every run;
    number them 1, 2, ... in order of appearance instead (same sharing, reproducible bytes)."""
    ids = {} if ids is None else ids
    if isinstance(config, dict):
        return {key: ids.setdefault(value, len(ids) + 1) if key == "shared_object_id" else renumber_shared_objects(value, ids)
                for key, value in config.items()}
    if isinstance(config, list):
        return [renumber_shared_objects(value, ids) for value in config]
    return config



def load(path: Path) -> keras.Model:
    """A saved .keras model; safe_mode refuses code hidden in it (Lambda layers)."""
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except (ValueError, TypeError, OSError, KeyError) as exc:
        raise PipelineError(f"cannot load the model {path}: {str(exc).splitlines()[0]}; rerun `dvc repro --force` to rebuild it") from None
