"""The review against a base revision (`make review BASE=main`): what this workspace changed, for a pull-request
comment.

    python -m transfer_learning.review_diff main

- reports/review-diff.md: the params and metrics that changed against the revision (`dvc params diff --md`,
  `dvc metrics diff --md`) and every plot of `dvc plots diff`, changed or not; a changed image is shown for both
  revisions side by side (the copies `dvc plots diff -o reports/plots-diff` makes), the charts are on its page
  (reports/plots-diff/index.html).
- reports/comment.md: reports/review.md (evaluate's review of this run) followed by review-diff.md, the page to post:
  `cml comment create reports/comment.md` (CML uploads the images it links).

Neither is a pipeline output (git ignores them): they describe the workspace against a revision, not a run.
No TensorFlow; DVC runs as `python -m dvc` of this Python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from transfer_learning import files, paths
from transfer_learning.errors import PipelineError, run

DIFF = paths.REVIEW.parent / "review-diff.md"
COMMENT = paths.REVIEW.parent / "comment.md"
PLOTS = paths.REVIEW.parent / "plots-diff"


def dvc(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise PipelineError(
            f"dvc {' '.join(args)} failed: {(result.stderr or result.stdout).strip().splitlines()[-1:]}; "
            "is the revision a commit, branch or tag of this repository?"
        )
    return result.stdout


def plot_changes(data: dict, base: str) -> list[tuple[str, str, list[str]]]:
    """Per plot of `dvc plots diff --json`: (name, what changed, the images to show: base's then the workspace's)."""
    changes = []
    for name, entries in data.items():
        if entries and entries[0]["type"] == "image":
            urls = {entry["revisions"][0]: Path(entry["url"]) for entry in entries}
            if base in urls and "workspace" in urls:
                same = urls[base].read_bytes() == urls["workspace"].read_bytes()
                changes.append(
                    (name, "unchanged" if same else "changed", [] if same else [urls[base], urls["workspace"]])
                )
            else:
                changes.append((name, "new" if "workspace" in urls else "removed", list(urls.values())))
            continue
        rows = {}
        for entry in entries:
            for row in entry["content"]["data"]["values"]:
                rows.setdefault(row.get("rev"), []).append(
                    json.dumps({k: v for k, v in row.items() if k != "rev"}, sort_keys=True)
                )
        if base in rows and "workspace" in rows:
            changes.append(
                (name, "unchanged" if rows[base] == rows["workspace"] else "changed (chart: plots-diff/index.html)", [])
            )
        else:
            changes.append((name, "new" if "workspace" in rows else "removed", []))
    return changes


def markdown(base: str, params: str, metrics: str, changes: list, report: Path) -> str:
    def link(image: Path) -> str:
        return Path(os.path.relpath(image, report.parent)).as_posix()

    lines = [
        f"# Changes against {base}",
        "",
        f"`dvc params diff {base}`, `dvc metrics diff {base}` and `dvc plots diff {base}`.",
        "",
        "## Params",
        "",
        params.strip() if params.strip().count("\n") > 1 else "No param changed.",
        "",
        "## Metrics",
        "",
        metrics.strip() if metrics.strip().count("\n") > 1 else "No metric changed.",
        "",
        "## Plots",
        "",
        "| plot | against " + base + " |",
        "|---|---|",
    ]
    lines += [f"| {name} | {change} |" for name, change, _ in changes]
    for name, change, images in changes:
        if images:
            shown = " ".join(
                f"![{name} ({'workspace' if i == len(images) - 1 and change != 'removed' else base})]({link(image)})"
                for i, image in enumerate(images)
            )
            lines += ["", f"### {name}: {change}", "", shown]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise PipelineError("usage: python -m transfer_learning.review_diff <git revision> (make review BASE=main)")
    base = argv[0]
    params, metrics = dvc("params", "diff", base, "--md"), dvc("metrics", "diff", base, "--md")
    plots = json.loads(dvc("plots", "diff", base, "-o", str(PLOTS), "--json"))
    text = markdown(base, params, metrics, plot_changes(plots.get("data", {}), base), DIFF)
    for path, content in ((DIFF, text), (COMMENT, paths.REVIEW.read_text(encoding="utf-8") + "\n" + text)):
        with files.atomic_path(path) as tmp:
            tmp.write_text(content, encoding="utf-8")
    print(f"review: {DIFF}, {COMMENT} (post it with: cml comment create {COMMENT})")


if __name__ == "__main__":
    run(main)
