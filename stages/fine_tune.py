"""Stage fine-tune: base + trained head, top of the base unfrozen (BatchNormalization kept frozen),
trained at a low learning rate on the augmented training images.

fine_tune.cache_activations: true (default) trains the unfrozen top + head on the activations
extract-features cached below the cut: the same network and data as end to end, without pushing
every image through the frozen bottom each epoch. false trains the full model on the images.
Writes models/model.keras either way: raw RGB pixels in, class probabilities (or the target, in its
unit) out. fine_tune.epochs: 0 skips training but still writes the assembled model. fine_tune.tta: flip bakes test-time
augmentation into it (the mean over the image and its mirror image); metrics/fine_tune.json gives the saved model's
validation figure (model_val_<metric>) beside the training run's. fine_tune.class_weight: balanced weighs each class's
training rows inversely to their number (the weights in the metrics).
Built, compiled and trained under train.strategy (transfer_learning/distribute.py); fine_tune.batch_size is global.
Each epoch's figures go to dvclive/fine_tune as it trains (transfer_learning/live.py); the restored best epoch to
metrics/fine_tune.json. Each finished epoch is backed up (transfer_learning/resume.py): rerun after an interruption, it
resumes at the next one.
"""

import numpy as np

from transfer_learning import (
    backbones,
    batches,
    distribute,
    files,
    image_sets,
    model_files,
    networks,
    packaging,
    params,
    paths,
    records,
    seeding,
    training,
)
from transfer_learning.errors import PipelineError, run


def main():
    p = params.load()
    cfg = p.fine_tune
    cut = backbones.cut(p.base.name, cfg.unfreeze_from)  # a layer name or a number of layers to freeze
    seeding.make_deterministic(cfg.seed, threads=cfg.threads)
    strategy = distribute.strategy(p.train.strategy)
    encoding = records.Encoding.read(paths.ENCODING)
    # the cached activations, or the images (decoded from their files every epoch, each variant made again from its
    # seed)
    inputs = activations if cfg.cache_activations else image_sets.load
    replicas = strategy.num_replicas_in_sync
    classes = training.one_hot_classes(encoding, cfg.mixup)
    train = batches.Batches(
        inputs("train"),
        files.load_npy(paths.targets("train")),
        cfg.batch_size,
        seed=cfg.seed,
        replicas=replicas,
        classes=classes,
        mixup=cfg.mixup,
    )
    val = batches.Batches(
        inputs("val"), files.load_npy(paths.targets("val")), cfg.batch_size, replicas=replicas, classes=classes
    )
    with strategy.scope():
        base = networks.build_base(
            p.base.name, p.base.alpha, p.base.weights, p.base.minimalistic, p.normalize.image_size
        )
        head = model_files.load(paths.HEAD_MODEL)
        model = networks.assemble(
            networks.feature_extractor(base, p.base.name, p.normalize.image_size, p.base.pooling), head
        )
        n_trainable = networks.unfreeze_from(base, cut)
        if cfg.cache_activations:  # shares its layers with `model`: training it trains the model
            trained = networks.top_model(base, cut, activation_shape(), p.base.pooling, head)
        else:
            trained = model
        print(
            f"fine-tune: {n_trainable} trainable weight tensors in {base.name} from {cut} up "
            f"(BatchNormalization frozen), trained on {'cached activations' if cfg.cache_activations else 'images'}"
        )
        opt = training.optimizer(
            cfg.optimizer,
            cfg.lr,
            cfg.momentum,
            cfg.schedule,
            total_steps=cfg.epochs * len(train),
            warmup_steps=len(train),
            ema=cfg.ema,
        )
        training.compile_for(trained, encoding, cfg.loss, opt, label_smoothing=cfg.label_smoothing, mixup=cfg.mixup)
    # resumed after the epochs an interrupted run finished; epoch by epoch to dvclive/fine_tune
    history, weights, backup = training.fit_stage(
        "fine-tune", p, cfg, strategy, trained, train, val, encoding, paths.FINE_TUNE_LIVE
    )
    # beside the model: what its outputs mean, and how ingest and normalize made an image file its input (transfer-
    # learning predict)
    preparation = records.Preparation(
        max_short_side=p.ingest.max_short_side,
        max_megapixels=p.ingest.max_megapixels,
        image_size=p.normalize.image_size,
        resize=p.normalize.resize,
    )
    exported = packaging.package(model, encoding, cfg.tta)
    val_images = batches.Batches(
        image_sets.load("val"), files.load_npy(paths.targets("val")), cfg.batch_size, replicas=replicas
    )
    metrics = training.best_epoch(history, encoding)
    metrics[f"model_val_{encoding.metric}"] = round(training.score(exported, val_images, encoding), 6)
    if weights:
        metrics["class_weight"] = training.named_weights(weights, encoding)
    with distribute.only_chief_writes(strategy):
        model_files.save(exported, paths.MODEL)
        encoding.with_input(preparation).write(paths.MODEL_ENCODING)
        files.write_json(paths.FINE_TUNE_METRICS, metrics)
    backup.discard()


def activations(split: str) -> np.ndarray:
    return files.load_npy(paths.activations(split), mmap=True)


def activation_shape() -> tuple:
    info = files.read_json(paths.ACTIVATIONS_INFO)
    if not info["cache_activations"]:
        raise PipelineError("data/activations holds no activations; run `dvc repro` (extract-features must run first)")
    return tuple(info["train_shape"][1:])


if __name__ == "__main__":
    run(main)
