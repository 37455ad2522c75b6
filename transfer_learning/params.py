"""The typed schema of params.yaml: every key, its type and its allowed range, checked in one place.

Each stage calls `load()` first, so a typo (`fine_tune.lr_rate`), a wrong type or an out-of-range
value stops the run before any work, with one line naming the key and what is allowed.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from transfer_learning import paths
from transfer_learning.errors import PipelineError

BASE_NAMES = ("mobilenet_v2", "vgg16")
SEED_LIMIT = 2**32         # NumPy and TensorFlow seeds are 32-bit: a larger one would crash train-head with a traceback
MIN_FRACTION = 0.001       # least split.val, split.test and training share: each split needs one image per class, so
                           # smaller fractions would need thousands of images per class (and a long loop to say so)
MAX_AUGMENT_COPIES = 100   # the augmented training set is copies + 1 times the normalized one, on disk and in every epoch
MAX_MIXUP = 10            # mixup's Beta(alpha, alpha): larger alphas all blend about half and half
MAX_FOLDS = 20            # train_head.folds: each fold trains a head
MOBILENET_V2_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)  # the widths Keras has ImageNet weights for


# How an image file becomes the model's input: params of ingest and normalize that the saved model's encoding.json
# repeats for predict (records.Preparation), checked the same way in both places.
MaxShortSide = Annotated[int, Field(ge=8)]
# Pillow's decompression-bomb guard (Image.MAX_IMAGE_PIXELS) is set from this, never disabled:
# larger images are skipped and reported. Decoding needs about 4 bytes per pixel.
MaxMegapixels = Annotated[float, Field(gt=0, le=1000)]
ImageSize = Annotated[int, Field(ge=32, le=1024)]
Resize = Literal["crop", "pad"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Data(Section):
    source: str = Field(min_length=1)
    csv: str
    task: Literal["classification", "regression"]
    path_column: str = Field(min_length=1)
    target_column: str = Field(min_length=1)

    @model_validator(mode="after")
    def two_columns(self):
        if self.path_column == self.target_column:
            raise ValueError(f"data.path_column and data.target_column are both {self.path_column!r}; they must be two columns")
        return self

    @model_validator(mode="after")
    def source_is_a_dataset_folder(self):
        """A relative data.source must stay inside the project: queued experiments (dvc exp run --queue) run in a
        copy of the project under .dvc/tmp/exps, where `../x` is another folder. It may not hold the pipeline's outputs."""
        if not Path(self.source).is_absolute() and leaves(self.source):
            raise ValueError(f"data.source {self.source} is a relative path outside the project: give its absolute path "
                             f"({Path(self.source).resolve()}) or bring the data in with `dvc import-url` or `dvc add` (docs/data.md); "
                             "queued experiments run in a copy of the project, where a relative path outside it points elsewhere")
        source = Path(self.source).resolve()
        for output in paths.OUTPUT_FOLDERS:
            output = output.resolve()
            if source == output or source.is_relative_to(output) or output.is_relative_to(source):
                raise ValueError(f"data.source {self.source} overlaps the pipeline's own outputs ({output.relative_to(Path.cwd().resolve())}); "
                                 "point it at a folder that holds only your images, e.g. data/raw/<name>")
        if self.csv and (Path(self.csv).is_absolute() or leaves(self.csv) or not self.csv.lower().endswith(".csv")):
            raise ValueError(f"data.csv {self.csv!r} must name a .csv file inside data.source (e.g. labels.csv), or be empty for class folders")
        return self


def leaves(relative: str) -> bool:
    """Whether a relative path goes above its starting folder (`..`, `a/../..`), read as text as DVC does."""
    return os.path.normpath(relative).split(os.sep)[0] == os.pardir


class Ingest(Section):
    max_short_side: MaxShortSide
    max_megapixels: MaxMegapixels


class Split(Section):
    seed: int = Field(ge=0, lt=SEED_LIMIT)
    val: float = Field(ge=MIN_FRACTION, lt=1)
    test: float = Field(ge=MIN_FRACTION, lt=1)
    bins: int = Field(ge=2)

    @model_validator(mode="after")
    def leaves_a_training_set(self):
        total = self.val + self.test
        if round(total, 12) > 1 - MIN_FRACTION:
            raise ValueError(f"split.val + split.test = {total:g} leaves {'no' if total >= 1 else 'almost no'} training set; "
                             f"keep it at most {1 - MIN_FRACTION:g}")
        return self


class Normalize(Section):
    image_size: ImageSize
    resize: Resize


class Augment(Section):
    copies: int = Field(ge=0, le=MAX_AUGMENT_COPIES)
    seed: int = Field(ge=0, lt=SEED_LIMIT)
    horizontal_flip: bool
    rotation: float = Field(ge=0, le=180)
    width_shift: float = Field(ge=0, lt=1)
    height_shift: float = Field(ge=0, lt=1)
    shear: float = Field(ge=0, lt=90)
    zoom: float = Field(ge=0, lt=1)


