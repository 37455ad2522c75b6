"""`dvc plots diff -o <folder>` and reports/*.md as a reviewer sees them: the pages rendered by headless Chromium.

DVC's page loads Vega, Vega-Lite and vega-embed from a CDN; this machine (and CI) has no internet, so the
<script> tags are pointed at the same versions installed from npm (`make vega`, into .cache/npm). The page is
otherwise DVC's own. `inspect()` adds a probe that records, for every plot, whether it rendered, its title and
the images it loaded; `screenshot()` photographs the page as it is (Vega draws on a canvas, as for a reviewer).
`inspect_markdown()` renders a Markdown report (CommonMark with GitHub's tables, as a pull-request comment shows it)
and records every image (its natural size: 0 when it did not load) and every table (its rows and cells).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from support.projects import ROOT

NPM = ROOT / ".cache" / "npm" / "node_modules"
BUILD = {"vega": "build/vega.min.js", "vega-lite": "build/vega-lite.min.js", "vega-embed": "build/vega-embed.min.js"}
CDN_SCRIPT = re.compile(r'<script src="https://cdn\.jsdelivr\.net/npm/(vega|vega-lite|vega-embed)@([\d.]+)"></script>')
# Chromium as the machine's browser tests run it: no sandbox (root), no network of its own, a fresh profile.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-file-access-from-files",
    "--hide-scrollbars",
    "--virtual-time-budget=20000",
]

# Runs before DVC's plot scripts: every vegaEmbed call renders as SVG (text in the page, where titles can be read) and
# is remembered; once all have settled, the result is written into the page as JSON for --dump-dom.
PROBE = """<script>
window.__embeds = [];
const __embed = window.vegaEmbed;
window.vegaEmbed = function (el, spec, options) {
  const done = __embed(el, spec, Object.assign({}, options, {renderer: "svg"}))
    .then(() => ({id: el, error: null}), (e) => ({id: el, error: String(e)}));
  window.__embeds.push(done);
  return done;
};
window.addEventListener("load", async () => {
  const embeds = await Promise.all(window.__embeds);
  const vega = embeds.map(({id, error}) => {
    const div = document.querySelector(id);
    // the chart's own title: the title mark nearest the root (a facet's headers are titles too, deeper down)
    const depth = (node) => {
      let n = 0;
      for (let g = node.parentElement; g; g = g.parentElement) n += g.matches("g.mark-group") ? 1 : 0;
      return n;
    };
    const titles = Array.from(div.querySelectorAll("g.role-title-text text")).sort((a, b) => depth(a) - depth(b));
    const title = titles.length ? titles[0].textContent : null;
    const svg = div.querySelector("svg.marks");
    const r = svg ? svg.getBoundingClientRect() : null;  // where it is drawn on the page, for a screenshot's pixels
    return {id: id, error: error, svg: div.querySelectorAll("svg.marks").length,
            marks: div.querySelectorAll("svg.marks path, svg.marks rect, svg.marks line").length,
            title: title, box: r && [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]};
  });
  const images = Array.from(document.querySelectorAll("div[id] > p:first-child"))
    .filter((p) => p.parentElement.querySelector("img"))
    .map((p) => ({title: p.textContent, loaded: Array.from(p.parentElement.querySelectorAll("img"))
      .map((img) => img.complete && img.naturalWidth > 0 ? [img.naturalWidth, img.naturalHeight] : null)}));
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({vega: vega, images: images});
  document.body.appendChild(out);
});
</script>"""


def chromium(vega: bool = True) -> str:
    """The browser (and with `vega` npm's Vega scripts), or a skip with the reason (a failure under CI, which installs
    them: .ci/run)."""
    found = shutil.which("chromium")
    missing = [] if found else ["chromium (apt-get install chromium)"]
    if vega:
        missing += [
            f"{name} ({NPM / name / path})" for name, path in BUILD.items() if not (NPM / name / path).is_file()
        ]
    if missing:
        what = "run `make vega` and install chromium" if vega else "install chromium"
        message = f"the review-page test needs {', '.join(missing)}: {what}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def local_scripts(page: Path) -> Path:
    """The page with its CDN scripts pointed at the npm copies (the versions DVC asks for); -> the new page beside
    it."""
    html = page.read_text()
    wanted = CDN_SCRIPT.findall(html)
    assert sorted(name for name, _ in wanted) == sorted(BUILD), f"DVC's page loads other scripts now: {wanted}"
    for name, version in wanted:
        installed = json.loads((NPM / name / "package.json").read_text())["version"]
        assert installed == version, f"DVC's page loads {name} {version}, npm installed {installed}: update `make vega`"
    local = CDN_SCRIPT.sub(lambda m: f'<script src="{(NPM / m.group(1) / BUILD[m.group(1)]).as_uri()}"></script>', html)
    assert "http" not in re.sub(r"https?://(vega\.github\.io/schema|www\.w3\.org)[^\"' ]*", "", local), (
        "the page still loads something online"
    )
    out = page.with_name("local.html")
    out.write_text(local)
    return out


def run_chromium(browser: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        result = subprocess.run(
            [browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def inspect(browser: str, page: Path, size=(1500, 4200)) -> dict:
    """Every plot of the page as rendered in a window of `size` (that of its screenshot(), to find a chart's pixels):
    {'vega': [{id, error, svg, marks, title, box: [x, y, width, height] in the page}], 'images': [{title, loaded}]}."""
    probed = page.with_name("probed.html")
    probed.write_text(page.read_text().replace("</head>", PROBE + "\n</head>", 1))
    dom = run_chromium(browser, f"--window-size={size[0]},{size[1]}", "--dump-dom", probed.as_uri()).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, f"the probe never reported (a script failed?):\n{dom[-3000:]}"
    import html

    return json.loads(html.unescape(found.group(1)))


def screenshot(browser: str, page: Path, png: Path, size=(1500, 4200)) -> Path:
    run_chromium(browser, f"--window-size={size[0]},{size[1]}", f"--screenshot={png}", page.as_uri())
    assert png.stat().st_size > 10_000
    return png


# Runs once a Markdown page has loaded (its images included): what each image and table became.
MARKDOWN_PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images).map((img) => ({src: img.getAttribute("src"), alt: img.alt,
    width: img.complete ? img.naturalWidth : 0, height: img.complete ? img.naturalHeight : 0}));
  const tables = Array.from(document.querySelectorAll("table")).map((table) => ({
    rows: table.querySelectorAll("tbody tr").length, columns: table.querySelectorAll("thead th").length,
    cells: Array.from(new Set(Array.from(table.querySelectorAll("tbody tr")).map((tr) => tr.cells.length)))}));
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({images: images, tables: tables, text: document.body.innerText});
  document.body.appendChild(out);
});
</script>"""


def markdown_html(report: Path) -> str:
    """The report as HTML: CommonMark with GitHub's pipe tables (markdown-it-py, which DVC's rich already installs),
    its relative links resolved from the report's folder (<base>), as GitHub resolves them in the repository."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(report.read_text(encoding="utf-8"))
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><base href="{report.parent.as_uri()}/">'
        f"{MARKDOWN_PROBE}</head><body>{body}</body></html>"
    )


def inspect_markdown(browser: str, report: Path, page: Path) -> dict:
    """The report rendered into `page` (outside the project: its workspace stays as it is) and loaded by Chromium:
    {'images': [{src, alt, width, height}], 'tables': [{rows, columns, cells: the distinct cells per row}], 'text'}."""
    page.write_text(markdown_html(report), encoding="utf-8")
    dom = run_chromium(browser, "--dump-dom", page.as_uri()).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, f"the probe never reported (a script failed?):\n{dom[-3000:]}"
    import html

    return json.loads(html.unescape(found.group(1)))
