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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from transfer_learning import backbones, paths
from transfer_learning.errors import PipelineError

BASE_NAMES = backbones.NAMES  # every ImageNet family of keras.applications (backbones.py)
SEED_LIMIT = 2**32  # NumPy and TensorFlow seeds are 32-bit: a larger one would crash train-head with a traceback
MIN_FRACTION = 0.001  # least split.val, split.test and training share: each split needs one image per class, so
# smaller fractions would need thousands of images per class (and a long loop to say so)
# the augmented training set is copies + 1 times the normalized one, on disk and in every epoch
MAX_AUGMENT_COPIES = 100
MAX_MIXUP = 10  # mixup's Beta(alpha, alpha): larger alphas all blend about half and half
MAX_FOLDS = 20  # train_head.folds: each fold trains a head


# How an image file becomes the model's input: params of ingest and normalize that the saved model's encoding.json
# repeats for predict (records.Preparation), checked the same way in both places.
MaxShortSide = Annotated[int, Field(ge=8)]
# Pillow's decompression-bomb guard (Image.MAX_IMAGE_PIXELS) is set from this, never disabled:
# larger images are skipped and reported. Decoding needs about 4 bytes per pixel.
MaxMegapixels = Annotated[float, Field(gt=0, le=1000)]
ImageSize = Annotated[int, Field(ge=32, le=1024)]
Resize = Literal["crop", "pad"]


class Section(BaseModel):
    """A section of params.yaml. Each key's docstring is its description, the one place it is written: docs/params.md
    is generated from this schema (python -m transfer_learning.params_doc), and a test keeps the two equal."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, use_attribute_docstrings=True)


class Data(Section):
    source: str = Field(min_length=1)
    """A folder of images, a dependency of ingest: inside the project (`data/raw/<name>`, git- or DVC-tracked) or an
    absolute path; class folders, or the folder of `data.csv`."""
    csv: str
    """Empty: one sub-folder per class. Else a CSV file in `data.source` listing image paths (relative to it) and
    targets."""
    task: Literal["classification", "regression"]
    """`regression` needs a CSV with a numeric target column."""
    path_column: str = Field(min_length=1)
    """CSV only: the column of image paths, relative to the CSV's folder."""
    target_column: str = Field(min_length=1)
    """CSV only: the column of class labels or numeric targets."""

    @model_validator(mode="after")
    def two_columns(self):
        if self.path_column == self.target_column:
            raise ValueError(
                f"data.path_column and data.target_column are both {self.path_column!r}; they must be two columns"
            )
        return self

    @model_validator(mode="after")
    def source_is_a_dataset_folder(self):
        """A relative data.source must stay inside the project: queued experiments (dvc exp run --queue) run in a
        copy of the project under .dvc/tmp/exps, where `../x` is another folder. It may not hold the pipeline's
        outputs."""
        if not Path(self.source).is_absolute() and leaves(self.source):
            raise ValueError(
                f"data.source {self.source} is a relative path outside the project: give its absolute path "
                f"({Path(self.source).resolve()}) or bring the data in with `dvc import-url` or `dvc add` "
                "(docs/data.md); "
                "queued experiments run in a copy of the project, where a relative path outside it points elsewhere"
            )
        source = Path(self.source).resolve()
        for output in paths.OUTPUT_FOLDERS:
            output = output.resolve()
            if source == output or source.is_relative_to(output) or output.is_relative_to(source):
                raise ValueError(
                    f"data.source {self.source} overlaps the pipeline's own outputs "
                    f"({output.relative_to(Path.cwd().resolve())}); "
                    "point it at a folder that holds only your images, e.g. data/raw/<name>"
                )
        if self.csv and (Path(self.csv).is_absolute() or leaves(self.csv) or not self.csv.lower().endswith(".csv")):
            raise ValueError(
                f"data.csv {self.csv!r} must name a .csv file inside data.source (e.g. labels.csv), or be empty for "
                "class folders"
            )
        return self


def leaves(relative: str) -> bool:
    """Whether a relative path goes above its starting folder (`..`, `a/../..`), read as text as DVC does."""
    return os.path.normpath(relative).split(os.sep)[0] == os.pardir


class Ingest(Section):
    max_short_side: MaxShortSide
    """Images are decoded with their shorter side shrunk to at most this many pixels (at least `normalize.image_size`,
    or images would be upscaled)."""
    max_megapixels: MaxMegapixels
    """Images with more pixels are skipped and reported (Pillow's decompression-bomb guard, never disabled); decoding
    needs about 4 bytes per pixel."""


