"""Every keras.applications family as base.name (transfer_learning/backbones.py): its table row, its preprocessing, and
for one family of each keras.applications module a real base (random weights, smallest size) that extracts features,
trains a head, is cut for fine-tuning and saves a model that loads in safe mode in a process without the project's code.

The larger members of a module (VGG19, ResNet101/152 and their V2s, DenseNet169/201, EfficientNetB1-B7,
EfficientNetV2B1-L, ConvNeXtSmall-XLarge, MobileNetV3Large, NASNetLarge) are checked by their table row (constructor,
preprocessing, minimum size) only: building them all takes minutes on 2 cores. TL_ALL_BACKBONES=1 builds them too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from transfer_learning import backbones, batches, heatmaps, model_files, networks, training
from transfer_learning.errors import PipelineError
from transfer_learning.records import Encoding

SHARED = pytest.mark.xdist_group("backbones")  # one worker for the tests sharing the built bases and the saved models

# One family of each shape (MobileNetV2, the default, is built by tests/test_models.py; MobileNet and EfficientNetB0
# have
# the layers of MobileNetV2 and EfficientNetV2B0): the suite stays under 10 minutes
BUILT = [
    "vgg16",
    "resnet50_v2",
    "inception_v3",
    "mobilenet_v3_small",
    "densenet121",
    "nasnet_mobile",
    "efficientnet_v2_b0",
    "convnext_tiny",
]
if os.environ.get("TL_ALL_BACKBONES"):
    BUILT = list(backbones.NAMES)
ENCODING = Encoding(task="classification", classes=("a", "b"))


def pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("name", backbones.NAMES)
def test_each_table_row_is_a_keras_application_with_its_preprocess_input(name):
    """The constructor exists, the preprocessing layers compute keras.applications.<module>.preprocess_input, and
    Keras refuses one pixel less than the row's smallest size (the check itself, before any layer is built)."""
    family = backbones.get(name)
    x = pixels(2, 8, seed=1)
    expected = getattr(keras.applications, family.module).preprocess_input(x.copy())
    got = x
    for layer in networks.preprocessing(name):
        got = layer(got)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=1e-5)
    if family.preprocess != "none":
        assert not np.allclose(expected, x), "a real transformation"
    with pytest.raises(ValueError, match="at least"):
        getattr(keras.applications, family.constructor)(
            input_shape=(family.min_size - 1,) * 2 + (3,), include_top=False, weights=None
        )


