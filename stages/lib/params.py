"""The typed schema of params.yaml: every key, its type and its allowed range, checked in one place.

Each stage calls `load()` first, so a typo (`fine_tune.lr_rate`), a wrong type or an out-of-range
value stops the run before any work, with one line naming the key and what is allowed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lib import paths
from lib.errors import PipelineError

BASE_NAMES = ("mobilenet_v2", "vgg16")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Data(Section):
    source: str = Field(min_length=1)
    task: Literal["classification", "regression"]
    path_column: str
    target_column: str


class Ingest(Section):
    max_short_side: int = Field(ge=8)
    max_megapixels: float = Field(gt=0)
    workers: int = Field(ge=1)


class Split(Section):
    seed: int = Field(ge=0)
    val: float = Field(gt=0, lt=1)
    test: float = Field(gt=0, lt=1)
    bins: int = Field(ge=2)

    @model_validator(mode="after")
    def leaves_a_training_set(self):
        if self.val + self.test >= 1:
            raise ValueError(f"split.val + split.test = {self.val + self.test:g} leaves no training set; keep it below 1")
        return self


class Normalize(Section):
    image_size: int = Field(ge=32, le=1024)
    resize: Literal["crop", "pad"]


class Augment(Section):
    copies: int = Field(ge=0)
    seed: int = Field(ge=0)
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

    @model_validator(mode="after")
    def weights_exist(self):
        if self.weights not in ("imagenet", "none"):
            if not self.weights.endswith(".weights.h5"):
                raise ValueError(f"base.weights must be imagenet, none or a path to a .weights.h5 file, got {self.weights!r}")
            if not Path(self.weights).is_file():
                raise ValueError(f"base.weights file {self.weights} does not exist")
        return self


class Head(Section):
    pooling: Literal["avg", "flatten"]
    units: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)


class Fit(Section):
    optimizer: Literal["adam", "sgd", "rmsprop"]
    lr: float = Field(gt=0)
    epochs: int = Field(ge=0)
    batch_size: int = Field(ge=1)
    patience: int = Field(ge=0)
    seed: int = Field(ge=0)
    loss: Literal["auto", "mse", "huber"]
    schedule: Literal["constant", "cosine"]


class TrainHead(Fit):
    pass


class FineTune(Fit):
    unfreeze_from: str
    momentum: float = Field(ge=0, lt=1)
    cache_activations: bool


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


def load(path: Path = paths.PARAMS) -> Params:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PipelineError(f"{path}: cannot read params ({exc})") from None
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise PipelineError(f"{path}: {describe(exc)}") from None


def describe(exc: ValidationError) -> str:
    """One line per problem: the dotted key, then what is wrong with it."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key {key} (a typo? see the params table in README.md)")
        elif err["type"] == "missing":
            lines.append(f"missing key {key}")
        else:
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {message} (got {err.get('input')!r})" if key else message)
    return "; ".join(lines)
