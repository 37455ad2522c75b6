"""Typed records that travel between stages as JSON files: what the model's outputs mean (`Encoding`, written by
normalize and, with the image preparation, beside the model by fine-tune) and what ingest found in the data
(`DataReport`, metrics/data.json).

Frozen pydantic models with no extra keys: a key that drifts is an error where the file is written or read, not a
silent None (or a dead branch) where a value is looked up. Read back strictly (`model_validate_json` in strict mode):
a tampered file with `"image_size": "24"` or `"max_megapixels": "180"` is refused with one line naming the file and the
key, never coerced. Written with `dump()`, whose key order and values are those of the files before these records
existed, so the committed run's bytes did not change.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from transfer_learning import files
from transfer_learning.errors import PipelineError
from transfer_learning.params import ImageSize, MaxMegapixels, MaxShortSide, Resize

Task = Literal["classification", "regression"]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    def dump(self) -> dict:
        """The record as the JSON file holds it (keys that do not apply to the task left out)."""
        return self.model_dump(mode="json", exclude_none=True)

    def write(self, path: Path) -> None:
        files.write_json(path, self.dump())

    @classmethod
    def read(cls, path: Path, what: str = "rerun the stage that writes it"):
        """The record in a JSON file, validated; a missing, unreadable or invalid file is one PipelineError line."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PipelineError(f"{path} does not exist; {what}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise PipelineError(f"{path} cannot be read ({' '.join(str(exc).split())}); {what}") from None
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise PipelineError(f"{path} is not a valid {cls.__name__} ({problems(exc)}); {what}") from None


def problems(exc: ValidationError, shown: int = 3) -> str:
    """The first few problems of a validation, on one line: `input.image_size: Input should be a valid integer`."""
    found = [
        f"{'.'.join(map(str, err['loc'])) or 'the file'}: {err['msg'].removeprefix('Value error, ')}"
        for err in exc.errors()
    ]
    more = f" and {len(found) - shown} more" if len(found) > shown else ""
    return "; ".join(found[:shown])[:500] + more


class Preparation(Record):
    """How an image file becomes the model's input: the run's ingest and normalize params, for predict."""

    max_short_side: MaxShortSide
    max_megapixels: MaxMegapixels
    image_size: ImageSize
    resize: Resize


class ImageFiles(Record):
    """Where the images are and how a file becomes the model's input (normalize, data/normalized/images.json): the
    manifest's paths are relative to `source` (or to the folder of its CSV, `csv`). Readers decode the files
    (image_sets.ImageSet): no stage stores pixels."""

    source: str
    csv: str
    preparation: Preparation


class Augmentation(Record):
    """The training set's random variants (augment, data/augmented/augment.json): the augment params, which
    augmentation.variant applies with each variant's own seed (seed, image, copy)."""

    copies: int
    seed: int
    horizontal_flip: bool
    rotation: float
    width_shift: float
    height_shift: float
    shear: float
    zoom: float


class Encoding(Record):
    """What the model's outputs mean: the class order (classification), or the training split's mean and std of the
    target (regression: the network learns the standardized target); beside the saved model also `input`, how images
    are prepared for it."""

    task: Task
    classes: tuple[str, ...] | None = None
    mean: float | None = None
    std: float | None = None
    input: Preparation | None = None

    @model_validator(mode="after")
    def fits_the_task(self):
        if self.is_classification:
            if not self.classes or self.mean is not None or self.std is not None:
                raise ValueError("classification needs 'classes' (the class order) and no 'mean' or 'std'")
            if len(set(self.classes)) != len(self.classes):
                raise ValueError("'classes' names a class twice")
        elif (
            self.classes is not None
            or self.mean is None
            or self.std is None
            or not (self.std > 0 and math.isfinite(self.std))
        ):
            raise ValueError("regression needs the target's 'mean' and a positive 'std', and no 'classes'")
        return self

    @property
    def is_classification(self) -> bool:
        return self.task == "classification"

    @property
    def metric(self) -> str:
        """The figure of merit: accuracy (higher is better), or MAE in the target's unit (lower is better)."""
        return "accuracy" if self.is_classification else "mae"

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.is_classification else 1

    def with_input(self, preparation: Preparation) -> Encoding:
        return Encoding(task=self.task, classes=self.classes, mean=self.mean, std=self.std, input=preparation)


class NearDuplicates(Record):
    paths: tuple[str, ...]
    labels: tuple[str, ...] | None = None  # classification: a look-alike may carry another label, for review


class SkippedFile(Record):
    path: str
    reason: str


class DataReport(Record):
    """metrics/data.json: what ingest found. `duplicates` counts images whose decoded pixels equal another's."""

    images: int
    skipped: int
    duplicates: int
    classes: dict[str, int] | None = None  # classification: images per class
    target: dict[str, float] | None = None  # regression: count, mean, std, min, quartiles, max
    duplicates_with_different_targets: int | None = None  # regression: copies measured twice, kept in one split
    near_duplicates: tuple[NearDuplicates, ...]
    subjects: int | None = None  # split.group_column or split.filename_groups: how many subjects the images have
    skipped_files: tuple[SkippedFile, ...]
