"""Bad params.yaml: rejected by the typed schema (transfer_learning/params.py) before any work, with one line
naming the key and what is allowed."""

from __future__ import annotations

import functools
import re
import time

import numpy as np
import pytest
import yaml

from support.projects import DELETE, ROOT, run_stage, stage_project, write_params
from transfer_learning import params
from transfer_learning.errors import PipelineError

weights = ROOT / "tests" / "does-not-exist.weights.h5"

CASES = [
    # unknown keys: the typo, a suggestion, and every valid key of the section
    (
        {"fine_tune.lr_rate": 0.1},
        "unknown key fine_tune.lr_rate (did you mean lr?); fine_tune keys: optimizer, lr, epochs, ",
    ),
    ({"augment.horizontal_flipp": True}, "unknown key augment.horizontal_flipp (did you mean horizontal_flip?)"),
    ({"data.labels": "x.csv"}, "unknown key data.labels; data keys: source, csv, task, path_column, target_column"),
    (
        {"extras.x": 1},
        "unknown key extras; params.yaml keys: data, ingest, split, normalize, augment, base, head, train_head, "
        "fine_tune, train",
    ),
    ({"train_head.epochs": DELETE}, "missing key train_head.epochs"),
    # wrong types
    (
        {"train_head.epochs": "ten"},
        "train_head.epochs: Input should be a valid integer, unable to parse string as an integer (got 'ten')",
    ),
    (
        {"fine_tune.batch_size": 2.5},
        "fine_tune.batch_size: Input should be a valid integer, got a number with a fractional part (got 2.5)",
    ),
    ({"augment.horizontal_flip": "sometimes"}, "augment.horizontal_flip: Input should be a valid boolean"),
    ({"train_head.lr": [0.1]}, "train_head.lr: Input should be a valid number (got [0.1])"),
    ({"train_head.lr": float("inf")}, "train_head.lr: Input should be a finite number (got inf)"),
    ({"head.dropout": float("nan")}, "head.dropout: Input should be a finite number"),
    # out of range
    ({"train_head.epochs": -1}, "train_head.epochs: Input should be greater than or equal to 0 (got -1)"),
    ({"fine_tune.epochs": -3}, "fine_tune.epochs: Input should be greater than or equal to 0 (got -3)"),
    ({"fine_tune.lr": 0}, "fine_tune.lr: Input should be greater than 0 (got 0)"),
    ({"head.dropout": 1.0}, "head.dropout: Input should be less than 1 (got 1.0)"),
    ({"split.val": 0}, "split.val: Input should be greater than or equal to 0.001 (got 0)"),
    ({"split.test": 1.5}, "split.test: Input should be less than 1 (got 1.5)"),
    ({"split.val": -0.1}, "split.val: Input should be greater than or equal to 0.001 (got -0.1)"),
    ({"split.val": 0.5, "split.test": 0.5}, "split.val + split.test = 1 leaves no training set; keep it at most 0.999"),
    # valid types and signs that would hang or crash a stage later
    ({"split.val": 1e-9}, "split.val: Input should be greater than or equal to 0.001 (got 1e-09)"),  # a 1e10-step loop
    (
        {"split.val": 0.5, "split.test": 0.4999999},
        "split.val + split.test = 1 leaves almost no training set; keep it at most 0.999",
    ),
    # NumPy seeds are 32-bit
    ({"split.seed": 2**32}, "split.seed: Input should be less than 4294967296 (got 4294967296)"),
    ({"augment.seed": 2**40}, "augment.seed: Input should be less than 4294967296"),
    ({"train_head.seed": 2**32}, "train_head.seed: Input should be less than 4294967296"),
    ({"fine_tune.seed": 2**63}, "fine_tune.seed: Input should be less than 4294967296"),
    ({"augment.copies": 1000}, "augment.copies: Input should be less than or equal to 100 (got 1000)"),
    ({"normalize.image_size": 16}, "normalize.image_size: Input should be greater than or equal to 32 (got 16)"),
    ({"ingest.max_megapixels": 0}, "ingest.max_megapixels: Input should be greater than 0 (got 0)"),
    ({"ingest.max_megapixels": 5000}, "ingest.max_megapixels: Input should be less than or equal to 1000 (got 5000)"),
    ({"ingest.workers": 4}, "unknown key ingest.workers; ingest keys: max_short_side, max_megapixels"),
    # allowed values
    (
        {"base.name": "resnet"},
        "base.name 'resnet' is not a keras.applications base; did you mean resnet50 or resnet101 or resnet152? "
        "the bases: vgg16, vgg19, xception, inception_v3,",
    ),
    ({"base.name": "ResNet50V2"}, "base.name 'ResNet50V2' is not a keras.applications base; did you mean"),
    (
        {"base.name": "inception_v3", "normalize.image_size": 64},
        "normalize.image_size=64 is below 75, the smallest input inception_v3 takes; raise it to at least 75",
    ),
    (
        {"base.name": "xception", "normalize.image_size": 70},
        "normalize.image_size=70 is below 71, the smallest input xception takes",
    ),
    (
        {"base.name": "nasnet_mobile", "normalize.image_size": 96},
        "normalize.image_size=96: nasnet_mobile with base.weights=imagenet "
        "takes only 224 (the size its weights were made for); set "
        "normalize.image_size to it, or base.weights: none",
    ),
    (
        {"base.name": "nasnet_large", "normalize.image_size": 224},
        "normalize.image_size=224: nasnet_large with base.weights=imagenet takes only 331",
    ),
    (
        {"base.name": "mobilenet", "base.alpha": 0.35},
        "base.alpha=0.35 has no ImageNet weights for mobilenet; use one of 0.25, 0.5, 0.75, 1",
    ),
    (
        {"base.name": "mobilenet_v3_small", "base.alpha": 0.75, "base.minimalistic": True},
        "base.alpha=0.75 has no ImageNet weights for mobilenet_v3_small (minimalistic); use one of 1",
    ),
    (
        {"base.name": "resnet50", "base.minimalistic": True},
        "base.minimalistic applies to mobilenet_v3_small and mobilenet_v3_large only, not resnet50; set it to false",
    ),
    (
        {"fine_tune.unfreeze_from": 0},
        "fine_tune.unfreeze_from: must be a layer name, 'default', or a number N >= 1 of layers to freeze (got 0)",
    ),
    (
        {"fine_tune.unfreeze_from": True},
        "fine_tune.unfreeze_from: must be a layer name, 'default', or a number N >= 1 of layers to freeze",
    ),
    (
        {"fine_tune.unfreeze_from": 1.5},
        "fine_tune.unfreeze_from: must be a layer name, 'default', or a number N >= 1 of layers to freeze",
    ),
    ({"data.task": "ranking"}, "data.task: Input should be 'classification' or 'regression' (got 'ranking')"),
    ({"normalize.resize": "stretch"}, "normalize.resize: Input should be 'crop' or 'pad' (got 'stretch')"),
    ({"fine_tune.optimizer": "adamw"}, "fine_tune.optimizer: Input should be 'adam', 'sgd' or 'rmsprop' (got 'adamw')"),
    ({"train_head.folds": 1}, "train_head.folds=1 holds nothing out; use 0 (off) or 2 or more"),
    ({"train_head.folds": 50}, "train_head.folds: Input should be less than or equal to 20 (got 50)"),
    ({"fine_tune.label_smoothing": 1.0}, "fine_tune.label_smoothing: Input should be less than 1 (got 1.0)"),
    (
        {"train_head.label_smoothing": -0.1},
        "train_head.label_smoothing: Input should be greater than or equal to 0 (got -0.1)",
    ),
    ({"fine_tune.tta": "five-crop"}, "fine_tune.tta: Input should be 'none' or 'flip' (got 'five-crop')"),
    ({"train_head.loss": "l1"}, "train_head.loss: Input should be 'auto', 'mse', 'huber' or 'mae' (got 'l1')"),
    (
        {"train.strategy": "horovod"},
        "train.strategy: Input should be 'default', 'mirrored' or 'multi_worker' (got 'horovod')",
    ),
    (
        {"base.alpha": 0.6},
        "base.alpha=0.6 has no ImageNet weights for mobilenet_v2; use one of 0.35, 0.5, 0.75, 1, 1.3, 1.4",
    ),
    ({"base.weights": "weights/missing.weights.h5"}, "base.weights file weights/missing.weights.h5 does not exist"),
    ({"base.runtime": "onnx"}, "base.runtime: Input should be 'tensorflow' or 'litert' (got 'onnx')"),
    (
        {"base.runtime": "litert", "base.precision": "bfloat16"},
        "base.runtime litert computes in float32, not base.precision bfloat16; set base.precision: float32 "
        "(or base.runtime: tensorflow)",
    ),
    (
        {"base.weights": "weights.bin"},
        "base.weights must be imagenet, none or a .weights.h5 file in the project's weights/ folder "
        "(a dependency of every stage that builds the base, so replacing the file reruns them), got 'weights.bin'",
    ),
    (
        {"base.weights": str(weights)},
        "base.weights must be imagenet, none or a .weights.h5 file in the project's weights/ folder",
    ),
    (
        {"base.weights": "../x.weights.h5"},
        "base.weights must be imagenet, none or a .weights.h5 file in the project's weights/ folder",
    ),
    ({"data.source": ""}, "data.source: String should have at least 1 character"),
    (
        {"data.source": "../shared/datasets/flowers17"},
        "data.source ../shared/datasets/flowers17 is a relative path outside the project: give its absolute path (",
    ),
    ({"data.source": "data/raw/../../.."}, "data.source data/raw/../../.. is a relative path outside the project"),
    (
        {"data.source": "."},
        "data.source . overlaps the pipeline's own outputs (data/ingested); point it at a folder that holds only "
        "your images, e.g. data/raw/<name>",
    ),
    ({"data.source": "data"}, "data.source data overlaps the pipeline's own outputs (data/ingested)"),
    ({"data.source": "metrics/x"}, "data.source metrics/x overlaps the pipeline's own outputs (metrics)"),
    (
        {"data.csv": "../labels.csv"},
        "data.csv '../labels.csv' must name a .csv file inside data.source (e.g. labels.csv), "
        "or be empty for class folders",
    ),
    ({"data.csv": "labels.txt"}, "data.csv 'labels.txt' must name a .csv file inside data.source"),
    (
        {"data.target_column": "image"},
        "data.path_column and data.target_column are both 'image'; they must be two columns",
    ),
]


