"""Benchmark 7: the default base's forward pass (MobileNetV2-0.35, ImageNet weights, 96 px, average pooling: what
extract-features runs) in each CPU runtime, side by side in one run.

    pip install -r requirements-bench.txt     # OpenVINO (the other runtimes come with requirements.txt)
    python benchmarks/runtimes.py             # about 3 minutes on 2 cores
    python benchmarks/runtimes.py --quick     # fewer timed calls

Runtimes: TensorFlow under the project's settings (oneDNN on, AVX2 kernels: transfer_learning/__init__.py),
TensorFlow with oneDNN's native ISA (ONEDNN_MAX_CPU_ISA=ALL: AVX-512/AMX where present) in float32 and in mixed
bfloat16, TFLite/LiteRT with XNNPACK (the float32 export of exports.py), ONNX Runtime and OpenVINO (the ONNX export).
Each runs in its own process (the oneDNN ISA and TensorFlow's thread pools are fixed when it starts), with 1 and with
2 threads, at batch 1 and 64, on the same 64 seeded images. Per runtime: images/s, the largest absolute difference of
its features to the project's (TensorFlow, its settings, 2 threads), and whether its features are identical with 1
and 2 threads. Prints a Markdown table (benchmarks/README.md).

    python benchmarks/runtimes.py --pipeline flowers          # the README's Flowers-17 line, base.runtime both ways
    python benchmarks/runtimes.py --pipeline digits -S fine_tune.epochs=4

--pipeline: the stages after augment in a fresh clone (harness.clone), once with base.runtime tensorflow and once
with litert (the data stages run once: base.runtime changes none of them): seconds of each stage, the largest
difference of the features and cached activations between the two, and the test accuracy of the head and of the
fine-tuned model with each. `--stages extract_features --repeats 2`: that stage alone, twice each, in turn.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZE = 96
IMAGES = 64
RUNTIMES = {  # name -> (environment, description)
    "tf_project": ({}, "TensorFlow, the project's settings (oneDNN AVX2)"),
    "tf_native": ({"ONEDNN_MAX_CPU_ISA": "ALL"}, "TensorFlow, oneDNN native ISA, float32"),
    "tf_native_bf16": ({"ONEDNN_MAX_CPU_ISA": "ALL"}, "TensorFlow, oneDNN native ISA, mixed bfloat16"),
    "tflite_xnnpack": ({}, "TFLite/LiteRT float32, XNNPACK"),
    "onnxruntime": ({}, "ONNX Runtime (CPU), float32"),
    "openvino": ({}, "OpenVINO (CPU), its default precision"),
    "openvino_f32": ({}, "OpenVINO (CPU), f32 precision hint"),
}


def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (IMAGES, SIZE, SIZE, 3), dtype=np.uint8)


def base_model(precision: str = "float32"):
    from transfer_learning import networks

    networks.set_precision(precision)
    base = networks.build_base("mobilenet_v2", 0.35, "imagenet")
    return networks.feature_extractor(base, "mobilenet_v2", SIZE, "avg")


def convert(folder: Path) -> None:
    """The float32 TFLite and the ONNX file of the base, made as the export stage makes a model's."""
    from transfer_learning import exports
    from transfer_learning.records import Encoding

    model, encoding = base_model(), Encoding(task="classification", classes=("features",))
    exports.save_saved_model(model, encoding, folder / "saved_model")
    (folder / "base.tflite").write_bytes(exports.tflite_float32(folder / "saved_model"))
    (folder / "base.onnx").write_bytes(exports.onnx_bytes(model, encoding))