def test_the_table_names_every_imagenet_family_once():
    constructors = {f.constructor for f in backbones.FAMILIES.values()}
    assert constructors == {name for name in dir(keras.applications) if name[0].isupper()} and len(constructors) == 40
    assert backbones.cut("inception_v3", "default") == 249 and backbones.cut("vgg16", 7) == 7
    with pytest.raises(ValueError, match="did you mean .*efficientnet_v2_b0"):
        backbones.get("efficientnetv2_b0")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each family of BUILT at its smallest size: -> {name: (base, saved model path)}; the saved models' inputs and
    outputs in the folder for the subprocess."""
    folder = tmp_path_factory.mktemp("backbones")
    out = {}
    for name in BUILT:
        family = backbones.get(name)
        size = family.min_size
        keras.utils.set_random_seed(0)
        base = networks.build_base(name, 1.0 if family.alphas else 0.35, "none", image_size=size)
        extractor = networks.feature_extractor(base, name, size, "avg")
        images = pixels(4, size, seed=2)
        features = np.asarray(extractor(images, training=False))
        head = networks.build_head(features.shape[-1], 4, 0.0, 2, "classification")
        training.compile_for(head, ENCODING, "auto", training.optimizer("adam", 0.01))
        history = head.fit(features, np.arange(4) % 2, epochs=2, batch_size=4, verbose=0)
        model = networks.assemble(extractor, head)
        model_files.save(model, folder / f"{name}.keras")
        model_files.load(folder / f"{name}.keras")  # its classes are all in the loader's allowlist
        np.save(folder / f"{name}_in.npy", images)
        np.save(folder / f"{name}_out.npy", np.asarray(model(images, training=False)))
        out[name] = {"base": base, "features": features, "loss": history.history["loss"], "size": size}
    return folder, out


@SHARED
@pytest.mark.parametrize("name", BUILT)
def test_each_family_builds_extracts_features_trains_a_head_and_has_a_default_cut(built, name):
    _, out = built
    base, features = out[name]["base"], out[name]["features"]
    assert features.ndim == 2 and features.shape[0] == 4 and np.isfinite(features).all() and np.abs(features).max() > 0
    assert all(np.isfinite(out[name]["loss"]))
    feature_map = heatmaps.last_feature_map(base)
    assert len(feature_map.output.shape) == 4 and not isinstance(feature_map, heatmaps.POOLING)
    family = backbones.get(name)
    start = networks.cut_index(base, family.default_cut)
    assert len(base.layers) // 3 < start < len(base.layers) - 1, "the default cut is in the upper part of the base"
    if family.static:  # NASNet: every cell reads the two before it; no cut inside them is one tensor
        with pytest.raises(
            PipelineError, match="residual connection jumps over this layer.*nearest cuts that can be cached"
        ):
            networks.split_base(base, family.default_cut)
    else:
        bottom, top = networks.split_base(base, family.default_cut)
        x = pixels(2, out[name]["size"], seed=3)
        x = x if family.preprocess == "none" else np.asarray(networks.preprocessing(name)[0](x))
        np.testing.assert_allclose(
            np.asarray(top(bottom(x))), np.asarray(base(x)), rtol=0, atol=1e-4 * max(1, np.abs(base(x)).max())
        )
    networks.unfreeze_from(base, family.default_cut)
    trainable = [layer for layer in base.layers if layer.trainable and layer.weights]
    assert trainable and not [layer for layer in trainable if isinstance(layer, keras.layers.BatchNormalization)]
    assert not [layer for layer in base.layers[:start] if layer.trainable and layer.weights]
    base.trainable = False


@SHARED
def test_the_saved_models_load_in_safe_mode_without_the_project(built, tmp_path):
    folder, out = built
    script = textwrap.dedent("""
        import json, sys
        import numpy as np, keras
        folder, names = sys.argv[1], sys.argv[2:]
        worst = {}
        for name in names:
            model = keras.models.load_model(f"{folder}/{name}.keras", safe_mode=True, compile=False)
            got = np.asarray(model(np.load(f"{folder}/{name}_in.npy"), training=False))  # eager: no graph to trace
            worst[name] = float(np.abs(got - np.load(f"{folder}/{name}_out.npy")).max())
        assert not [m for m in sys.modules if m.startswith("transfer_learning")]
        print(json.dumps(worst))
    """)
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder), *out],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    worst = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(worst) == sorted(out) and max(worst.values()) < 1e-5, worst


def train_twice(name: str, cut, size: int, lr: float):
    """As tests/test_models.py train_twice, for any family with random weights: two identical fresh models, one
    fine-tuned end to end on images, one on the activations cached at `cut`. -> ([(model, base)] end to end, cached),
    the images, the first trained kernel before training"""
    images = pixels(8, size, seed=5)
    labels = np.arange(8) % 2
    trained_models = []
    for cached in (False, True):
        keras.utils.set_random_seed(0)
        base = networks.build_base(name, 1.0, "none", image_size=size)
        extractor = networks.feature_extractor(base, name, size, "avg")
        head = networks.build_head(extractor.output.shape[-1], 8, 0.0, 2, "classification")
        model = networks.assemble(extractor, head)
        networks.unfreeze_from(base, cut)
        initial = [np.array(w) for w in base.trainable_weights]
        if cached:
            _, inputs = networks.feature_extractor(base, name, size, "avg", cut).predict(images, verbose=0)
            trained = networks.top_model(base, cut, inputs.shape[1:], "avg", head)
        else:
            inputs, trained = images, model
        training.compile_for(trained, ENCODING, "auto", training.optimizer("sgd", lr, 0.9))
        # four steps: faster than tracing the big graph of a training step, and the same in both
        trained.run_eagerly = True
        trained.fit(batches.Batches(inputs, labels, 4, seed=0), epochs=2, verbose=0)
        trained_models.append((model, base))
    return trained_models, images, initial


@pytest.mark.parametrize(
    "name, cut, lr",
    [
        ("vgg16", "default", 0.01),
        ("inception_v3", 249, 1.0),
        ("resnet50_v2", "default", 0.01),
        ("efficientnet_v2_b0", "default", 1.0),
        ("convnext_tiny", "default", 0.01),
    ],
)
def test_fine_tuning_on_cached_activations_equals_end_to_end(name, cut, lr):
    """tests/test_models.py's bounds (3e-6 on the weights, 1e-5 on the outputs) for families of other shapes: plain
    (VGG16), branches joined by concatenation cut by number (InceptionV3: its first 249 layers frozen), pre-activation
    residual (ResNet50V2), squeeze-and-excite with its own preprocessing (EfficientNetV2B0), LayerNormalization
    (ConvNeXt). Random weights at the smallest size give small gradients in InceptionV3 and EfficientNetV2B0: a
    larger learning rate moves their weights well past the bound."""
    cut = backbones.cut(name, cut)
    [(end_to_end, base_e2e), (cached, base_cached)], images, initial = train_twice(
        name, cut, backbones.get(name).min_size, lr
    )
    moved = max(float(np.abs(np.asarray(w) - w0).max()) for w, w0 in zip(base_cached.trainable_weights, initial))
    assert moved > 100 * 3e-6, "fine-tuning must move the unfrozen weights"
    for a, b in zip(base_cached.layers, base_e2e.layers):
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_allclose(wa, wb, rtol=0, atol=3e-6, err_msg=a.name)
    np.testing.assert_allclose(
        np.asarray(cached(images, training=False)), np.asarray(end_to_end(images, training=False)), rtol=0, atol=1e-5
    )


def test_the_cuts_command_lists_the_valid_cuts_with_their_sizes(capsys):
    """python -m transfer_learning.cuts / transfer-learning cuts: each row a cut split_base accepts, the activations'
    shape at the given size, the family's default marked; the table in docs/backbones.md names every family and its
    default."""
    from support.projects import ROOT
    from transfer_learning import cli, cuts

    rows = cuts.rows("mobilenet_v2", 96, alpha=0.35)
    by_name = {row["layer"]: row for row in rows}
    assert by_name["block_10_expand"]["default"] and sum(row["default"] for row in rows) == 1
    assert (
        by_name["block_10_expand"]["shape"] == (6, 6, 24) and by_name["block_10_expand"]["kib"] == 6 * 6 * 24 * 4 / 1024
    )
    assert "block_11_depthwise" not in by_name and "block_11_expand" in by_name
    # transfer-learning cuts vgg16 64, without errors.run's exit
    args = cli.parser().parse_args(["cuts", "vgg16", "64"])
    cli.COMMANDS[args.command][1](args)
    printed = capsys.readouterr().out
    assert (
        "vgg16 at 64x64" in printed
        and "   15  block5_conv1" in printed
        and "4x4x512" in printed
        and "<- default" in printed
    )
    page = (ROOT / "docs" / "backbones.md").read_text(encoding="utf-8")
    for family in backbones.FAMILIES.values():
        assert f"| `{family.name}` | {family.constructor} |" in page and str(family.default_cut) in page