def test_the_committed_params_are_valid():
    p = params.load(ROOT / "params.yaml")
    assert p.data.source == "data/raw/digits" and p.data.csv == "" and p.base.name == "mobilenet_v2"


def test_other_bases_and_numeric_cuts_load(tmp_path):
    """Any family (the default alpha 0.35 is ignored where there is no width multiplier), at its smallest size; a cut by
    number stays a number, a name a name."""
    p = params.load(
        write_params(
            tmp_path, {"base.name": "inception_v3", "normalize.image_size": 75, "fine_tune.unfreeze_from": 249}
        )
    )
    assert p.fine_tune.unfreeze_from == 249 and isinstance(p.fine_tune.unfreeze_from, int)
    p = params.load(
        write_params(
            tmp_path, {"base.name": "nasnet_mobile", "base.weights": "none", "fine_tune.unfreeze_from": "default"}
        )
    )
    assert p.fine_tune.unfreeze_from == "default"
    p = params.load(
        write_params(tmp_path, {"base.name": "mobilenet_v3_large", "base.alpha": 1.0, "base.minimalistic": True})
    )
    assert p.base.minimalistic


@pytest.mark.parametrize(
    "change, message", [case for case in CASES if case[1]], ids=lambda v: "" if isinstance(v, str) else str(v)
)
def test_bad_params_are_rejected_with_one_line_naming_the_key(tmp_path, change, message):
    with pytest.raises(PipelineError) as info:
        params.load(write_params(tmp_path, change))
    text = str(info.value)
    assert text.startswith(f"{tmp_path / 'params.yaml'}: {message}"), text
    assert "\n" not in text