class Split(Section):
    seed: int = Field(ge=0, lt=SEED_LIMIT)
    """Seed of the train/val/test assignment (a picture's split depends on it and on its file's bytes only)."""
    val: float = Field(ge=MIN_FRACTION, lt=1)
    """Fraction of the distinct pictures for validation."""
    test: float = Field(ge=MIN_FRACTION, lt=1)
    """Fraction of the distinct pictures for the test set; train gets the rest."""
    bins: int = Field(ge=2)
    """Regression: quantile bins of the target used to stratify the split."""
    group_column: Annotated[str, Field(min_length=1)] | None
    """CSV only: a column naming each image's subject (a patient, a person, a session); every image of a subject goes
    to one split (and one k-fold fold), with its copies and near-duplicates. `null`: no subjects. Read by ingest
    (changing it reruns ingest); docs/data.md#subjects-grouped-splits."""
    filename_groups: bool
    """The subject of an image is its file name up to the first `_` (`person7_scan2.png` -> `person7`; a name without
    `_` is a subject of its own), for class folders (or a CSV without a subject column); as for `group_column`."""

    @model_validator(mode="after")
    def leaves_a_training_set(self):
        total = self.val + self.test
        if round(total, 12) > 1 - MIN_FRACTION:
            raise ValueError(
                f"split.val + split.test = {total:g} leaves {'no' if total >= 1 else 'almost no'} training set; "
                f"keep it at most {1 - MIN_FRACTION:g}"
            )
        return self


class Normalize(Section):
    image_size: ImageSize
    """Side of the square model input in pixels (224 suits photos)."""
    resize: Resize
    """`crop`: fill the square and center-crop; `pad`: fit inside and pad with black (the aspect is always kept)."""


class Augment(Section):
    copies: int = Field(ge=0, le=MAX_AUGMENT_COPIES)
    """Random variants of each training image, besides the image itself; `0` trains on the images alone."""
    seed: int = Field(ge=0, lt=SEED_LIMIT)
    """Seed of the variants (each variant's randomness comes from (seed, image, copy))."""
    horizontal_flip: bool
    """Mirror half of the variants (off for digits, on for photos)."""
    rotation: float = Field(ge=0, le=180)
    """Rotation range in degrees, ±."""
    width_shift: float = Field(ge=0, lt=1)
    """Horizontal shift range, a fraction of the width, ±."""
    height_shift: float = Field(ge=0, lt=1)
    """Vertical shift range, a fraction of the height, ±."""
    shear: float = Field(ge=0, lt=90)
    """Shear range in degrees, ±."""
    zoom: float = Field(ge=0, lt=1)
    """Zoom factor range: [1 − zoom, 1 + zoom]."""


