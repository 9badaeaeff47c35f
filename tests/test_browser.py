"""Offline widgets and maths: the vendored widget JavaScript and MathJax (npcrepro.webassets) and the
headless Chromium check (npcrepro.browsercheck).

The unit tests need neither a browser nor the network (except the install test, which runs the real
``npm ci`` into a temp copy of book/_static/vendor and skips when npm or its registry is missing).
The end-to-end test executes a tiny notebook with papermill, builds a one-page Jupyter Book from it
with the repository's widget settings, and opens it in headless Chromium with every host name
unresolvable; it skips when there is no Chromium (``apt-get install chromium``).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
import yaml

from npcrepro import webassets
from npcrepro.browsercheck import check_page, find_chromium
from npcrepro.errors import NpcreproError
from npcrepro.paths import repo_root

REPO = repo_root()
VENDOR = REPO / webassets.VENDOR_DIR
PAGE = "book/runs/smoke/explorer"  # nested like the real chapters: scripts must resolve from 3 levels down


def _quiet(*_a, **_k):
    pass


def _sphinx_config() -> dict:
    return yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))["sphinx"]["config"]


# --------------------------------------------------------------------------------------------------
# no network, no browser

def test_config_points_myst_nb_at_the_vendored_files():
    cfg = _sphinx_config()
    assert "book/_static" in cfg["html_static_path"]
    assert list(cfg["nb_ipywidgets_js"].items()) == list(webassets.widget_js_mapping().items())
    assert list(cfg["nb_ipywidgets_js"]) == ["vendor/widgets/require.js", "vendor/widgets/config.js",
                                             "vendor/widgets/embed-amd.js"]  # load order matters
    assert cfg["mathjax_path"] == webassets.MATHJAX_PATH  # not Sphinx's CDN default
    assert "://" not in cfg["mathjax_path"] and not cfg["mathjax_path"].startswith("/")
    for url in cfg["nb_ipywidgets_js"]:
        assert "://" not in url and not url.startswith("/"), url


def test_pins_are_exact_and_match_ipywidgets():
    deps = json.loads((VENDOR / "package.json").read_text(encoding="utf-8"))["dependencies"]
    lock = json.loads((VENDOR / "package-lock.json").read_text(encoding="utf-8"))["packages"]
    assert set(deps) == {"@jupyter-widgets/html-manager", "mathjax", "requirejs", "@niivue/niivue"}
    for name, pin in deps.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", pin), f"{name} is not pinned exactly: {pin}"
        assert lock[f"node_modules/{name}"]["version"] == pin
        assert lock[f"node_modules/{name}"]["integrity"].startswith("sha512-")
    # ipywidgets 8 (widget state version_major 2) is drawn by html-manager 1.x
    assert version("ipywidgets").split(".")[0] == "8"
    assert deps["@jupyter-widgets/html-manager"].startswith("1.")
    assert deps["mathjax"].startswith("3.")  # tex-mml-chtml.js, as Sphinx's mathjax_path expects


def test_downloads_are_git_ignored():
    ignored = (VENDOR / ".gitignore").read_text(encoding="utf-8").split()
    assert {"node_modules/", "widgets/", "mathjax/", "niivue/"} <= set(ignored)


def _vendor_copy(root: Path) -> Path:
    dst = root / webassets.VENDOR_DIR
    dst.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy2(VENDOR / name, dst / name)
    return dst


def test_missing_npm_is_a_one_line_error(tmp_path, monkeypatch):
    _vendor_copy(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    with pytest.raises(NpcreproError) as exc:
        webassets.ensure_web_assets(tmp_path, log=_quiet)
    msg = str(exc.value)
    assert "npm" in msg and "install" in msg and "\n" not in msg


def test_missing_lock_file_is_an_error(tmp_path):
    with pytest.raises(NpcreproError, match="package-lock.json"):
        webassets.ensure_web_assets(tmp_path, log=_quiet)


def test_remote_assets_are_scripts_and_loaded_links_not_canonical_urls():
    from npcrepro.browsercheck import _DomCounter

    c = _DomCounter()
    c.feed('<link rel="canonical" href="https://example.org/book/page.html">'
           '<link rel="stylesheet" href="https://cdn.example.org/a.css">'
           '<script src="https://cdn.example.org/b.js"></script><script src="../_static/c.js"></script>')
    assert c.remote_refs == ["https://cdn.example.org/a.css", "https://cdn.example.org/b.js"]


def test_find_chromium_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CHROMIUM", str(tmp_path / "nope"))
    fallback = find_chromium()  # a bad $CHROMIUM falls back to PATH
    monkeypatch.delenv("CHROMIUM")
    assert fallback == find_chromium()
    fake = tmp_path / "my-chrome"
    fake.write_text("#!/bin/sh\n", encoding="utf-8")
    fake.chmod(0o755)
    monkeypatch.setenv("CHROMIUM", str(fake))
    assert find_chromium() == str(fake)


# --------------------------------------------------------------------------------------------------
# npm ci (needs the npm registry)

def _registry_reachable() -> bool:
    try:
        return subprocess.run(["npm", "ping"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def vendored(tmp_path_factory) -> tuple[Path, float]:
    """A temp book root whose book/_static/vendor/widgets was filled by a real ``npm ci``."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed (apt-get install npm): cannot fetch the widget JavaScript")
    root = tmp_path_factory.mktemp("vendored")
    _vendor_copy(root)
    t0 = time.perf_counter()
    try:
        webassets.ensure_web_assets(root, log=_quiet)
    except NpcreproError as exc:
        if not _registry_reachable():
            pytest.skip(f"npm registry unreachable (`npm ping` failed): {exc}")
        raise
    return root, time.perf_counter() - t0