def test_several_problems_are_all_named_on_one_line(tmp_path):
    with pytest.raises(PipelineError) as info:
        params.load(write_params(tmp_path, {"train_head.epochs": -1, "fine_tune.lr_rate": 1, "base.name": "resnet"}))
    text = str(info.value)
    assert "\n" not in text and all(key in text for key in ("train_head.epochs", "fine_tune.lr_rate", "base.name"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("data: [unclosed\n  - x\n", "cannot read params (while parsing a flow sequence"),
        (
            "- just\n- a list\n",
            "expected sections data, ingest, split, normalize, augment, base, head, train_head, fine_tune, train, "
            "got list",
        ),
        ("", "expected sections data, ingest"),
        ("data:\n  source: a\n\tbad: tab\n", "cannot read params ("),
    ],
)
def test_unreadable_params_yaml_is_one_line(tmp_path, text, message):
    with pytest.raises(PipelineError) as info:
        params.load(write_params(tmp_path, text=text))
    assert str(info.value).startswith(f"{tmp_path / 'params.yaml'}: {message}") and "\n" not in str(info.value)


def test_a_stage_stops_on_bad_params_before_any_work(tmp_path):
    project = stage_project(tmp_path, {"fine_tune.lr_rate": 0.1, "data.source": str(tmp_path / "nowhere")})
    for stage in ("ingest", "augment"):
        result = run_stage(project, stage)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip() == (
            "error: params.yaml: unknown key fine_tune.lr_rate (did you mean lr?); fine_tune keys: "
            "optimizer, lr, epochs, batch_size, patience, seed, loss, schedule, label_smoothing, mixup, class_weight, "
            "unfreeze_from, "
            "momentum, cache_activations, threads, tta, ema"
        )
    assert sorted(p.name for p in project.iterdir()) == ["params.yaml", "stages", "transfer_learning"], (
        "nothing was written"
    )


