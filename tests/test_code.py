"""The code itself: dvc.yaml lists exactly the code each stage runs and the params keys it reads (computed from
the scripts with ast), TensorFlow is left to the package, and nothing loads untrusted data with a code-running
loader."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from support.projects import ROOT
from transfer_learning import params

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


PACKAGE = "transfer_learning"


def package_imports(module: Path) -> set[str]:
    """Names of the transfer_learning modules that `module` imports directly (at any depth of the file: a function's
    import runs too)."""
    names = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(f"{PACKAGE}."):
            names.add(node.module.split(".")[1])
    return names


def code_of(script: Path) -> set[str]:
    """The script and every package file it runs, transitively (the package's __init__ included)."""
    seen, todo = set(), package_imports(script)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo |= package_imports(ROOT / PACKAGE / f"{name}.py")
    return {script.relative_to(ROOT).as_posix(), f"{PACKAGE}/__init__.py"} | {f"{PACKAGE}/{name}.py" for name in seen}


def script_of(stage: str) -> Path:
    """stages/<name>.py of a stage, from its command (`python -m stages.<name>`)."""
    name = re.fullmatch(r"python -m stages[.](\w+)", STAGES[stage]["cmd"]).group(1)
    return ROOT / "stages" / f"{name}.py"


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_depends_on_exactly_the_code_it_runs(stage):
    script = script_of(stage)
    declared = {dep for dep in STAGES[stage]["deps"] if dep.startswith(("stages/", f"{PACKAGE}/"))}
    expected = code_of(script)
    assert declared - expected == set(), f"{stage} lists code it does not run"
    assert expected - declared == set(), f"{stage} runs code dvc.yaml does not list: its cached results would go stale"


def params_read(script: Path) -> set[str]:
    """Dotted params keys a stage script reads: `p.section.key`, `cfg.key` after `cfg = p.section`, and every key
    of a section handed whole to a function (`variant(image, cfg, ...)`, `compiled_head(..., p.head, ...)`)."""
    tree = ast.parse(script.read_text())
    sections = {}  # local name -> section, e.g. cfg -> augment
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target, value in zip(
                node.targets[0].elts if isinstance(node.targets[0], ast.Tuple) else node.targets,
                node.value.elts if isinstance(node.value, ast.Tuple) else [node.value],
            ):
                if (
                    isinstance(target, ast.Name)
                    and isinstance(value, ast.Attribute)
                    and isinstance(value.value, ast.Name)
                    and value.value.id == "p"
                ):
                    sections[target.id] = value.attr
    keys = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "p"
        ):
            keys.add(f"{node.value.attr}.{node.attr}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in sections:
            keys.add(f"{sections[node.value.id]}.{node.attr}")
        elif isinstance(node, ast.Call):
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                section = (
                    sections.get(arg.id)
                    if isinstance(arg, ast.Name)
                    else arg.attr
                    if isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name) and arg.value.id == "p"
                    else None
                )
                if section:
                    keys |= {f"{section}.{key}" for key in params.Params.model_fields[section].annotation.model_fields}
    return keys


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_declares_exactly_the_params_keys_it_reads(stage):
    script = script_of(stage)
    declared = set(STAGES[stage].get("params", []))
    read = params_read(script)
    assert read - declared == set(), f"{stage} reads params dvc.yaml does not list: changing them would not rerun it"
    assert declared - read == set(), f"{stage} lists params it never reads: changing them reruns it for nothing"


def test_the_data_source_is_a_dependency_of_ingest():
    assert "${data.source}" in STAGES["ingest"]["deps"]


def test_stage_scripts_and_the_command_line_leave_tensorflow_to_the_package():
    """transfer_learning/__init__.py configures TensorFlow (oneDNN on, AVX2 kernels) through environment variables that
    TensorFlow reads when it is imported: a stage script importing keras or tensorflow before the package would skip it.
    The command line (cli.py) imports neither at all: `transfer-learning --help` must not wait 5 s for TensorFlow."""
    for script in [*(ROOT / "stages").glob("*.py"), ROOT / PACKAGE / "cli.py"]:
        for node in ast.walk(ast.parse(script.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.module
                else []
            )
            assert not any(name.split(".")[0] in ("tensorflow", "keras") for name in names), (
                f"{script.name} imports {names}"
            )


def test_the_model_is_registered_as_an_artifact_of_the_stage_that_writes_it():
    artifact = yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]["fine-tuned-model"]
    assert (
        artifact["type"] == "model"
        and artifact["path"] == "models/model.keras"
        and artifact["path"] in STAGES["fine-tune"]["outs"]
    )
    assert "keras" in artifact["labels"] and "models/encoding.json" in artifact["desc"]