class Base(Section):
    name: str
    """The pretrained convolutional base, its classifier cut off: any ImageNet family of keras.applications in snake
    case (`mobilenet_v2`, `vgg16`, `resnet50_v2`, `inception_v3`, `efficientnet_v2_b0`, `convnext_tiny`, ...; the
    table, its input sizes and default cuts: docs/backbones.md)."""
    alpha: float = Field(gt=0)
    """Width multiplier of MobileNet, MobileNetV2 and MobileNetV3 (ImageNet weights: MobileNet 0.25, 0.5, 0.75, 1;
    MobileNetV2 0.35, 0.5, 0.75, 1, 1.3, 1.4; MobileNetV3 0.75, 1, minimalistic 1); the other families ignore it."""
    minimalistic: bool
    """MobileNetV3 only: the minimalistic variant (no squeeze-and-excite, hard-swish or 5x5 convolutions)."""
    weights: str
    """`imagenet` (Keras' cache, ~/.keras/models), `none` (random), or `weights/<name>.weights.h5`: your own, in the
    project's `weights/` folder, a dependency of every stage that builds the base."""
    precision: Literal["float32", "bfloat16"]
    """Compute precision of extract-features. `bfloat16` (mixed precision; outputs stored as float32) also computes the
    cached activations in it, so cached fine-tuning no longer trains exactly what end-to-end fine-tuning would;
    whether it is faster depends on the CPU (benchmarks/README.md). oneDNN has no bfloat16 kernels under the project's
    AVX2 cap, so that stage then runs its native ones (AVX512-BF16, AMX): the same bytes run to run, not across CPU
    models (docs/reproducibility.md)."""
    pooling: Literal["avg", "flatten"]
    """How the base's last feature map becomes the features: `avg` (global average pooling) or `flatten`."""
    runtime: Literal["tensorflow", "litert"]
    """What runs extract-features' pass through the frozen base: `tensorflow`, or `litert`: the base converted to a
    float32 TFLite model, run by LiteRT's interpreter with XNNPACK (the pass several times faster on a CPU, the stage,
    which also decodes the images and converts the base, less: benchmarks/README.md). It gives up byte-identity with
    the `tensorflow` runtime (its features and cached activations differ by float rounding, and training amplifies
    that as another seed would) and across CPU kinds (XNNPACK picks kernels per instruction set); run to run on one
    machine they are the same. Computes in float32 (`base.precision: float32`); train-head and fine-tune train in
    TensorFlow whatever it is (TFLite does not train)."""

    @model_validator(mode="after")
    def weights_exist(self):
        family = backbones.get(self.name)  # a ValueError naming the closest bases
        if self.runtime == "litert" and self.precision != "float32":
            raise ValueError(
                f"base.runtime litert computes in float32, not base.precision {self.precision}; "
                "set base.precision: float32 (or base.runtime: tensorflow)"
            )
        if self.minimalistic and not family.minimalistic:
            raise ValueError(
                f"base.minimalistic applies to mobilenet_v3_small and mobilenet_v3_large only, not {self.name}; set "
                "it to false"
            )
        alphas = family.imagenet_alphas(self.minimalistic)
        if alphas is not None and self.weights == "imagenet" and self.alpha not in alphas:
            variant = f"{self.name}{' (minimalistic)' if self.minimalistic else ''}"
            raise ValueError(
                f"base.alpha={self.alpha:g} has no ImageNet weights for {variant}; "
                f"use one of {', '.join(f'{a:g}' for a in alphas)}"
            )
        if self.weights not in ("imagenet", "none"):
            weights = Path(self.weights)
            if (
                not self.weights.endswith(".weights.h5")
                or weights.is_absolute()
                or leaves(self.weights)
                or weights.parts[0] != paths.WEIGHTS.name
            ):
                raise ValueError(
                    f"base.weights must be imagenet, none or a .weights.h5 file in the project's {paths.WEIGHTS}/ "
                    "folder "
                    "(a dependency of every stage that builds the base, so replacing the file reruns them), got "
                    f"{self.weights!r}"
                )
            if not weights.is_file():
                raise ValueError(f"base.weights file {self.weights} does not exist")
        return self


class Head(Section):
    units: int = Field(ge=1)
    """Units of the head's hidden Dense layer (relu)."""
    dropout: float = Field(ge=0, lt=1)
    """Dropout rate after it."""


class Fit(Section):
    optimizer: Literal["adam", "sgd", "rmsprop"]
    """The optimizer."""
    lr: float = Field(gt=0, le=1)
    """Learning rate (the peak of the cosine schedule); above 1 no optimizer here converges."""
    epochs: int = Field(ge=0)
    """Maximum epochs."""
    batch_size: int = Field(ge=1)
    """Batch size (global: split over the replicas of train.strategy)."""
    patience: int = Field(ge=0)
    """Early stopping: epochs without a better validation loss (validation MAE for regression); the best epoch is
    restored; `0` disables it."""
    seed: int = Field(ge=0, lt=SEED_LIMIT)
    """Weight initialization, dropout and the order of the batches."""
    loss: Literal["auto", "mse", "huber", "mae"]
    """`auto`: cross-entropy (classification) or MSE; regression may use `mse`, `huber` or `mae` on the standardized
    target."""
    schedule: Literal["constant", "cosine"]
    """`cosine`: the learning rate decays to 0 over the epochs (fine-tune warms it up over its first epoch);
    `constant`."""
    label_smoothing: float = Field(ge=0, lt=1)
    """Classification: the one-hot targets become 1 − s + s/classes and s/classes; `0` is plain cross-entropy."""
    mixup: float = Field(ge=0, le=MAX_MIXUP)
    """Each training batch's rows are blended in pairs, w · a + (1 − w) · b with w ~ Beta(mixup, mixup), their targets
    alike, a new blend each epoch; `0` is off (0.2 is usual). The Beta draws use the C library's exp and log: on
    another CPU a blend may differ in the last bit."""
    class_weight: Literal["none", "balanced"]
    """Classification: `balanced` weighs each training row's loss by n / (classes · n of its class), counted over the
    rows the model trains on (the augmented training set; each k-fold head, its own), as scikit-learn's
    compute_class_weight: every class weighs as much in the loss as any other, for the recall of the small ones; `none`:
    every row 1. The weights used are in `metrics/train_head.json` and `metrics/fine_tune.json`; the training loss and
    accuracy are weighted, validation's not."""