def test_seeds_at_the_limit_work_where_they_are_used():
    """The largest seed the schema accepts is one NumPy (and so Keras) accepts: the bound is the real one."""

    np.random.seed(params.SEED_LIMIT - 1)
    with pytest.raises(ValueError):
        np.random.seed(params.SEED_LIMIT)


def test_normalize_refuses_an_image_size_above_the_snapshot_before_reading_anything(tmp_path):
    """ingest.max_short_side=64 and normalize.image_size=128: every photo would be upscaled from a 64-pixel snapshot."""
    project = stage_project(tmp_path, {"ingest.max_short_side": 64, "normalize.image_size": 128})
    result = run_stage(project, "normalize")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == (
        "error: normalize.image_size=128 is above ingest.max_short_side=64, so images would be upscaled "
        "from a shrunk decode: raise ingest.max_short_side to at least 128 (it reruns ingest)"
    )


def test_unfreeze_from_not_a_layer_lists_the_valid_names():
    """Checked when the base is built (it needs TensorFlow to know the layer names), before any training."""
    keras = pytest.importorskip("keras")
    from transfer_learning import networks

    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None, alpha=0.35)
    with pytest.raises(PipelineError) as info:
        networks.unfreeze_from(base, "block_10_expnd")
    text = str(info.value)
    assert re.match(
        r"fine_tune.unfreeze_from 'block_10_expnd' is not a layer of mobilenetv2_0.35_32; for example: "
        r".*block_10_expand",
        text,
    )
    assert "block_16_expand" in text and "Conv_1" in text and "\n" not in text
    assert networks.unfreeze_from(base, "block_16_expand") > 0