@pytest.mark.slow
def test_ensure_web_assets_installs_once(vendored, monkeypatch):
    root, _ = vendored
    vendor = root / webassets.VENDOR_DIR
    widgets = vendor / "widgets"
    for name in ("require.js", "config.js", "embed-amd.js"):
        assert (widgets / name).stat().st_size > 500, name
    assert (widgets / "embed-amd.js").stat().st_size > 2_000_000
    assert list(widgets.glob("*.woff2")), "the widget CSS loads its fonts next to embed-amd.js"
    assert not (vendor / "node_modules").exists(), "node_modules would be copied into the build"
    stamp = json.loads((widgets / webassets.STAMP).read_text(encoding="utf-8"))
    pins = json.loads((vendor / "package.json").read_text(encoding="utf-8"))["dependencies"]
    assert stamp["versions"] == pins
    assert "RequireJS 2.3.8" in (widgets / "require.js").read_text(encoding="utf-8")[:300]
    mathjax = vendor / "mathjax"
    assert (mathjax / "tex-mml-chtml.js").stat().st_size > 500_000
    assert list((mathjax / "output/chtml/fonts/woff-v2").glob("MathJax_Main-Regular.woff"))
    assert (mathjax / "input/tex/extensions/physics.js").is_file()  # autoloaded on demand
    niivue = vendor / "niivue" / "niivue.js"  # the static viewer's ES module, self-contained
    assert niivue.stat().st_size > 1_000_000
    assert "export {" in niivue.read_text(encoding="utf-8")[-20_000:]
    assert not re.search(r'^import .* from "', niivue.read_text(encoding="utf-8"), re.M)

    # second call: no npm, (almost) no time, nothing rewritten
    def no_npm(*_a, **_k):
        raise AssertionError("npm ci ran again although the files were there")

    monkeypatch.setattr(webassets, "_npm_ci", no_npm)
    before = (widgets / "embed-amd.js").stat().st_mtime_ns
    t0 = time.perf_counter()
    mapping = webassets.ensure_web_assets(root, log=_quiet)
    assert time.perf_counter() - t0 < 0.5
    assert mapping == webassets.widget_js_mapping() == _sphinx_config()["nb_ipywidgets_js"]
    assert all(v == {} for v in mapping.values())
    assert (widgets / "embed-amd.js").stat().st_mtime_ns == before
    # a stale config.js is rewritten without npm
    (widgets / "config.js").write_text("// old\n", encoding="utf-8")
    webassets.ensure_web_assets(root, log=_quiet)
    assert "require.config" in (widgets / "config.js").read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# end to end: papermill -> jupyter-book -> headless Chromium, no network

_CELLS = [
    "import io\n"
    "import matplotlib.pyplot as plt\n"
    "import ipywidgets as w\n"
    "from IPython.display import display",
    # a slider, an icon button (loads the widget fonts) and an Image widget holding a figure's PNG
    "fig, ax = plt.subplots(figsize=(4, 3))\n"
    "ax.plot([0, 1, 2], [0, 1, 0], lw=4)\n"
    "buf = io.BytesIO()\n"
    "fig.savefig(buf, format='png')\n"
    "plt.close(fig)\n"
    "display(w.VBox([w.IntSlider(value=3, min=0, max=10, description='n'),\n"
    "                w.Button(description='go', icon='check'),\n"
    "                w.Image(value=buf.getvalue(), format='png', width=300)]))",
    # a plain figure output
    "fig, ax = plt.subplots(figsize=(4, 3))\n"
    "ax.imshow([[0, 1], [1, 0]], cmap='viridis')\n"
    "display(fig)\n"
    "plt.close(fig)",
]


@pytest.fixture(scope="module")
def executed_notebook(tmp_path_factory) -> Path:
    import nbformat
    import papermill

    d = tmp_path_factory.mktemp("nb")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# Widget check\n\nThe area is $\\pi r^2$, and\n\n"
                                              "$$\\mathrm{DSC} = \\frac{2|A \\cap B|}{|A| + |B|}$$")]
    nb.cells += [nbformat.v4.new_code_cell(src) for src in _CELLS]
    nbformat.write(nb, d / "in.ipynb")
    papermill.execute_notebook(str(d / "in.ipynb"), str(d / "out.ipynb"), kernel_name="python3",
                               progress_bar=False, log_output=False, cwd=str(d))
    return d / "out.ipynb"