class TrainHead(Fit):
    folds: int = Field(ge=0, le=MAX_FOLDS)
    """K-fold cross-validation of the head on the stored features of train + val (an image and its variants stay in one
    fold; each fold trains for the single-split head's best epoch), reported under `kfold` in
    metrics/train_head.json; `0` turns it off. It trains k more heads."""

    @model_validator(mode="after")
    def folds_are_several(self):
        if self.folds == 1:
            raise ValueError("train_head.folds=1 holds nothing out; use 0 (off) or 2 or more")
        return self


class FineTune(Fit):
    mixup: float = Field(ge=0, le=MAX_MIXUP)
    """As for train_head; on the cached activations the rows are blended inside the network ("manifold mixup"), end to
    end the images are."""
    unfreeze_from: int | str
    """First base layer to train, by name, or a number N: the first N layers of the base stay frozen, layer N and above
    train (InceptionV3: 249, as the Keras notes write it); `default`: the family's default cut (docs/backbones.md).
    BatchNormalization stays frozen in every family. With cached activations the frozen bottom's output must be one
    tensor (no residual connection may jump over the cut, and something frozen must lie below it): the error lists
    the nearest valid cuts, and `python -m transfer_learning.cuts <base.name> <image size>` lists them all with their
    activation sizes."""
    momentum: float = Field(ge=0, lt=1)
    """SGD momentum."""
    cache_activations: bool
    """`true`: extract-features stores the frozen layers' output once per image and fine-tune trains the top on it;
    `false`: end to end on the images (the same network, data and result; each epoch also runs the frozen bottom)."""
    threads: int = Field(ge=1, le=256)
    """TensorFlow threads of fine-tune. oneDNN sums the convolutions' weight gradients over them, so the model's last
    bits depend on it: the same value gives the same model; raise it on a big machine for speed."""
    tta: Literal["none", "flip"]
    """Test-time augmentation baked into the saved model: `flip` averages its outputs over the image and its mirror
    image (predict and every user of models/model.keras get it; evaluate scores it)."""
    ema: float = Field(ge=0, lt=1)
    """Weight averaging: an exponential moving average of the weights over the steps (Keras' use_ema, e.g. 0.99) is
    validated, restored and saved; `0` is off."""

    @field_validator("unfreeze_from", mode="before")
    @classmethod
    def a_layer_or_a_number(cls, value):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, str))
            or value in ("", 0)
            or (isinstance(value, int) and value < 0)
        ):
            raise ValueError("must be a layer name, 'default', or a number N >= 1 of layers to freeze")
        return value


class Train(Section):
    strategy: Literal["default", "mirrored", "multi_worker"]
    """Where extract-features, train-head and fine-tune run: one device, every local GPU (`mirrored`), or one process
    per machine (`multi_worker`, told the cluster by TF_CONFIG); see docs/scaling.md. Batch sizes are global."""


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

    @model_validator(mode="after")
    def subjects_have_one_source(self):
        if self.split.group_column is not None and not self.data.csv:
            raise ValueError(
                f"split.group_column={self.split.group_column!r} names a column of data.csv, and data.csv is empty "
                "(class folders): use split.filename_groups=true (subjects from the file names) or set it to null"
            )
        if self.split.group_column is not None and self.split.filename_groups:
            raise ValueError(
                "split.group_column and split.filename_groups both name the subjects: set one (the other to null/false)"
            )
        return self

    @model_validator(mode="after")
    def class_weights_are_for_classes(self):
        for key in ("train_head", "fine_tune"):
            if self.data.task == "regression" and getattr(self, key).class_weight != "none":
                raise ValueError(f"{key}.class_weight=balanced weighs classes; a regression has none: set it to none")
        return self

    @model_validator(mode="after")
    def base_takes_the_image_size(self):
        """normalize.image_size against the base's input-size rules (Keras' own check would fail only in
        extract-features)."""
        family, size = backbones.FAMILIES[self.base.name], self.normalize.image_size
        if size < family.min_size:
            raise ValueError(
                f"normalize.image_size={size} is below {family.min_size}, the smallest input {self.base.name} takes; "
                f"raise it to at least {family.min_size}"
            )
        if family.imagenet_sizes and self.base.weights == "imagenet" and size not in family.imagenet_sizes:
            raise ValueError(
                f"normalize.image_size={size}: {self.base.name} with base.weights=imagenet takes only "
                f"{' or '.join(map(str, family.imagenet_sizes))} (the size its weights were made for); "
                "set normalize.image_size to it, or base.weights: none"
            )
        return self