@pytest.mark.parametrize(
    "layer, why",
    [
        ("input_layer", "is the input layer of the base, with nothing below it to cache"),
        (
            "block_2_add",
            "takes 2 inputs (it joins the branches of a residual connection), so what enters it is not one activation",
        ),
    ],
)
def test_unfreeze_from_a_layer_without_one_input_is_one_line_with_cached_activations(layer, why):
    """The cached-activations path cuts the base at the input of unfreeze_from: the input layer has none and an Add
    has two (a traceback from Keras before, in extract-features and fine-tune)."""
    keras = pytest.importorskip("keras")
    from transfer_learning import networks

    base = keras.applications.MobileNetV2(input_shape=(None, None, 3), include_top=False, weights=None, alpha=0.35)
    # input_layer_1, ... when Keras built a model before
    layer = base.layers[0].name if layer == "input_layer" else layer
    with pytest.raises(PipelineError) as info:
        networks.feature_extractor(base, "mobilenet_v2", 32, "avg", layer)
    text = str(info.value)
    assert (
        text.startswith(f"fine_tune.unfreeze_from {layer!r} {why}; the nearest cuts that can be cached: ")
        and "\n" not in text
    ), text
    assert text.endswith(
        "(all: python -m transfer_learning.cuts <base.name> <image size>; or set fine_tune.cache_activations: false)"
    )
    valid = re.findall(r"(\d+) \((\w+)\)", text.split("can be cached: ")[1])
    assert len(valid) >= 3 and not [
        name for _, name in valid if name.endswith("_add") or name.startswith("input_layer")
    ], valid
    assert all(base.layers[int(number)].name == name for number, name in valid), "each cut by its number and its name"
    with pytest.raises(PipelineError, match=f"^fine_tune.unfreeze_from {layer!r} {re.escape(why)}"):
        networks.top_model(base, layer, (4, 4, 8), "avg", keras.Sequential([keras.layers.Dense(2)]))


@pytest.mark.parametrize("base_name, layer", [("vgg16", "block1_conv1"), ("mobilenet_v2", "Conv1")])
def test_unfreeze_from_the_first_layer_with_cached_activations_says_nothing_lies_below_it(base_name, layer):
    """The first layer after the input: nothing below it to cache (it said "a residual connection jumps over this
    layer", and VGG16 has none)."""
    keras = pytest.importorskip("keras")
    from transfer_learning import networks

    build = (
        keras.applications.VGG16
        if base_name == "vgg16"
        else functools.partial(keras.applications.MobileNetV2, alpha=0.35)
    )
    base = build(input_shape=(32, 32, 3), include_top=False, weights=None)
    with pytest.raises(PipelineError) as info:
        networks.feature_extractor(base, base_name, 32, "avg", layer)
    text = str(info.value)
    assert text.startswith(
        f"fine_tune.unfreeze_from {layer!r} is the first layer of the base: nothing lies below it, so there "
        "is nothing to cache or keep frozen (every layer would train); the nearest cuts that can be cached: "
    ), text
    assert "residual" not in text and text.endswith("or set fine_tune.cache_activations: false)") and "\n" not in text
    valid = text.split("the nearest cuts that can be cached: ")[1].split(" (all:")[0]
    assert (
        "block1_conv2" if base_name == "vgg16" else "expanded_conv_depthwise"
    ) in valid and f"({layer})" not in valid


def test_params_yaml_with_python_tags_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    evil = f"data: !!python/object/apply:builtins.open [{str(marker)!r}, w]\n"
    yaml.unsafe_load(evil)
    assert marker.exists(), "the payload is real"
    marker.unlink()
    (tmp_path / "params.yaml").write_text(evil)
    with pytest.raises(
        PipelineError, match="params.yaml: cannot read params .*could not determine a constructor for the tag"
    ):
        params.load(tmp_path / "params.yaml")
    assert not marker.exists()


def billion_laughs(levels: int = 10, aliases: int = 10) -> str:
    """The committed params.yaml with data.target_column set to nested aliases: each level lists the one below
    `aliases` times, so the value stands for aliases**levels strings (10**10 here) in a few KB."""
    lines = [f"    - &laughing_out_loud_level_0 [{', '.join(['lol_lol_lol_lol_lol_lol'] * aliases)}]"]
    lines += [
        f"    - &laughing_out_loud_level_{i} [{', '.join([f'*laughing_out_loud_level_{i - 1}'] * aliases)}]"
        for i in range(1, levels)
    ]
    text = (
        (ROOT / "params.yaml")
        .read_text()
        .replace("  target_column: label\n", "  target_column:\n" + "\n".join(lines) + "\n")
    )
    assert "laughing_out_loud_level_9" in text
    return text


