"""The table of pretrained bases: every ImageNet family of keras.applications, one row each (docs/backbones.md).

A row says how to build the family (its keras.applications constructor and options), how raw 0-255 RGB pixels become
what it was trained on (networks.preprocessing turns `preprocess` into plain serializable layers inside the saved
model), which input sizes it takes, and where fine-tuning cuts it by default. Plain data, no Keras import: params.py
checks base.* and normalize.image_size against it when params load, before TensorFlow is imported.

preprocess, as keras.applications.<module>.preprocess_input does it:
- "tf": x / 127.5 - 1 (MobileNet, MobileNetV2, Inception, Xception, NASNet, ResNet V2);
- "torch": x / 255, minus the ImageNet mean, over its standard deviation, per RGB channel (DenseNet);
- "caffe": RGB -> BGR, minus the ImageNet mean in BGR order (VGG, ResNet V1);
- "none": the model holds its own preprocessing layers (EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3), so
  preprocess_input is the identity.
default_cut: fine_tune.unfreeze_from's `default` for the family: a layer name, or a number N (the first N layers stay
frozen) where Keras names the layers by a global counter (conv2d_57, ...), which changes when a process builds two
models. Each is a cut where the frozen bottom's output is a single tensor, so its activations can be cached.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # "torch" preprocessing: RGB, of pixels scaled to [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)  # "caffe" preprocessing: BGR, of 0-255 pixels


@dataclass(frozen=True)
class Family:
    name: str  # base.name
    constructor: str  # keras.applications.<constructor>
    module: str  # keras.applications.<module>.preprocess_input is what `preprocess` equals
    preprocess: str  # tf | torch | caffe | none (above)
    default_cut: str | int  # fine_tune.unfreeze_from: default
    min_size: int = 32  # smallest normalize.image_size Keras builds it for (its min_size)
    # with imagenet weights only these sizes (NASNet: the size its weights were made for)
    imagenet_sizes: tuple = ()
    alphas: tuple | None = None  # width multipliers with ImageNet weights; None: the family has no base.alpha
    minimalistic: bool = False  # whether base.minimalistic applies (MobileNetV3)
    static: bool = False  # built for normalize.image_size only (NASNet: its cells crop by static shapes)

    def options(self, alpha: float, minimalistic: bool) -> dict:
        """The constructor's keyword options from base.alpha and base.minimalistic (ignored where they do not apply)."""
        return ({"alpha": alpha} if self.alphas is not None else {}) | (
            {"minimalistic": minimalistic} if self.minimalistic else {}
        )

    def imagenet_alphas(self, minimalistic: bool) -> tuple:
        return (1.0,) if self.minimalistic and minimalistic else self.alphas


def _rows() -> list[Family]:
    rows = [
        Family("vgg16", "VGG16", "vgg16", "caffe", "block5_conv1"),
        Family("vgg19", "VGG19", "vgg19", "caffe", "block5_conv1"),
        Family("xception", "Xception", "xception", "tf", "block14_sepconv1", min_size=71),
        # Chollet's notes: the top 2 blocks
        Family("inception_v3", "InceptionV3", "inception_v3", "tf", 249, min_size=75),
        Family("inception_resnet_v2", "InceptionResNetV2", "inception_resnet_v2", "tf", 618, min_size=75),
        Family("mobilenet", "MobileNet", "mobilenet", "tf", "conv_dw_12", alphas=(0.25, 0.5, 0.75, 1.0)),
        Family(
            "mobilenet_v2",
            "MobileNetV2",
            "mobilenet_v2",
            "tf",
            "block_10_expand",
            alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
        ),
        Family(
            "mobilenet_v3_small",
            "MobileNetV3Small",
            "mobilenet_v3",
            "none",
            "expanded_conv_9_expand",
            alphas=(0.75, 1.0),
            minimalistic=True,
        ),
        Family(
            "mobilenet_v3_large",
            "MobileNetV3Large",
            "mobilenet_v3",
            "none",
            "expanded_conv_12_expand",
            alphas=(0.75, 1.0),
            minimalistic=True,
        ),
        Family("nasnet_mobile", "NASNetMobile", "nasnet", "tf", "normal_conv_1_12", imagenet_sizes=(224,), static=True),
        Family("nasnet_large", "NASNetLarge", "nasnet", "tf", "normal_conv_1_18", imagenet_sizes=(331,), static=True),
    ]
    rows += [
        Family(f"resnet{depth}", f"ResNet{depth}", "resnet", "caffe", "conv5_block1_1_conv") for depth in (50, 101, 152)
    ]
    rows += [
        Family(f"resnet{depth}_v2", f"ResNet{depth}V2", "resnet_v2", "tf", "conv5_block1_preact_relu")
        for depth in (50, 101, 152)
    ]
    rows += [
        Family(f"densenet{depth}", f"DenseNet{depth}", "densenet", "torch", "pool4_conv") for depth in (121, 169, 201)
    ]
    rows += [
        Family(f"efficientnet_b{i}", f"EfficientNetB{i}", "efficientnet", "none", "block6a_expand_conv")
        for i in range(8)
    ]
    rows += [
        Family(
            f"efficientnet_v2_{size.lower()}", f"EfficientNetV2{size}", "efficientnet_v2", "none", "block6a_expand_conv"
        )
        for size in ("B0", "B1", "B2", "B3", "S", "M", "L")
    ]
    rows += [
        Family(
            f"convnext_{size}",
            f"ConvNeXt{size.capitalize() if size != 'xlarge' else 'XLarge'}",
            "convnext",
            "none",
            f"convnext_{size}_downsampling_block_2",
        )
        for size in ("tiny", "small", "base", "large", "xlarge")
    ]
    return rows


FAMILIES: dict[str, Family] = {family.name: family for family in _rows()}
NAMES = tuple(FAMILIES)
DEFAULT = "default"  # fine_tune.unfreeze_from: the family's default_cut


def get(name: str) -> Family:
    """The row of base.name, or a one-line ValueError naming the closest names."""
    if name in FAMILIES:
        return FAMILIES[name]
    close = sorted(difflib.get_close_matches(name, NAMES, n=3, cutoff=0.5), key=NAMES.index)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise ValueError(
        f"base.name {name!r} is not a keras.applications base; {hint}the bases: {', '.join(NAMES)} (docs/backbones.md)"
    )


def cut(name: str, unfreeze_from: str | int) -> str | int:
    """fine_tune.unfreeze_from with `default` replaced by the family's default cut."""
    return get(name).default_cut if unfreeze_from == DEFAULT else unfreeze_from
