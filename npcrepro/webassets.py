"""Vendored JavaScript that lets the HTML book draw ipywidgets and typeset maths with no network.

myst-nb adds the scripts named in the Sphinx option ``nb_ipywidgets_js`` to every page whose notebook
metadata holds widget state (``metadata.widgets["application/vnd.jupyter.widget-state+json"]``). Its
default points at two CDNs; ``_config.yml`` points it at local copies instead::

    sphinx:
      config:
        html_static_path: ["book/_static"]
        nb_ipywidgets_js:
          vendor/widgets/require.js: {}
          vendor/widgets/config.js: {}
          vendor/widgets/embed-amd.js: {}

Those keys are paths relative to ``_static``: myst-nb hands them to ``app.add_js_file``, Sphinx prefixes
``_static/`` and writes each ``src`` relative to the page (``../../../_static/...`` from
``book/runs/cpu/explorer.html``), so nested pages resolve them too.

The files come from the npm packages pinned in ``book/_static/vendor/package.json`` and its lock file
(``@jupyter-widgets/html-manager`` bundles @jupyter-widgets/base, controls and output for ipywidgets 7
and 8, plus the Font Awesome fonts its CSS loads relative to itself; ``requirejs`` is the AMD loader it
needs). They are not committed: :func:`ensure_web_assets` runs ``npm ci`` and copies what the page needs
into ``book/_static/vendor/widgets/`` (git-ignored), once per lock file.

MathJax 3 (npm ``mathjax``) is vendored the same way into ``book/_static/vendor/mathjax/``: Sphinx
and myst-nb put ``mathjax_path`` on every page that may hold maths, and its default is a CDN, so
``_config.yml`` sets it to :data:`MATHJAX_PATH` (relative to ``_static``). The combined
``tex-mml-chtml.js`` loads its fonts, and any TeX extension it autoloads, relative to itself; those
folders are copied next to it (:data:`_MATHJAX_PARTS`).

NiiVue (npm ``@niivue/niivue``, BSD-2-Clause), the WebGL2 NIfTI viewer that
:mod:`npcrepro.viz.static_viewer` puts on the explorer page, is vendored the same way into
``book/_static/vendor/niivue/``: its self-contained ES-module build (``dist/index.js``, no bare
imports) as ``niivue.js``. An ES module never calls RequireJS's ``define``, so it coexists with the
widget scripts on the same page (its UMD build would register itself as an anonymous AMD module).

``config.js`` (written here, not from npm) runs between the two widget scripts: the bundle defines *named* AMD modules,
so RequireJS would otherwise derive their URL -- and webpack its public path for the fonts -- from the
page's folder; it maps those names onto ``embed-amd.js`` next to itself so everything loads from
``_static/vendor/widgets/``. Third-party widget modules (not in the bundle) would still fall back to
the html-manager's CDN; the book uses only core widgets.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from .errors import NpcreproError
from .paths import exclusive_lock, repo_root

#: Where the npm project lives, relative to the repository root.
VENDOR_DIR = Path("book") / "_static" / "vendor"
#: The sub-folders of :data:`VENDOR_DIR` that the book serves (git-ignored, made by ensure_web_assets).
WIDGETS_SUBDIR = "widgets"
MATHJAX_SUBDIR = "mathjax"
NIIVUE_SUBDIR = "niivue"
#: NiiVue's self-contained ES module, relative to ``_static`` (the static viewer imports it).
NIIVUE_PATH = f"vendor/{NIIVUE_SUBDIR}/niivue.js"
#: Files copied into :data:`NIIVUE_SUBDIR`: destination name -> source path relative to node_modules.
_NIIVUE_FILES = {"niivue.js": "@niivue/niivue/dist/index.js", "package.json": "@niivue/niivue/package.json"}
#: Sphinx's ``mathjax_path`` (relative to ``_static``): the vendored MathJax instead of its CDN.
MATHJAX_PATH = f"vendor/{MATHJAX_SUBDIR}/tex-mml-chtml.js"
#: What MathJax needs next to tex-mml-chtml.js (paths relative to node_modules/mathjax/es5): its
#: CHTML fonts, the TeX extensions it autoloads, the accessibility and menu modules it loads on demand.
_MATHJAX_PARTS = ("tex-mml-chtml.js", "output/chtml/fonts/woff-v2", "input/tex/extensions", "a11y", "ui")
#: The Sphinx static path (relative to the book root) that holds VENDOR_DIR.
STATIC_DIR = Path("book") / "_static"
STAMP = ".stamp.json"  # dot-file: Sphinx never copies it into the build

#: Files copied from node_modules: destination name -> source path relative to node_modules.
_COPIED = {
    "require.js": "requirejs/require.js",
    "embed-amd.js": "@jupyter-widgets/html-manager/dist/embed-amd.js",
}
_FONT_SUFFIXES = (".woff2", ".woff", ".ttf", ".eot", ".svg")
_HTML_MANAGER_DIST = "@jupyter-widgets/html-manager/dist"

#: The modules that embed-amd.js defines by name; config.js points RequireJS at embed-amd.js for them.
_BUNDLED_MODULES = (
    "@jupyter-widgets/base",
    "@jupyter-widgets/controls",
    "@jupyter-widgets/base7",
    "@jupyter-widgets/controls7",
    "@jupyter-widgets/html-manager",
    "@jupyter-widgets/html-manager/dist/libembed-amd",  # its fonts resolve next to this one's URL
)

_CONFIG_JS = """\
/* Written by npcrepro.webassets -- do not edit. Loaded after require.js and before embed-amd.js.
   embed-amd.js defines named AMD modules and derives the URL of its fonts from the module's URL;
   without this, RequireJS would place them in the page's folder. Map them onto the file next to
   this script instead, so every widget asset loads from _static/vendor/widgets/ (no CDN). */
