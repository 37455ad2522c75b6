"""The project's command line: `transfer-learning <command>` (installed by `pip install -e .`, see pyproject.toml).

    transfer-learning predict new_images/ -o predictions.csv     # the trained model on new images, one CSV row each
    transfer-learning cuts inception_v3 299                      # a base's valid fine-tune cuts (docs/backbones.md)
    transfer-learning check-params -S data.source=../images      # params.yaml as a stage checks it, before queueing

Argument parsing imports nothing heavy: TensorFlow (about 5 s to import) loads only when a command needs it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transfer_learning import errors


def predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Apply the trained model to new images (a folder, or a CSV listing them) and write one CSV row per image."
    )
    parser.epilog = (
        "exit status: 0 every image predicted; 3 predictions written, some files skipped; 1 error "
        "(nothing written); 2 bad arguments"
    )
    parser.add_argument(
        "source", type=Path, help="a folder of images (nested folders too), or a .csv file listing them"
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("predictions.csv"), help="the CSV to write (default: %(default)s)"
    )
    parser.add_argument("--model", type=Path, default=Path("models/model.keras"), help="default: %(default)s")
    parser.add_argument("--encoding", type=Path, help="the model's encoding.json (default: the one beside the model)")
    parser.add_argument(
        "--path-column",
        default="image",
        help="CSV source: the column of image paths, relative to the CSV's folder (default: %(default)s)",
    )
    parser.add_argument(
        "--top-k", type=int, default=3, help="classification: the most likely classes to list (default: %(default)s)"
    )


def predict(args: argparse.Namespace) -> None:
    from transfer_learning import prediction  # imports TensorFlow

    prediction.predict_files(args.source, args.output, args.model, args.encoding, args.path_column, args.top_k)


def cuts_arguments(parser: argparse.ArgumentParser) -> None:
    from transfer_learning import cuts  # the table of bases only: no TensorFlow yet

    cuts.arguments(parser)


def cuts(args: argparse.Namespace) -> None:
    from transfer_learning import cuts  # imports TensorFlow when it builds the base

    cuts.main(args)


def check_params_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Check params.yaml, with the overrides `dvc exp run -S` would apply, as every stage does before any work; "
        "run it from the project's root before queueing an experiment: a queued one runs in a copy of the project, "
        "where DVC can fail before any stage runs (a relative data.source outside the project)."
    )
    parser.add_argument(
        "-S",
        "--set-param",
        dest="overrides",
        action="append",
        default=[],
        metavar="section.key=value",
        help="as for dvc exp run (repeatable)",
    )


def check_params(args: argparse.Namespace) -> None:
    from transfer_learning import params

    overrides = dict(params.override(text) for text in args.overrides)
    params.load(overrides=overrides)
    print(f"{params.paths.PARAMS}: valid" + (f" with {', '.join(args.overrides)}" if overrides else ""))


COMMANDS = {
    "predict": (
        predict_arguments,
        predict,
        "nothing to resume: run it again",
        "the trained model on new images: one CSV row each",
    ),
    "cuts": (
        cuts_arguments,
        cuts,
        "nothing to resume: run it again",
        "where fine_tune.unfreeze_from can cut a base, with cached activations, and their sizes (docs/backbones.md)",
    ),
    "check-params": (
        check_params_arguments,
        check_params,
        "nothing to resume: run it again",
        "check params.yaml (with -S overrides), e.g. before dvc exp run --queue",
    ),
}


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(
        prog="transfer-learning", description="Transfer learning as a DVC pipeline: commands for its users."
    )
    commands = main_parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (add_arguments, _, _, help_text) in COMMANDS.items():
        add_arguments(commands.add_parser(name, help=help_text))
    return main_parser


def main(argv: list[str] | None = None) -> None:
    main_parser = parser()
    args = main_parser.parse_args(argv)
    if args.command == "predict" and args.top_k < 1:
        main_parser.error("--top-k must be at least 1")
    _, command, again, _ = COMMANDS[args.command]
    errors.run(lambda: command(args), again=again)


if __name__ == "__main__":
    main()