class Base(Section):
    name: Literal[BASE_NAMES]
    alpha: float = Field(gt=0)
    weights: str
    precision: Literal["float32", "bfloat16"]
    pooling: Literal["avg", "flatten"]

    @model_validator(mode="after")
    def weights_exist(self):
        if self.name == "mobilenet_v2" and self.weights == "imagenet" and self.alpha not in MOBILENET_V2_ALPHAS:
            raise ValueError(f"base.alpha={self.alpha:g} has no ImageNet weights for mobilenet_v2; "
                             f"use one of {', '.join(f'{a:g}' for a in MOBILENET_V2_ALPHAS)}")
        if self.weights not in ("imagenet", "none"):
            weights = Path(self.weights)
            if not self.weights.endswith(".weights.h5") or weights.is_absolute() or leaves(self.weights) or weights.parts[0] != paths.WEIGHTS.name:
                raise ValueError(f"base.weights must be imagenet, none or a .weights.h5 file in the project's {paths.WEIGHTS}/ folder "
                                 f"(a dependency of every stage that builds the base, so replacing the file reruns them), got {self.weights!r}")
            if not weights.is_file():
                raise ValueError(f"base.weights file {self.weights} does not exist")
        return self


class Head(Section):
    units: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)


class Fit(Section):
    optimizer: Literal["adam", "sgd", "rmsprop"]
    lr: float = Field(gt=0)
    epochs: int = Field(ge=0)
    batch_size: int = Field(ge=1)
    patience: int = Field(ge=0)
    seed: int = Field(ge=0, lt=SEED_LIMIT)
    loss: Literal["auto", "mse", "huber", "mae"]
    schedule: Literal["constant", "cosine"]
    # classification: the one-hot targets become (1 - s) + s / classes and s / classes (0: off); ignored for regression
    label_smoothing: float = Field(ge=0, lt=1)
    # mixup: every training batch's rows are blended in pairs, targets alike, with weights ~ Beta(mixup, mixup) (0: off)
    mixup: float = Field(ge=0, le=MAX_MIXUP)


class TrainHead(Fit):
    # k-fold cross-validation of the head on the stored features of train + val (transfer_learning/crossval.py): 0 = off
    folds: int = Field(ge=0, le=MAX_FOLDS)

    @model_validator(mode="after")
    def folds_are_several(self):
        if self.folds == 1:
            raise ValueError("train_head.folds=1 holds nothing out; use 0 (off) or 2 or more")
        return self


class FineTune(Fit):
    unfreeze_from: str
    momentum: float = Field(ge=0, lt=1)
    cache_activations: bool
    # TensorFlow threads per op: the convolutions' weight gradients are summed over them, so the
    # last bits of the model depend on it (a param, not a setting); the same value on any CPU gives the same model.
    threads: int = Field(ge=1, le=256)
    # test-time augmentation baked into the saved model: flip averages its outputs over the image and its mirror image
    tta: Literal["none", "flip"]
    # weight averaging: the model kept is an exponential moving average of the weights over the steps (0: off)
    ema: float = Field(ge=0, lt=1)


class Train(Section):
    # Where the models of extract-features, train-head and fine-tune run
    # (transfer_learning/distribute.py); batch sizes are global whatever the strategy.
    strategy: Literal["default", "mirrored", "multi_worker"]


class Params(Section):
    data: Data
    ingest: Ingest
    split: Split
    normalize: Normalize
    augment: Augment
    base: Base
    head: Head
    train_head: TrainHead
    fine_tune: FineTune
    train: Train


def load(path: Path = paths.PARAMS) -> Params:
    """params.yaml (yaml.safe_load: no Python tags) validated against the schema, or a one-line PipelineError."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PipelineError(f"{path}: cannot read params ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected sections {', '.join(Params.model_fields)}, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise PipelineError(f"{path}: {describe(exc)}") from None


def describe(exc: ValidationError) -> str:
    """One clause per problem, on one line: the dotted key, then what is wrong and what is allowed."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(unknown_key(err["loc"]))
        elif err["type"] == "missing":
            lines.append(f"missing key {key}")
        else:
            message = err["msg"].removeprefix("Value error, ")
            whole_section = err["type"] == "value_error" and isinstance(err.get("input"), dict)  # our validators name their keys
            lines.append(message if whole_section or not key else f"{key}: {message} (got {err.get('input')!r})")
    return " ".join("; ".join(lines).splitlines())


def unknown_key(loc: tuple) -> str:
    """`unknown key fine_tune.lr_rate (did you mean lr?); fine_tune keys: ...`"""
    model, section = Params, loc[:-1]
    for part in section:
        model = model.model_fields[part].annotation
    valid = list(model.model_fields)
    typo = str(loc[-1])
    close = sorted((v for v in valid if typo.startswith(v) or v.startswith(typo)), key=len)[-1:] or difflib.get_close_matches(typo, valid, n=1)
    where = ".".join(map(str, section)) or "params.yaml"
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown key {'.'.join(map(str, loc))}{hint}; {where} keys: {', '.join(valid)}"