(function () {
  var me = document.currentScript;
  var base = new URL(".", me && me.src ? me.src : document.baseURI).href;
  var paths = {};
  %s.forEach(function (name) { paths[name] = base + "embed-amd"; });
  window.__jupyter_widgets_assets_path__ = base;
  window.require.config({ paths: paths });
})();
""" % json.dumps(list(_BUNDLED_MODULES))

#: Load order matters: RequireJS, then the path mapping, then the widget manager (which renders on load).
_SCRIPTS = ("require.js", "config.js", "embed-amd.js")


def widget_js_mapping() -> dict[str, dict[str, str]]:
    """The ``nb_ipywidgets_js`` value: script paths relative to ``_static`` -> extra ``<script>``
    attributes (none: ``crossorigin`` would break pages opened from ``file://``)."""
    return {f"{VENDOR_DIR.relative_to(STATIC_DIR).as_posix()}/{WIDGETS_SUBDIR}/{name}": {}
            for name in _SCRIPTS}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _up_to_date(vendor: Path, lock_sha: str) -> bool:
    """Whether both served folders hold what the stamp (written last by :func:`_install`) lists."""
    try:
        stamp = json.loads((vendor / WIDGETS_SUBDIR / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (stamp.get("lock_sha256") == lock_sha
            and all((vendor / WIDGETS_SUBDIR / name).is_file() for name in stamp.get("files", []))
            and stamp.get("mathjax") == list(_MATHJAX_PARTS)
            and all((vendor / MATHJAX_SUBDIR / name).exists() for name in _MATHJAX_PARTS)
            and stamp.get("niivue") == sorted(_NIIVUE_FILES)
            and all((vendor / NIIVUE_SUBDIR / name).is_file() for name in _NIIVUE_FILES))


def _write_config_js(widgets: Path) -> None:
    """(Re)write config.js when its text differs from this module's (no npm needed for that)."""
    path = widgets / "config.js"
    try:
        if path.read_text(encoding="utf-8") == _CONFIG_JS:
            return
    except OSError:
        pass
    tmp = path.with_name(f".config.js.tmp-{os.getpid()}")
    tmp.write_text(_CONFIG_JS, encoding="utf-8")
    tmp.replace(path)


def _locked_versions(lock: Path) -> dict[str, str]:
    pkgs = json.loads(lock.read_text(encoding="utf-8")).get("packages", {})
    return {name: pkgs.get(f"node_modules/{name}", {}).get("version", "?")
            for name in ("@jupyter-widgets/html-manager", "mathjax", "requirejs", "@niivue/niivue")}


def _npm_ci(vendor: Path, log) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise NpcreproError("npm not found: install Node.js with npm (e.g. `apt-get install npm`) to "
                            "fetch the widget JavaScript for the HTML book")
    cmd = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    log(f"[book] fetching pinned widget JavaScript, MathJax and NiiVue ({' '.join(cmd[1:])} in {vendor}) ...")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=vendor, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as exc:
        raise NpcreproError(f"`npm ci` in {vendor} took over {exc.timeout:.0f} s "
                            "(npm registry unreachable?)") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines()
                 if ln.strip() and "Unknown user config" not in ln]
        tail = lines[-1] if lines else "no output"
        raise NpcreproError(f"`npm ci` failed in {vendor} (exit {proc.returncode}): {tail}")
    log(f"[book] npm ci done in {time.perf_counter() - t0:.0f} s")


def ensure_web_assets(root: Path | None = None, log=print, *, keep_node_modules: bool = False
                      ) -> dict[str, dict[str, str]]:
    """Make sure ``book/_static/vendor/widgets/`` holds the pinned widget JavaScript,
    ``book/_static/vendor/mathjax/`` the pinned MathJax and ``.../niivue/`` NiiVue; return the ``nb_ipywidgets_js`` mapping (the
    same value ``_config.yml`` sets).

    Idempotent and fast (one hash of the lock file) when the files are there for the current
    ``package-lock.json``. Otherwise runs ``npm ci`` (needs npm and the npm registry), copies
    require.js, embed-amd.js and its fonts, MathJax's :data:`_MATHJAX_PARTS`, writes config.js and
    a stamp, and -- unless ``keep_node_modules`` -- deletes ``node_modules`` again: it is ~150 MB,
    and Sphinx copies everything under the static path into the build.

    Raises :class:`~npcrepro.errors.NpcreproError` when npm is missing or ``npm ci`` fails.
    """
    root = Path(root) if root is not None else repo_root()
    vendor = root / VENDOR_DIR
    lock = vendor / "package-lock.json"
    if not lock.is_file():
        raise NpcreproError(f"{lock} is missing (it pins the widget JavaScript; restore it from git)")
    widgets = vendor / WIDGETS_SUBDIR
    lock_sha = _sha256(lock)
    if _up_to_date(vendor, lock_sha):
        _write_config_js(widgets)
        return widget_js_mapping()

    with exclusive_lock(vendor / ".lock"):  # parallel builds/tests: one npm ci
        if not _up_to_date(vendor, lock_sha):  # else another process did it while we waited
            _install(vendor, lock, lock_sha, log, keep_node_modules)
    _write_config_js(widgets)
    return widget_js_mapping()


def _install(vendor: Path, lock: Path, lock_sha: str, log, keep_node_modules: bool) -> None:
    nm = vendor / "node_modules"
    if not _installed_match_lock(nm, lock):
        _npm_ci(vendor, log)
    mathjax_src = nm / "mathjax" / "es5"
    if not (_installed_match_lock(nm, lock) and all((nm / s).is_file() for s in _COPIED.values())
            and all((mathjax_src / part).exists() for part in _MATHJAX_PARTS)
            and all((nm / src).is_file() for src in _NIIVUE_FILES.values())):
        raise NpcreproError(f"`npm ci` in {vendor} did not install the versions pinned in {lock.name}")

    tmp = vendor / f".{WIDGETS_SUBDIR}.tmp-{os.getpid()}"
    tmp_mj = vendor / f".{MATHJAX_SUBDIR}.tmp-{os.getpid()}"
    tmp_nv = vendor / f".{NIIVUE_SUBDIR}.tmp-{os.getpid()}"
    for d in (tmp, tmp_mj, tmp_nv):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    files = []
    for dest, src in _COPIED.items():
        shutil.copy2(nm / src, tmp / dest)
        files.append(dest)
    for font in sorted((nm / _HTML_MANAGER_DIST).iterdir()):
        if font.suffix in _FONT_SUFFIXES:  # webpack assets that embed-amd.js loads relative to itself
            shutil.copy2(font, tmp / font.name)
            files.append(font.name)
    _write_config_js(tmp)
    files.append("config.js")
    for part in _MATHJAX_PARTS:
        src, dst = mathjax_src / part, tmp_mj / part
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    for dest, src in _NIIVUE_FILES.items():
        shutil.copy2(nm / src, tmp_nv / dest)
    for final, made in ((vendor / MATHJAX_SUBDIR, tmp_mj), (vendor / NIIVUE_SUBDIR, tmp_nv),
                        (vendor / WIDGETS_SUBDIR, tmp)):
        old = vendor / f".{final.name}.old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        made.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    # the stamp last: until it exists, the next call installs again
    (vendor / WIDGETS_SUBDIR / STAMP).write_text(json.dumps({
        "lock_sha256": lock_sha, "versions": _locked_versions(lock), "files": files,
        "mathjax": list(_MATHJAX_PARTS), "niivue": sorted(_NIIVUE_FILES)}, indent=1) + "\n", encoding="utf-8")
    if not keep_node_modules:
        shutil.rmtree(nm, ignore_errors=True)
    size = sum(p.stat().st_size for d in (WIDGETS_SUBDIR, MATHJAX_SUBDIR, NIIVUE_SUBDIR)
               for p in (vendor / d).rglob("*") if p.is_file()) / 1e6
    log(f"[book] widget JavaScript, MathJax and NiiVue ready in {vendor} ({size:.1f} MB)")


def _installed_match_lock(nm: Path, lock: Path) -> bool:
    """Whether node_modules holds the html-manager, MathJax, requirejs and NiiVue versions the lock
    file pins."""
    for name, version in _locked_versions(lock).items():
        try:
            got = json.loads((nm / name / "package.json").read_text(encoding="utf-8")).get("version")
        except (OSError, ValueError):
            return False
        if got != version:
            return False
    return True
