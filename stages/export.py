"""Stage export: the fine-tuned model in deployable formats (transfer_learning/exports.py), each checked against it.

Writes models/export/: saved_model/ (TF Serving), model.tflite (float32), model_int8.tflite (full-integer, calibrated
on a seeded sample of CALIBRATION_IMAGES training images), model.onnx, and a copy of models/encoding.json.
metrics/export.json: per format its test accuracy (or MAE), top-1 agreement with the Keras model and the largest
absolute output difference to it (test split), and its size (model.onnx's: in export_speed.json): byte-reproducible.
metrics/export_speed.json: images/s at batch 1 and 32 on this machine, and model.onnx's size, which change from run
to run.
"""

import shutil

from transfer_learning import exports, files, image_sets, model_files, params, paths, records, seeding, settings
from transfer_learning.errors import run


def main():
    params.load()  # validates params.yaml; this stage reads no key of its own
    encoding = records.Encoding.read(paths.MODEL_ENCODING)
    # Seeded before the model is built: the state of its Dropout layers' seed generators is a variable that the
    # SavedModel and the ONNX file hold too (unseeded, another value every run: other bytes)
    seeding.make_deterministic(exports.CALIBRATION_SEED)
    model = model_files.load(paths.MODEL)  # safe_mode: no code runs from the file
    train = image_sets.listed("train")  # the training images without their variants, decoded as they are read
    test = image_sets.load("test")
    actual = files.load_npy(paths.split_array(paths.NORMALIZED, "test", "targets"))
    written = exports.export_all(model, encoding, exports.calibration_sample(train), paths.EXPORT)
    with files.atomic_path(paths.EXPORT / "encoding.json") as tmp:  # the folder alone is enough to predict
        shutil.copyfile(paths.MODEL_ENCODING, tmp)

    # every format is created first, then the test images are decoded once, batch by batch, for all of them
    runners = {"keras": model} | {
        name: exports.runner(path, threads=settings.workers()) for name, path in written.items()
    }
    outputs = exports.outputs_of_each(runners, test)
    sample = exports.speed_sample(test)
    reference = outputs["keras"]
    metrics, speed = {}, {}
    for name, runner in runners.items():
        metrics[name] = exports.quality(outputs[name], reference, actual, encoding)
        speed[name] = exports.speed(runner, sample)
        path = paths.MODEL if name == "keras" else written[name]
        # model.onnx's size changes by a few bytes from run to run (exports.py): with the timings, not in export.json
        (speed if name in exports.NOT_BYTE_IDENTICAL else metrics)[name]["size_bytes"] = exports.size_bytes(path)
    files.write_json(paths.EXPORT_METRICS, metrics)
    files.write_json(paths.EXPORT_SPEED, speed)
    for name in metrics:
        print(f"export: {name}: {metrics[name]} {speed[name]}")


if __name__ == "__main__":
    run(main)
