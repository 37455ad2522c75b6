"""Benchmark 1: fine-tuning on cached activations vs end to end, same data, epochs and model.

    python benchmarks/finetune.py              # Flowers-17, 224 px, MobileNetV2-0.35, 4 augmented copies
    python benchmarks/finetune.py --smoke      # a few generated images at 32 px, 2 epochs: that it runs (tests)

Prepares the data and the head once (`dvc repro train-head` in a fresh clone), then runs
extract-features + fine-tune + evaluate with fine_tune.cache_activations true and false (extract-features then stores
the activations at the cut beside the features, or not), and prints the time per epoch, the one-off cost of
caching (the difference of the two extract-features), and val/test accuracy of both.
"""

import argparse
import statistics

import harness


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(harness.FLOWERS))
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6, help="fine-tune epochs (no early stopping), same for both")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--unfreeze-from", help="fine_tune.unfreeze_from (the cut), same for both; default: params.yaml's"
    )
    parser.add_argument("--smoke", action="store_true", help="a few generated images, smallest params: that it runs")
    args = parser.parse_args()

    project = harness.clone("finetune")
    cut_override = {"fine_tune.unfreeze_from": args.unfreeze_from} if args.unfreeze_from else {}
    if args.smoke:
        smoke = harness.smoke_flowers_params()
        args.source, args.image_size, args.copies, args.epochs = (
            smoke["data.source"],
            smoke["normalize.image_size"],
            smoke["augment.copies"],
            smoke["fine_tune.epochs"],
        )
        cut_override = {key: smoke[key] for key in harness.SMOKE_PARAMS} | cut_override
    harness.set_params(
        project,
        harness.FLOWERS_PARAMS
        | cut_override
        | {
            "data.source": args.source,
            "normalize.image_size": args.image_size,
            "augment.copies": args.copies,
            "fine_tune.epochs": args.epochs,
            "fine_tune.patience": 0,
        },
    )
    cut = harness.read_params(project)["fine_tune"]["unfreeze_from"]
    print(f"preparing data and head in {project} ...", flush=True)
    harness.run(["dvc", "repro", "train-head"], project)

    results = {}
    for cached in (True, False):
        harness.set_params(project, {"fine_tune.cache_activations": cached})
        # forced: `dvc repro train-head` above ran it with the params' cache_activations, which one of these then finds
        # done (its time would be DVC's check, and the difference of the two no longer the cost of caching)
        extract = harness.run(["dvc", "repro", "-s", "-f", "extract-features"], project)
        fine_tune = harness.run(["dvc", "repro", "-s", "fine-tune"], project)
        harness.run(["dvc", "repro", "-s", "evaluate"], project)
        epochs = harness.epoch_seconds(fine_tune.output)
        steady = epochs[1:] or epochs  # the first epoch also traces the graph
        results[cached] = {
            "epoch": statistics.median(steady),
            "fastest": min(steady),  # the least disturbed by other jobs on a shared machine
            "epochs": epochs,
            "extract": extract.seconds,
            "stage": fine_tune.seconds,
            "val": harness.read_json(project / "metrics/fine_tune.json")["val_accuracy"],
            "test": harness.read_json(project / "metrics/evaluate.json")["fine_tuned"]["accuracy"],
        }
    cached, e2e = results[True], results[False]
    print(
        f"\nfine-tune on {args.source}: {args.image_size} px, {args.copies} augmented copies, {args.epochs} epochs, "
        f"trained from {cut} up"
    )
    print(f"{'':24}{'cached':>12}{'end to end':>12}")
    print(f"{'seconds per epoch':24}{cached['epoch']:12.2f}{e2e['epoch']:12.2f}   (median of epochs 2-{args.epochs})")
    print(f"{'fastest epoch, s':24}{cached['fastest']:12.2f}{e2e['fastest']:12.2f}")
    print(
        f"{'every epoch, s':24}{' '.join(f'{s:.1f}' for s in cached['epochs'])} | "
        f"{' '.join(f'{s:.1f}' for s in e2e['epochs'])}"
    )
    print(
        f"{'extract-features, s':24}{cached['extract']:12.1f}{e2e['extract']:12.1f}   (the difference: caching the "
        "activations)"
    )
    print(f"{'fine-tune stage, s':24}{cached['stage']:12.1f}{e2e['stage']:12.1f}")
    print(f"{'val accuracy':24}{cached['val']:12.4f}{e2e['val']:12.4f}")
    print(f"{'test accuracy':24}{cached['test']:12.4f}{e2e['test']:12.4f}")
    print(
        f"\nper-epoch speed-up: {e2e['epoch'] / cached['epoch']:.1f}x (fastest epochs: "
        f"{e2e['fastest'] / cached['fastest']:.1f}x)   "
        f"stage speed-up incl. caching: {e2e['stage'] / (cached['stage'] + cached['extract'] - e2e['extract']):.1f}x   "
        f"test accuracy difference: {100 * (cached['test'] - e2e['test']):+.2f} points"
    )


if __name__ == "__main__":
    main()