def test_params_yaml_with_nested_aliases_is_refused_fast_in_one_short_line(tmp_path):
    """The real input: 4.5 KB whose aliases stand for 10**10 values. Refused before any value is built, in well under a
    second, in one line (it produced a 72 MB error line and 253 MB of memory). A small alias still works."""
    text = billion_laughs()
    assert 4000 < len(text.encode()) < 5000
    start = time.monotonic()
    with pytest.raises(PipelineError) as info:
        params.load(write_params(tmp_path, text=text))
    assert time.monotonic() - start < 2
    assert str(info.value) == (
        f"{tmp_path / 'params.yaml'}: its YAML aliases (*name) expand to more than 10,000 values; "
        "params.yaml needs about a hundred: write the values out instead of nesting aliases"
    )
    recursive = (ROOT / "params.yaml").read_text().replace("  target_column: label\n", "  target_column: &me [*me]\n")
    with pytest.raises(PipelineError, match="params.yaml: a YAML alias .*name. is used inside the value its anchor"):
        params.load(write_params(tmp_path, text=recursive))
    shared = (
        (ROOT / "params.yaml").read_text().replace("seed: 0", "seed: *seed").replace("seed: *seed", "seed: &seed 0", 1)
    )
    assert shared.count("*seed") == 3 and params.load(write_params(tmp_path, text=shared)).fine_tune.seed == 0


def test_a_stage_given_nested_aliases_prints_one_short_line(tmp_path):
    """The same file through a real stage: one line, quickly, nothing written."""
    project = stage_project(tmp_path, {})
    (project / "params.yaml").write_text(billion_laughs())
    result = run_stage(project, "ingest")
    assert result.returncode == 1 and result.stdout == "" and len(result.stderr) < 300, result.stderr[:3000]
    assert result.stderr.startswith("error: params.yaml: its YAML aliases (*name) expand to more than 10,000 values")


def test_an_error_line_is_at_most_2000_characters(capsys):
    """Whatever a message quotes (a huge param value), the line printed stays short; it keeps its start."""
    from transfer_learning import errors

    def main():
        raise PipelineError(
            "params.yaml: data.target_column: Input should be a valid string (got " + "['lol', " * 10**6 + ")"
        )

    with pytest.raises(SystemExit):
        errors.run(main)
    err = capsys.readouterr().err
    assert err.startswith("error: params.yaml: data.target_column: Input should be") and err.endswith("…\n")
    assert len(err) == len("error: ") + errors.MAX_MESSAGE + 1


def test_check_params_applies_overrides_as_dvc_exp_run_does(tmp_path, monkeypatch, capsys):
    """`transfer-learning check-params -S key=value`: the stages' check in the workspace, before queueing."""
    from transfer_learning import cli

    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    (tmp_path / "images").mkdir()

    def check(*overrides: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as info:
            cli.main(["check-params", *[arg for text in overrides for arg in ("-S", text)]])
            raise SystemExit(0)
        out = capsys.readouterr()
        return info.value.code, out.out + out.err

    assert check("fine_tune.lr=0.001", "augment.horizontal_flip=true") == (
        0,
        "params.yaml: valid with fine_tune.lr=0.001, augment.horizontal_flip=true\n",
    )
    code, line = check("data.source=../images")
    assert code == 1 and line.startswith(
        "error: params.yaml: data.source ../images is a relative path outside the project: "
        f"give its absolute path ({tmp_path.parent / 'images'})"
    )
    assert check("fine_tune.lr=fast")[1].startswith("error: params.yaml: fine_tune.lr: Input should be a valid number")
    assert check("lr=1") == (1, "error: -S lr=1: expected section.key=value, e.g. -S fine_tune.lr=0.0001\n")
    assert check("head.units=[1")[1].startswith("error: -S head.units=[1: the value is not YAML (")