def load(path: Path = paths.PARAMS, overrides: dict | None = None) -> Params:
    """params.yaml (yaml.safe_load: no Python tags) validated against the schema, or a one-line PipelineError.

    overrides: {"section.key": value}, applied as `dvc exp run -S section.key=value` would (`transfer-learning
    check-params`)."""
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"), path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PipelineError(f"{path}: cannot read params ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise PipelineError(
            f"{path}: cannot read params (nested too deeply); params.yaml needs a few levels of sections"
        ) from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected sections {', '.join(Params.model_fields)}, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not isinstance(raw.get(section, {}), dict):
            raise PipelineError(f"-S {dotted}: {path} has no section {section} to set it in")
        raw[section] = {**raw.get(section, {}), key: value}
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise PipelineError(f"{path}: {describe(exc)}") from None


def override(text: str, path: Path = paths.PARAMS) -> tuple[str, object]:
    """`section.key=value` as `dvc exp run -S` reads it (the value is YAML: 0.1 a number, true a boolean) ->
    ("section.key", value)."""
    dotted, equals, value = text.partition("=")
    section, _, key = dotted.partition(".")
    if not equals or not section or not key or "." in key:
        raise PipelineError(f"-S {text}: expected section.key=value, e.g. -S fine_tune.lr=0.0001")
    try:
        return dotted, read_yaml(value, path)
    except (yaml.YAMLError, RecursionError) as exc:
        raise PipelineError(f"-S {text}: the value is not YAML ({' '.join(str(exc).split())})") from None


# The most values params.yaml may hold once its YAML aliases are expanded: the real file holds about a hundred.
# An alias (*name) repeats what an anchor (&name) names; aliases of aliases multiply, so a few KB of nested ones
# (`&a [x, x, x...]`, `&b [*a, *a, *a...]`, ...) stand for billions of values: "billion laughs". PyYAML shares one
# object among the repeats, but anything that walks the values (the schema check, its error message, DVC writing the
# params to dvc.lock) expands them, to gigabytes.
MAX_YAML_VALUES = 10_000


def read_yaml(text: str, path: Path):
    """yaml.safe_load, but the document is composed first (nodes, aliases still shared) and measured before any Python
    object is made: more than MAX_YAML_VALUES values once aliases are expanded, or an alias inside itself, is
    refused."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            expanded_values(node, {}, path)
        return None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def expanded_values(node: yaml.Node, counted: dict, path: Path) -> int:
    """How many values `node` stands for, each alias counted as often as it is used (counted: id -> count, None while
    a node is being counted). A shared node is counted once and its count reused, so the walk is as long as the file."""
    if id(node) in counted:
        if counted[id(node)] is None:
            raise PipelineError(
                f"{path}: a YAML alias (*name) is used inside the value its anchor (&name) names; write the values out"
            )
        return counted[id(node)]
    counted[id(node)] = None
    if isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    else:
        children = node.value if isinstance(node, yaml.SequenceNode) else []
    total = 1 + sum(expanded_values(child, counted, path) for child in children)
    if total > MAX_YAML_VALUES:
        raise PipelineError(
            f"{path}: its YAML aliases (*name) expand to more than {MAX_YAML_VALUES:,} values; "
            "params.yaml needs about a hundred: write the values out instead of nesting aliases"
        )
    counted[id(node)] = total
    return total


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
            # our validators name their keys
            whole_section = err["type"] == "value_error" and isinstance(err.get("input"), dict)
            lines.append(message if whole_section or not key else f"{key}: {message} (got {err.get('input')!r})")
    return " ".join("; ".join(lines).splitlines())


def unknown_key(loc: tuple) -> str:
    """`unknown key fine_tune.lr_rate (did you mean lr?); fine_tune keys: ...`"""
    model, section = Params, loc[:-1]
    for part in section:
        model = model.model_fields[part].annotation
    valid = list(model.model_fields)
    typo = str(loc[-1])
    close = sorted((v for v in valid if typo.startswith(v) or v.startswith(typo)), key=len)[
        -1:
    ] or difflib.get_close_matches(typo, valid, n=1)
    where = ".".join(map(str, section)) or "params.yaml"
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown key {'.'.join(map(str, loc))}{hint}; {where} keys: {', '.join(valid)}"
