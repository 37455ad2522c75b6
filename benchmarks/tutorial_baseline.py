"""The single-script way the Keras tutorials fine-tune a model, used as the baseline of vs_tutorial.py.

    python benchmarks/tutorial_baseline.py <project> --target 0.93

Follows keras.io's "Transfer learning & fine-tuning": tf.data from the image files (decoded and
resized once, then cached), augmentation layers inside the model (on the fly, every epoch), the
frozen MobileNetV2 base, the head fit for 25 epochs, then the top of the base unfrozen (BatchNorm
frozen) from the project's fine_tune.unfreeze_from and fit again at keras.io's Adam(1e-5) (or, with
--fine-tune-optimizer project, SGD at the project's fine_tune.lr). It uses the pipeline's own
train/val/test split of `<project>` (data/split/split.csv), so both are scored on the same test images. After every
epoch it scores the test set (that time is not counted) and prints when the test accuracy first reaches --target.
"""

import argparse
import json
import time
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf
from keras import layers

import harness


def dataset(frame: pd.DataFrame, root: Path, classes: list[str], shuffle: bool, size: int) -> tf.data.Dataset:
    files = [str(root / p) for p in frame["path"]]
    labels = [classes.index(label) for label in frame["label"]]

    def load(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return tf.image.resize(image, (size, size)), label

    ds = tf.data.Dataset.from_tensor_slices((files, labels)).map(load, num_parallel_calls=tf.data.AUTOTUNE).cache()
    if shuffle:
        ds = ds.shuffle(len(files), seed=0)
    return ds.batch(32).prefetch(tf.data.AUTOTUNE)


class TestAccuracyClock(keras.callbacks.Callback):
    """Test accuracy after every epoch against training time (the evaluation itself is not counted)."""

    def __init__(self, test):
        super().__init__()
        self.test, self.trace, self.start = test, [], time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        pause = time.perf_counter()
        accuracy = self.model.evaluate(self.test, verbose=0)[1]
        self.trace.append((pause - self.start, accuracy))
        print(f"  {pause - self.start:7.1f} s  test accuracy {accuracy:.4f}", flush=True)
        self.start += time.perf_counter() - pause

    def reached(self, target: float) -> float | None:
        """Training seconds until the test accuracy first reached `target` (None: never)."""
        return next((seconds for seconds, accuracy in self.trace if accuracy >= target), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("project", type=Path)
    parser.add_argument("--target", type=float, required=True)
    parser.add_argument("--head-epochs", type=int, default=25)
    parser.add_argument("--fine-tune-epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=224, help="pixels a side (default: %(default)s, keras.io's)")
    parser.add_argument(
        "--fine-tune-optimizer",
        choices=["keras-io", "project"],
        default="keras-io",
        help="keras-io: Adam(1e-5) as keras.io's guide fine-tunes; project: SGD at the project's fine_tune.lr, "
        "momentum 0.9",
    )
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    params = harness.read_params(args.project)
    source = Path(params["data"]["source"])
    frame = pd.read_csv(args.project / "data/ingested/manifest.csv").merge(
        pd.read_csv(args.project / "data/split/split.csv"), on="path"
    )
    classes = sorted(frame["label"].unique())
    train, val, test = (
        dataset(frame[frame["split"] == s], source, classes, s == "train", args.image_size)
        for s in ("train", "val", "test")
    )

    augmentation = keras.Sequential(
        [
            layers.RandomFlip("horizontal"),
            layers.RandomRotation(10 / 360),
            layers.RandomTranslation(0.1, 0.1),
            layers.RandomZoom(0.1),
        ]
    )
    size = args.image_size
    base = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), include_top=False, weights="imagenet", alpha=0.35
    )
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1)(augmentation(inputs))
    x = layers.GlobalAveragePooling2D()(base(x, training=False))
    x = layers.Dropout(0.5)(layers.Dense(256, activation="relu")(x))
    model = keras.Model(inputs, layers.Dense(len(classes), activation="softmax")(x))

    clock = TestAccuracyClock(test)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train, validation_data=val, epochs=args.head_epochs, callbacks=[clock], verbose=2)
    base.trainable = True
    start = [layer.name for layer in base.layers].index(params["fine_tune"]["unfreeze_from"])
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= start and not isinstance(layer, layers.BatchNormalization)
    if args.fine_tune_optimizer == "keras-io":
        optimizer = keras.optimizers.Adam(1e-5)
    else:
        optimizer = keras.optimizers.SGD(params["fine_tune"]["lr"], momentum=0.9)
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train, validation_data=val, epochs=args.fine_tune_epochs, callbacks=[clock], verbose=2)

    seconds, best = clock.trace[-1][0], max(accuracy for _, accuracy in clock.trace)
    print(
        json.dumps(
            {
                "reached_target_s": clock.reached(args.target),
                "total_s": seconds,
                "final_accuracy": clock.trace[-1][1],
                "best_accuracy": best,
                "reached_best_s": clock.reached(best),
            }
        )
    )


if __name__ == "__main__":
    main()
