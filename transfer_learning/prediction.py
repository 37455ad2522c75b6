"""Predictions of the saved model on new image files (`transfer-learning predict`), prepared exactly as the training
images were.

Each file is decoded and resized by the functions ingest and normalize use (images.decode, images.square), with
the settings of the run that trained the model, which fine-tune stores beside it (models/encoding.json,
`input`). One CSV row per image: its path and the predicted class with its probability, then the next most
likely classes (top_2, top_2_probability, ...), or the predicted value in the target's unit (regression).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from transfer_learning import csv_source, entries, files, images, inference, model_files, settings
from transfer_learning.errors import PipelineError
from transfer_learning.records import Encoding, Preparation

SOME_SKIPPED = 3  # exit status: the CSV is written, but some files were skipped


def predict_files(
    source: Path, output: Path, model_path: Path, encoding_path: Path | None, path_column: str, top_k: int
) -> None:
    """Every image of `source` (a folder, nested folders too, or a CSV listing them) -> one row of `output` each.
    Exit status 0: every image predicted; SOME_SKIPPED: written, some files skipped (listed on stderr)."""
    items, skipped = new_images(source, path_column)
    encoding_path = encoding_path or model_path.parent / "encoding.json"
    to_stdout = str(output) == "-"  # the convention: `-o -` is standard output
    if not to_stdout:
        refuse_an_input(output, [source, model_path, encoding_path, *(item.file for item in items)])
    model = model_runner(model_path)
    encoding = model_card(encoding_path, model, model_path)
    top_k = min(top_k, len(encoding.classes or ()))
    predicted = 0
    with (
        contextlib.nullcontext(None) if to_stdout else files.atomic_path(output) as tmp,
        io.StringIO() if to_stdout else open(tmp, "w", newline="", encoding="utf-8") as out,
        ThreadPoolExecutor(settings.workers()) as pool,
        tqdm(total=len(items), desc="predict", unit="img") as progress,
    ):
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header(encoding, top_k))
        for start in range(0, len(items), inference.BATCH_SIZE):
            batch = items[start : start + inference.BATCH_SIZE]
            ready = []
            for item, (pixels, reason) in zip(batch, pool.map(lambda it: prepare(it, encoding.input), batch)):
                if reason:
                    skipped.append(entries.Skipped(item.path, reason))
                else:
                    ready.append((item.path, pixels))
            if ready:
                outputs = model.predict_on_batch(np.stack([pixels for _, pixels in ready]).astype(np.float32))
                writer.writerows(rows([path for path, _ in ready], np.asarray(outputs), encoding, top_k))
                predicted += len(ready)
            progress.update(len(batch))
        if not predicted:  # nothing is written
            examples = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3])
            raise PipelineError(
                f"{source}: no usable image" + (f" ({len(skipped)} skipped, e.g. {examples})" if skipped else "")
            )
        if to_stdout:  # whole, once every row is known: an error above leaves standard output empty
            sys.stdout.write(out.getvalue())
            sys.stdout.flush()
    for s in sorted(skipped, key=lambda s: s.path):
        print(f"skipped {s.path}: {s.reason}", file=sys.stderr)
    print(
        f"predict: {predicted} images -> {'standard output' if to_stdout else output}"
        + (f"; {len(skipped)} skipped (listed on stderr)" if skipped else ""),
        file=sys.stderr if to_stdout else sys.stdout,
    )
    if skipped:
        sys.exit(SOME_SKIPPED)


def model_runner(path: Path):
    """The model to run, by its kind: a .keras file (Keras, safe_mode), or an export of the export stage: a SavedModel
    folder, a .tflite or an .onnx file (runners in exports.py, with the same input_shape, output_shape,
    predict_on_batch)."""
    if Path(path).suffix.lower() == ".keras" or not Path(path).exists():
        return model_files.load(path)
    from transfer_learning import exports  # the runtimes load only when an export is run

    return exports.runner(Path(path), threads=settings.workers())


def refuse_an_input(output: Path, inputs: list[Path]) -> None:
    """-o may not be (or resolve to, through links) a file predict reads: the CSV listing the images, an image, the
    model or its encoding.json; writing it would replace an input with the predictions."""
    target = Path(output).resolve()
    for source in inputs:
        source = Path(source)
        if source.resolve() == target or (target.exists() and source.exists() and os.path.samefile(source, target)):
            raise PipelineError(
                f"-o {output} is an input of this prediction ({source}): writing it would replace the "
                "input; give another output file (or -o - for standard output)"
            )


def model_card(path: Path, model, model_path: Path) -> Encoding:
    """The model's encoding.json (class order or target unit, and image preparation), validated (records.Encoding) and
    checked against the model: its input size and its number of outputs (classes, or one target)."""
    encoding = Encoding.read(
        path, "use the encoding.json fine-tune wrote beside this model (or give its place with --encoding)"
    )
    if encoding.input is None:
        raise PipelineError(
            f"{path} does not say how images are prepared for the model (its 'input'); "
            "models trained before predict existed lack it: run `dvc repro` to rewrite it"
        )
    size = encoding.input.image_size
    if not isinstance(model.input_shape, tuple) or len(model.input_shape) != 4 or model.input_shape[3] != 3:
        raise PipelineError(
            f"the model {model_path} takes inputs of shape {model.input_shape}, not RGB images "
            f"(height, width, 3) as {path} describes: use the model fine-tune wrote"
        )
    if model.input_shape[1:3] != (size, size):
        raise PipelineError(
            f"{path} is for {size} px images, the model takes {model.input_shape[1]} px: "
            "they come from two runs; use the encoding.json written with this model"
        )
    if encoding.is_classification and len(encoding.classes) < 2:  # split refuses data of one class: never trained
        raise PipelineError(
            f"{path} names one class ({encoding.classes[0]!r}); a model of this project tells two or more "
            "apart: use the encoding.json written with this model"
        )
    outputs = model.output_shape[-1] if len(model.output_shape) == 2 else None
    if outputs != encoding.n_outputs:
        meaning = (
            f"names {encoding.n_outputs} classes" if encoding.is_classification else "is for a regression (one output)"
        )
        has = f"{outputs} outputs" if outputs is not None else f"outputs of shape {model.output_shape[1:]}"
        raise PipelineError(
            f"{path} {meaning}, the model has {has}: they come from two runs; "
            "use the encoding.json written with this model"
        )
    return encoding


def prepare(item: entries.Item, preparation: Preparation) -> tuple[np.ndarray | None, str | None]:
    """An image file -> (the model's input, None), or (None, why it is skipped), as ingest and normalize would."""
    try:
        pixels, _ = images.decode(item.file, preparation.max_short_side, int(preparation.max_megapixels * 1e6))
    except OSError as exc:
        return None, f"cannot read file ({exc.strerror or exc})"
    except images.Unusable as exc:
        return None, str(exc)
    return images.square(pixels, preparation.image_size, preparation.resize), None


def header(encoding: Encoding, top_k: int) -> list[str]:
    if not encoding.is_classification:
        return ["path", "predicted"]
    return ["path", "predicted", "probability"] + [
        f"top_{k}{suffix}" for k in range(2, top_k + 1) for suffix in ("", "_probability")
    ]


def rows(paths: list[str], outputs: np.ndarray, encoding: Encoding, top_k: int) -> list[list[str]]:
    """CSV rows of one batch: the classes by probability (the first is the prediction; ties in class order), or the
    value."""
    paths = [files.spreadsheet_safe(path) for path in paths]  # file and class names: never spreadsheet formulas
    if not encoding.is_classification:
        return [[path, f"{value:.6g}"] for path, value in zip(paths, np.asarray(outputs, dtype=np.float64).reshape(-1))]
    classes = [files.spreadsheet_safe(name) for name in encoding.classes]
    ranked = np.argsort(-outputs, axis=-1, kind="stable")[:, :top_k]
    return [
        [path] + [cell for i in order for cell in (classes[i], f"{probabilities[i]:.6f}")]
        for path, probabilities, order in zip(paths, outputs, ranked)
    ]


def new_images(source: Path, path_column: str) -> tuple[list[entries.Item], list[entries.Skipped]]:
    """Images to predict (transfer-learning predict), without labels: every image file under a folder (nested folders
    included), or those a CSV file lists in `path_column` (relative to the CSV's folder). Unusable entries are
    skipped with the reason, exactly as in data.source."""
    root = Path(source)
    if root.is_file() and root.suffix.lower() == ".csv":
        return csv_source.csv_manifest(root, "classification", path_column, None, path_param="--path-column")
    if not root.is_dir():
        raise PipelineError(
            f"{source} is neither a folder of images nor a .csv file listing them"
            if root.exists()
            else f"{source} does not exist"
        )
    skipped = []
    files = entries.walk(root, root, root.resolve(), skipped)
    items = [entries.Item(path=file.relative_to(root).as_posix(), label=None, file=str(file)) for file in files]
    return sorted(items, key=lambda item: Path(item.path).parts), skipped