def predictor(name: str, folder: Path, threads: int):
    """A function: float32 pixels -> features, in runtime `name` on `threads` threads."""
    if name.startswith("tf_"):
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        model = base_model("bfloat16" if name.endswith("bf16") else "float32")
        return lambda x: np.asarray(model.predict_on_batch(x), np.float32)
    if name == "tflite_xnnpack":
        from transfer_learning import exports

        return exports.TFLiteRunner(folder / "base.tflite", threads).predict_on_batch
    if name == "onnxruntime":
        from transfer_learning import exports

        return exports.OnnxRunner(folder / "base.onnx", threads).predict_on_batch
    import openvino

    config = {"INFERENCE_NUM_THREADS": threads} | (
        {"INFERENCE_PRECISION_HINT": "f32"} if name == "openvino_f32" else {}
    )
    compiled = openvino.Core().compile_model(str(folder / "base.onnx"), "CPU", config)
    return lambda x: np.asarray(compiled(x)[0], np.float32)


def worker(name: str, folder: Path, threads: int, calls: dict[int, int]) -> None:
    """One runtime on `threads` threads: its features (features-<threads>.npy) and images/s per batch size (JSON)."""
    import transfer_learning  # noqa: F401  the project's TensorFlow settings (unless the environment overrides them)

    predict = predictor(name, folder, threads)
    pixels = images().astype(np.float32)
    # batch 1, as extract-features' last rows
    features = np.concatenate([predict(pixels[i : i + 1]) for i in range(len(pixels))])
    np.save(folder / f"{name}-{threads}.npy", features)
    np.save(folder / f"{name}-{threads}-64.npy", predict(pixels))
    speed = {}
    for batch, count in calls.items():
        x = pixels[:batch]
        predict(x)  # warm-up
        start = time.perf_counter()
        for _ in range(count):
            predict(x)
        speed[batch] = batch * count / (time.perf_counter() - start)
    print(json.dumps(speed))


PIPELINE = ("extract_features", "train_head", "fine_tune", "evaluate")


