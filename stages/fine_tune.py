"""Stage fine-tune: base + trained head, top of the base unfrozen (BatchNormalization kept frozen),
trained at a low learning rate on the augmented training images.

Writes models/model.keras: raw RGB pixels in, class probabilities (or the target, in its unit) out.
fine_tune.epochs: 0 skips training but still writes the assembled model.
"""
import shutil

from lib import files, models, params, paths, training
from lib.errors import run


def main():
    p = params.load()
    cfg = p.fine_tune
    training.make_deterministic(cfg.seed)
    encoding = files.read_json(paths.ENCODING)
    base = models.build_base(p.base.name, p.base.alpha, p.base.weights)
    extractor = models.feature_extractor(base, p.base.name, p.normalize.image_size, p.head.pooling)
    model = models.assemble(extractor, models.load(paths.HEAD_MODEL))
    n_trainable = models.unfreeze_from(base, cfg.unfreeze_from)
    print(f"fine-tune: {n_trainable} trainable weight tensors in {base.name} from {cfg.unfreeze_from} up (BatchNormalization frozen)")
    train = training.image_batches(paths.AUGMENTED, "train", cfg.batch_size, seed=cfg.seed)
    val = training.image_batches(paths.NORMALIZED, "val", cfg.batch_size)
    opt = training.optimizer(cfg.optimizer, cfg.lr, cfg.momentum, cfg.schedule, total_steps=cfg.epochs * len(train), warmup_steps=len(train))
    training.compile_for(model, encoding, cfg.loss, opt)
    history = training.fit(model, train, val, cfg.epochs, cfg.patience, encoding)
    models.save(models.export(model, encoding), paths.MODEL)
    with files.atomic_path(paths.MODEL_ENCODING) as tmp:
        shutil.copyfile(paths.ENCODING, tmp)
    training.write_curves(history, paths.FINE_TUNE_PLOTS, encoding)
    files.write_json(paths.FINE_TUNE_METRICS, training.best_epoch(history, encoding))


if __name__ == "__main__":
    run(main)