def test_every_export_is_registered_as_an_artifact_of_the_export_stage():
    from transfer_learning import exports

    artifacts = yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]
    registered = {spec["path"]: spec for name, spec in artifacts.items() if name != "fine-tuned-model"}
    assert set(registered) == {f"models/export/{file}" for file in exports.FILES.values()}
    assert all(
        spec["type"] == "model" and spec["labels"] and path in STAGES["export"]["outs"]
        for path, spec in registered.items()
    )


def test_every_plot_has_its_own_title_and_the_live_metrics_are_declared():
    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    titled = [next(iter(plot.values())) for plot in dvc_yaml["plots"] if isinstance(plot, dict)]
    titles = [plot["title"] for plot in titled]
    assert len(titles) == 7 and len(set(titles)) == 7, titles
    images = [plot for plot in dvc_yaml["plots"] if isinstance(plot, str)]
    assert images == ["plots/evaluate/figures", "dvclive/train_head/plots/images", "dvclive/fine_tune/plots/images"], (
        "PNG figures carry their titles inside the image"
    )
    live = {
        stage: next(out for out in STAGES[stage]["outs"] if isinstance(out, dict) and "dvclive" in next(iter(out)))
        for stage in ("train-head", "fine-tune")
    }
    assert {stage: next(iter(out)) for stage, out in live.items()} == {
        "train-head": "dvclive/train_head",
        "fine-tune": "dvclive/fine_tune",
    }
    assert dvc_yaml["metrics"] == [f"{folder}/metrics.json" for folder in ("dvclive/train_head", "dvclive/fine_tune")]
    curves = [file for plot in titled if isinstance(plot.get("y"), dict) for file in plot["y"]]
    assert (
        all(
            file.startswith(
                (
                    "dvclive/train_head/plots/metrics/",
                    "dvclive/fine_tune/plots/metrics/",
                    "plots/evaluate/calibration/",
                    "plots/evaluate/predictions/",  # the row-normalized confusion matrices
                )
            )
            for file in curves
        )
        and len(curves) == 8
    )


STAGE_SOURCES = sorted([*(ROOT / "stages").rglob("*.py"), *(ROOT / PACKAGE).rglob("*.py")])


def calls(name: str):
    """(file, call node) for every call of `<something>.name(...)` or `name(...)` in the stage code."""
    for path in STAGE_SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                if (isinstance(func, ast.Attribute) and func.attr == name) or (
                    isinstance(func, ast.Name) and func.id == name
                ):
                    yield path.relative_to(ROOT), node


def keyword(node: ast.Call, name: str):
    return next((ast.literal_eval(k.value) for k in node.keywords if k.arg == name), "missing")


def test_the_code_has_no_unsafe_loader():
    for path in STAGE_SOURCES:
        text = path.read_text()
        tree = ast.parse(text)
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
        }
        assert not imported & {"pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve", "marshal", "torch"}, path
        for banned in (
            "allow_pickle=True",
            "read_pickle",
            "unsafe_load",
            "full_load",
            "safe_mode=False",
            "enable_unsafe_deserialization",
            "Lambda(",
            "eval(",
            "exec(",
        ):
            assert banned not in text, f"{path}: {banned}"
    np_loads = [
        (path, node)
        for path, node in calls("load")
        if isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) and node.func.value.id == "np"
    ]
    assert np_loads and all(keyword(node, "allow_pickle") is False for _, node in np_loads), np_loads
    yaml_loads = [
        path
        for path, node in calls("load")
        if isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "yaml"
    ]
    assert yaml_loads == [] and any(True for _ in calls("safe_load"))
    load_models = list(calls("load_model"))
    assert load_models and all(keyword(node, "safe_mode") is True for _, node in load_models)


def test_evaluate_escapes_every_csv_it_writes():
    """Every CSV evaluate writes holds class names from the data."""
    writes = [node for path, node in calls("write_csv") if path.name == "evaluate.py"]
    assert len(writes) == 2 and all(keyword(node, "escape_formulas") is True for node in writes)
