"""The fine-tune cuts of a base: where fine_tune.unfreeze_from can cut it with cached activations, and how big they are.

    python -m transfer_learning.cuts inception_v3 299          # or: transfer-learning cuts inception_v3 299
    python -m transfer_learning.cuts mobilenet_v2 96 --alpha 0.35

One row per valid cut: the layer number N (fine_tune.unfreeze_from: N freezes layers 0 to N-1), the layer's name
(also accepted), the shape of the activations cached per image at that size and their size in float32, and which is
the family's default (fine_tune.unfreeze_from: default). Any other cut works only with fine_tune.cache_activations:
false. The base is built with random weights (weights do not change the graph), so it needs no download.
"""

from __future__ import annotations

import argparse
import math

from transfer_learning import backbones, errors


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "List the cuts of a base where fine-tuning can train on cached activations, with their sizes."
    parser.add_argument("base", choices=backbones.NAMES, metavar="base.name", help="a base (docs/backbones.md)")
    parser.add_argument(
        "size", type=int, nargs="?", help="normalize.image_size (default: 224, or the family's smallest)"
    )
    parser.add_argument("--alpha", type=float, default=1.0, help="base.alpha, MobileNets only (default: %(default)s)")
    parser.add_argument("--minimalistic", action="store_true", help="base.minimalistic, MobileNetV3 only")


def rows(name: str, size: int, alpha: float = 1.0, minimalistic: bool = False) -> list[dict]:
    """The valid cuts of `name` at `size` pixels: number, layer, activation shape, KiB per image, default or not."""
    from transfer_learning import networks  # imports TensorFlow

    family = backbones.get(name)
    base = networks.build_base(name, alpha, "none", minimalistic, size, fixed_size=True)  # shapes at this size
    default = networks.cut_index(base, family.default_cut)
    found = []
    for i in networks.valid_cuts(base):
        found.append({"number": i, "layer": base.layers[i].name, "default": i == default})
    for row in found:
        row["shape"] = tuple(base.layers[row["number"]].input.shape[1:])
        row["kib"] = math.prod(row["shape"]) * 4 / 1024
    return found


def main(args: argparse.Namespace) -> None:
    family = backbones.get(args.base)
    size = args.size or max(224, family.min_size)
    if size < family.min_size:
        raise SystemExit(f"error: {args.base} takes images of at least {family.min_size} pixels, got {size}")
    print(f"{args.base} at {size}x{size}: fine_tune.unfreeze_from values that cached activations can use")
    print(f"{'N':>5}  {'layer':<45} {'activations per image':<22} {'float32':>10}")
    for row in rows(args.base, size, args.alpha, args.minimalistic):
        mark = "  <- default" if row["default"] else ""
        print(
            f"{row['number']:>5}  {row['layer']:<45} {'x'.join(map(str, row['shape'])):<22} {row['kib']:>7.1f} "
            f"KiB{mark}"
        )


if __name__ == "__main__":
    main_parser = argparse.ArgumentParser(prog="python -m transfer_learning.cuts")
    arguments(main_parser)
    parsed = main_parser.parse_args()
    errors.run(lambda: main(parsed))