@pytest.mark.slow
def test_papermill_keeps_widget_state(executed_notebook):
    meta = json.loads(executed_notebook.read_text(encoding="utf-8"))["metadata"]
    state = meta["widgets"]["application/vnd.jupyter.widget-state+json"]
    assert state["version_major"] == 2
    names = {m["model_name"] for m in state["state"].values()}
    assert {"IntSliderModel", "ButtonModel", "ImageModel", "VBoxModel"} <= names


def _build_book(root: Path, nb: Path, vendor: Path | None, sphinx_config: dict) -> Path:
    """A one-chapter Jupyter Book around ``nb`` with ``sphinx_config``; ``vendor``: a vendor folder
    whose widgets/ and mathjax/ are copied into the book's static path (None: no local copies)."""
    (root / Path(PAGE).parent).mkdir(parents=True)
    shutil.copy2(nb, root / f"{PAGE}.ipynb")
    (root / "intro.md").write_text("# Intro\n\nA one-chapter book.\n", encoding="utf-8")
    (root / "_toc.yml").write_text(f"format: jb-book\nroot: intro\nchapters:\n  - file: {PAGE}\n", encoding="utf-8")
    config = {"title": "widget check", "only_build_toc_files": True,
              "execute": {"execute_notebooks": "off"},
              "parse": {"myst_enable_extensions": ["dollarmath"]}, "sphinx": {"config": sphinx_config}}
    (root / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")  # keep script order
    if vendor is not None:
        for sub in ("widgets", "mathjax"):
            shutil.copytree(vendor / sub, root / webassets.VENDOR_DIR / sub)
    exe = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run([str(exe) if exe.exists() else "jupyter-book", "build", str(root), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    page = root / "_build" / "html" / f"{PAGE}.html"
    assert proc.returncode == 0 and page.is_file(), (proc.stdout + proc.stderr)[-3000:]
    return page


class _Scripts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" and "vendor/widgets/" in (a.get("src") or ""):
            self.srcs.append(a["src"])


def _needs_chromium() -> str:
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium, or set $CHROMIUM)")
    return exe


@pytest.mark.slow
def test_book_page_draws_widgets_offline(vendored, executed_notebook, tmp_path):
    _needs_chromium()
    root, _ = vendored
    cfg = _sphinx_config()
    page = _build_book(tmp_path / "site", executed_notebook, root / webassets.VENDOR_DIR,
                       {k: cfg[k] for k in ("html_static_path", "nb_ipywidgets_js", "mathjax_path")})

    # the scripts are page-relative, in load order, and point at files Sphinx copied into _static
    html_root = tmp_path / "site" / "_build" / "html"
    parser = _Scripts()
    parser.feed(page.read_text(encoding="utf-8"))
    assert [s.split("?")[0] for s in parser.srcs] == [
        f"../../../_static/{k}" for k in cfg["nb_ipywidgets_js"]]
    for src in parser.srcs:
        target = urlsplit(urljoin(page.as_uri(), src)).path
        assert Path(target).is_file(), src
    assert (html_root / "_static/vendor/widgets/1551f4f60c37af51121f.woff2").is_file()
    assert not (html_root / "_static/vendor/node_modules").exists()

    report = check_page(page, tmp_path / "explorer.png", expect_widgets=2, expect_figures=1,
                        expect_math=2, timeout_s=60)
    assert report["ok"], report["reasons"]
    assert report["widgets_rendered"] >= 2  # VBox, IntSlider, Button, Image
    assert {"widget-slider", "widget-image"} <= set(report["widget_kinds"])
    assert report["static_images"] >= 1 and report["widget_images"] >= 1
    assert report["nonwhite_fraction"] > 0.02
    assert report["external_requests"] == [] and report["missing_local"] == []
    assert report["remote_references"] == [] and report["math_rendered"] >= 2


@pytest.mark.slow
def test_check_detects_cdn_widgets(executed_notebook, tmp_path):
    """Control: myst-nb's and Sphinx's default CDN scripts (widgets, MathJax) cannot load with the
    network cut, and the check says so."""
    _needs_chromium()
    page = _build_book(tmp_path / "site", executed_notebook, None, {})
    report = check_page(page, tmp_path / "cdn.png", expect_widgets=1, timeout_s=60)
    assert not report["ok"]
    assert report["widgets_rendered"] == 0 and report["widget_placeholders"] >= 1
    assert any("cdn" in u for u in report["external_requests"]), report["external_requests"]
    assert report["math_rendered"] == 0
    assert any("mathjax" in u for u in report["remote_references"]), report["remote_references"]