def pipeline(dataset: str, overrides: dict, stages: list[str], repeats: int) -> None:
    """The stages after augment with base.runtime tensorflow, then litert, in one clone (see the module's doc);
    `repeats` times in turn (tensorflow, litert, tensorflow, ...): on a loaded machine one run of each says little."""
    import harness

    project = harness.clone("runtimes-pipeline")
    params = {"flowers": harness.FLOWERS_PARAMS, "digits": {}, "smoke": harness.smoke_flowers_params()}[dataset]
    harness.set_params(project, params | overrides)
    for stage in ("ingest", "split", "normalize", "augment"):
        harness.run([sys.executable, "-m", f"stages.{stage}"], project)
    seconds, accuracy, outputs = {}, {}, {}
    for _ in range(repeats):
        for runtime in ("tensorflow", "litert"):
            harness.set_params(project, {"base.runtime": runtime})
            for stage in stages:
                before = cpu_seconds()
                wall = harness.run([sys.executable, "-m", f"stages.{stage}"], project).seconds
                seconds.setdefault((runtime, stage), []).append(f"{wall:.1f} (CPU {cpu_seconds() - before:.1f})")
            outputs[runtime] = {
                name: np.load(folder / f"train_{name}.npy")
                for folder, name in (
                    (project / "data/features", "features"),
                    (project / "data/activations", "activations"),
                )
                if (folder / f"train_{name}.npy").exists()
            }
            if "evaluate" in stages:
                figures = harness.read_json(project / "metrics/evaluate.json")
                accuracy[runtime] = {
                    model: figures[model].get("accuracy", figures[model].get("mae")) for model in ("head", "fine_tuned")
                }
    print(f"| {dataset} {' '.join(f'-S {k}={v}' for k, v in overrides.items())} | tensorflow | litert |")
    print("|---|---|---|")
    for stage in stages:
        print(
            f"| {stage}, seconds (CPU seconds) | {', '.join(seconds['tensorflow', stage])} "
            f"| {', '.join(seconds['litert', stage])} |"
        )
    for model in ("head", "fine_tuned") if accuracy else ():
        print(f"| {model} test accuracy (or MAE) | {accuracy['tensorflow'][model]} | {accuracy['litert'][model]} |")
    for name, reference in outputs["tensorflow"].items():
        difference = np.abs(outputs["litert"][name] - reference).max()
        print(
            f"| largest difference, train {name} (largest value {np.abs(reference).max():.3g}) | | {difference:.2g} |"
        )
    print(f"pipeline: both runtimes in {project}")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children (harness.run waits for each)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed calls")
    parser.add_argument("--only", nargs="*", default=list(RUNTIMES), help="runtimes to measure")
    parser.add_argument(
        "--smoke", action="store_true", help="--quick with the runtimes of requirements.txt only (the test)"
    )
    parser.add_argument(
        "--pipeline", choices=["flowers", "digits"], help="the stages after augment with each base.runtime"
    )
    parser.add_argument("--stages", nargs="+", default=list(PIPELINE), help="with --pipeline: the stages to time")
    parser.add_argument("--repeats", type=int, default=1, help="with --pipeline: runs of each runtime, in turn")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="with --pipeline: section.key=value")
    parser.add_argument("--worker", nargs=3, metavar=("RUNTIME", "FOLDER", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:  # no benchmark-only package (OpenVINO): what tests/test_benchmarks.py can run anywhere
        args.quick, args.only = True, ["tf_project", "tflite_xnnpack", "onnxruntime"]
    calls = {1: 20, 64: 2} if args.quick else {1: 100, 64: 8}
    if args.pipeline or args.smoke:
        import yaml

        overrides = dict((o.partition("=")[0], yaml.safe_load(o.partition("=")[2])) for o in args.overrides)
        pipeline("smoke" if args.smoke else args.pipeline, overrides, args.stages, args.repeats)
        if args.pipeline:
            return
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]), int(args.worker[2]), calls)
        return
    folder = Path(tempfile.mkdtemp(prefix="bench-runtimes-"))
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"import pathlib, runtimes, transfer_learning; runtimes.convert(pathlib.Path({str(folder)!r}))",
        ],
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "benchmarks")},  # this script's folder, for `import runtimes`
        capture_output=True,
    )
    results = {}
    for name in args.only:
        env, _ = RUNTIMES[name]
        for threads in (1, 2):
            done = subprocess.run(
                [sys.executable, __file__, "--worker", name, str(folder), str(threads)]
                + (["--quick"] if args.quick else []),
                cwd=ROOT,
                capture_output=True,
                text=True,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env},
            )
            if done.returncode != 0:
                results[name, threads] = (
                    done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
                )
                continue
            results[name, threads] = {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    reference = np.load(folder / "tf_project-2.npy")
    print(
        "| runtime | images/s, batch 1 (1 / 2 threads) | images/s, batch 64 (1 / 2 threads) "
        "| largest difference to the project's features | identical with 1 and 2 threads |"
    )
    print("|---|---|---|---|---|")
    for name in args.only:
        one, two = results.get((name, 1)), results.get((name, 2))
        if not isinstance(one, dict) or not isinstance(two, dict):
            print(f"| {RUNTIMES[name][1]} | failed: {one if not isinstance(one, dict) else two} | | | |")
            continue
        a, b = np.load(folder / f"{name}-1.npy"), np.load(folder / f"{name}-2.npy")
        batched = np.load(folder / f"{name}-2-64.npy")
        difference = max(np.abs(b - reference).max(), np.abs(batched - reference).max())
        print(
            f"| {RUNTIMES[name][1]} | {one[1]:.0f} / {two[1]:.0f} | {one[64]:.0f} / {two[64]:.0f} | {difference:.2g} "
            f"| {'yes' if np.array_equal(a, b) else f'no ({np.abs(a - b).max():.2g})'} |"
        )
    print(f"features: {reference.shape[1]} per image, largest {np.abs(reference).max():.3g}; files in {folder}")


if __name__ == "__main__":
    main()
