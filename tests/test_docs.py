"""The documentation tells the truth: the params page is generated from the schema, every `-S key=value` in a
command of README.md or docs/ is a valid param, every relative link leads somewhere, and the Python snippet of
docs/using-the-model.md runs on a real run's model."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support.projects import ROOT
from transfer_learning import params, params_doc

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]


def test_the_params_page_is_generated_from_the_schema_and_params_yaml():
    page = (ROOT / params_doc.PAGE).read_text(encoding="utf-8")
    defaults = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert page == params_doc.page(page, defaults), "run: python -m transfer_learning.params_doc"
    keys = {
        f"{section}.{key}"
        for section, field in params.Params.model_fields.items()
        for key in field.annotation.model_fields
    }
    assert all(f"| `{key}` |" in page for key in keys) and all(
        field.description
        for section in params.Params.model_fields.values()
        for field in section.annotation.model_fields.values()
    )


def overrides_in(text: str) -> list[tuple[str, str]]:
    """(key, value) of every `-S key=value` in the page's commands (a value in "$(...)" stands for a real path)."""
    return re.findall(r"-S ([a-z_]+\.[a-z_]+)=(\"[^\"]*\"|[^\s`,)]+)", text)


@pytest.mark.parametrize("page", PAGES, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_param_a_documented_command_sets_is_a_valid_param(page, tmp_path, monkeypatch):
    defaults = yaml.safe_load((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(ROOT)  # params check paths (data.source) against the project
    for key, value in overrides_in(page.read_text(encoding="utf-8")):
        section, name = key.split(".")
        assert section in defaults and name in defaults[section], f"{page.name}: -S {key}=...: no such param"
        if (
            value.startswith('"$(')
            or "/path/to/" in value
            or value.startswith("<")
            or "..." in value
            or key == "base.weights"
        ):
            continue  # a placeholder for the reader's own folder, value or weights file
        candidate = {s: dict(v) for s, v in defaults.items()}
        candidate[section][name] = yaml.safe_load(value)
        if section == "data" and name != "source":
            candidate["data"]["source"] = str(tmp_path)  # a CSV option needs no real dataset here
        params.Params.model_validate(candidate)  # raises with the key if the value is not allowed


@pytest.mark.parametrize("page", PAGES, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_leads_to_a_file(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        assert (page.parent / target.split("#")[0]).exists(), f"{page.name}: broken link {target}"


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)


def test_the_python_snippet_of_using_the_model_runs_on_a_real_model(fast_run, tmp_path):
    """The snippet exactly as written, in a fresh interpreter, beside a copy of a real run's models/ and a digit as
    some.jpg."""
    import shutil

    from PIL import Image

    # the
    [snippet] = [block for block in python_blocks(ROOT / "docs" / "using-the-model.md") if "transfer_learning" in block]
    # exports' snippets, with no project code: test_exports.py
    (tmp_path / "models").mkdir()
    for name in ("model.keras", "encoding.json"):
        shutil.copy(fast_run.project / "models" / name, tmp_path / "models" / name)
    Image.open(next((ROOT / "data/raw/digits/7").glob("*.png"))).convert("RGB").save(tmp_path / "some.jpg", quality=95)
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in [str(d) for d in range(10)], result.stdout
