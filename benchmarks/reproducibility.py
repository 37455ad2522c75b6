"""Benchmark 6: what the reproducibility settings cost, and what they buy, on this CPU.

    python benchmarks/reproducibility.py             # Flowers-17 at 224, 2 augmented copies, 3 fine-tune epochs
    python benchmarks/reproducibility.py --digits    # the embedded default
    python benchmarks/reproducibility.py --smoke     # a few generated images, the project's settings and 1 core (tests)

The project runs TensorFlow with oneDNN on every CPU, limited to its AVX2 kernels
(transfer_learning/__init__.py), and fine-tune with a fixed pool of fine_tune.threads threads. This runs
the stages that use TensorFlow (extract-features ... evaluate) in one fresh clone under:

    project        the project's settings (oneDNN AVX2, fine_tune.threads as in params.yaml)
    1 core         the same on one core of this CPU (taskset): a smaller machine
    8 threads      the same with 8 threads per op outside fine-tune (TF_NUM_INTRAOP_THREADS): a bigger one
    native         oneDNN with every instruction set this CPU has (AVX-512, AMX...), fine-tune on every core:
                   TensorFlow's own choice on CPUs with AVX-512 VNNI/BF16/AMX
    eigen          oneDNN off, fine-tune on every core: TensorFlow's own choice on other CPUs (AVX2 only)
    fine-tune 1 /  the project's settings with fine_tune.threads 1 or 4 (what the param costs or saves)
    fine-tune 4

and prints each stage's time against the project's, which outputs are byte-identical to the
project's (md5), and the test accuracy each gives.
"""

import argparse
import hashlib
import os
from pathlib import Path

import harness

STAGES = ["extract_features", "train_head", "fine_tune", "evaluate"]
OUTPUTS = {
    "extract_features": ["data/features/train_features.npy", "data/activations/train_activations.npy"],
    "train_head": ["models/head.keras"],
    "fine_tune": ["models/model.keras"],
}
CORES = len(os.sched_getaffinity(0))


def configurations(threads: int) -> dict:
    """name -> (environment, fine_tune.threads, command prefix)."""
    project = {"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    return {
        "project": (project, threads, []),
        "1 core": (project, threads, ["taskset", "-c", "0"]),
        "8 threads": (project | {"TF_NUM_INTRAOP_THREADS": "8"}, threads, []),
        "native": ({"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "ALL"}, CORES, []),
        "eigen": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, CORES, []),
        "fine-tune 1": (project, 1, []),
        "fine-tune 4": (project, 4, []),
    }


def md5(paths: list[Path]) -> str:
    """One digest of the files' bytes, in order: equal if and only if every file is (up to md5 collisions)."""
    return hashlib.md5(b"".join(hashlib.md5(path.read_bytes()).digest() for path in paths)).hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digits", action="store_true", help="the embedded default instead of Flowers-17")
    parser.add_argument(
        "--smoke", action="store_true", help="a few generated images, smallest params, two settings: that it runs"
    )
    args = parser.parse_args()

    project = harness.clone("reproducibility")
    if args.smoke:
        harness.set_params(project, harness.smoke_flowers_params())
    elif not args.digits:
        harness.set_params(
            project,
            harness.FLOWERS_PARAMS
            | {"normalize.image_size": 224, "augment.copies": 2, "fine_tune.epochs": 3, "fine_tune.patience": 0},
        )
    threads = harness.read_params(project)["fine_tune"]["threads"]
    print(f"preparing data in {project} ...", flush=True)
    harness.run(["dvc", "repro", "augment"], project)

    results = {}
    chosen = {name: c for name, c in configurations(threads).items() if not args.smoke or name in ("project", "1 core")}
    for name, (env, fine_tune_threads, prefix) in chosen.items():
        harness.set_params(project, {"fine_tune.threads": fine_tune_threads})
        seconds = {}
        for stage in STAGES:
            timed = harness.run([*prefix, "python", "-m", f"stages.{stage}"], project, env=env)
            seconds[stage] = timed.seconds
            if stage == "fine_tune":
                epochs = harness.epoch_seconds(timed.output)
                seconds["fine-tune epoch"] = min(epochs[1:] or epochs)  # the fastest steady epoch: the least disturbed
        evaluation = harness.read_json(project / "metrics/evaluate.json")
        results[name] = {
            "seconds": seconds,
            "md5": {stage: md5([project / path for path in paths]) for stage, paths in OUTPUTS.items()},
            "accuracy": (evaluation["head"]["accuracy"], evaluation["fine_tuned"]["accuracy"]),
        }
        print(f"{name}: done", flush=True)

    reference = results["project"]
    print(
        f"\n{'smoke' if args.smoke else 'Flowers-17 at 224' if not args.digits else 'digits'}, {CORES} cores; "
        "seconds per stage "
        f"(ratio to the project's settings), and whether its output is byte-identical to the project's:"
    )
    header = ["settings"] + [s.replace("_", "-") for s in STAGES] + ["fine-tune epoch", "head / fine-tuned test acc."]
    print(" | ".join(header))
    for name, result in results.items():
        cells = [name]
        for stage in STAGES + ["fine-tune epoch"]:
            ratio = result["seconds"][stage] / reference["seconds"][stage]
            same = "" if stage not in OUTPUTS else (" =" if result["md5"][stage] == reference["md5"][stage] else " ≠")
            cells.append(f"{result['seconds'][stage]:.1f} s ({ratio:.2f}x){same}")
        cells.append(f"{result['accuracy'][0]:.4f} / {result['accuracy'][1]:.4f}")
        print(" | ".join(cells))
    print(
        "\n= byte-identical to the project's output, ≠ different bits. fine-tune threads: "
        + ", ".join(f"{name} {t}" for name, (_, t, _) in chosen.items())
    )


if __name__ == "__main__":
    main()
