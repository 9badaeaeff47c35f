"""Open a built book page in headless Chromium, with no network, and check what it draws.

:func:`check_page` serves the built site from a throw-away HTTP server on 127.0.0.1 (or opens the
file directly with ``serve=False``) and runs Chromium twice with every host name unresolvable
(``--host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"``, ``--no-proxy-server``):

1. ``--dump-dom`` (and a NetLog): the DOM after the scripts ran. Widgets count only when the widget
   manager drew them -- elements with both ``lm-Widget`` and ``jupyter-widgets`` classes; the
   ``<script type="application/vnd.jupyter.widget-view+json">`` placeholders myst-nb writes do not
   count. Figures are the page's ``<img>``s that loaded (a file under ``_images/`` that the server
   sent, or a widget image's ``blob:``/``data:`` URL). Formulas are MathJax's ``<mjx-container>``
   elements. The NetLog lists every request the *page* tried to send off this machine (the
   browser's own update/account pings are left out); the server log lists local files the page
   asked for and did not get. Independently of timing, every ``<script src>`` and ``<link href>``
   in the page file or the final DOM that points off this machine fails the check (a deferred
   script may not have been requested yet when the DOM is dumped).
2. ``--screenshot --window-size=1280,2000``: the PNG must not be blank (share of non-white pixels).

Command line: ``python -m npcrepro.browsercheck _build/html/book/runs/smoke/explorer.html`` prints
one line per check and exits 0 when all pass, 1 otherwise.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from .errors import NpcreproError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1280, 2000)
#: Texts the widget manager puts in the page when it cannot draw a widget.
_WIDGET_ERRORS = ("Error displaying widget", "Error creating widget", "Failed to load model class",
                  "Failed to load view class", "Could not create a view")
_BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--no-default-browser-check", "--hide-scrollbars", "--mute-audio",
                  "--no-proxy-server")


def find_chromium() -> str | None:
    """The Chromium/Chrome executable: ``$CHROMIUM`` if set and runnable, else the first of
    chromium, chromium-browser, google-chrome, google-chrome-stable on PATH; None if there is none."""
    env = os.environ.get("CHROMIUM")
    if env:
        hit = shutil.which(env)
        if hit:
            return hit
    for name in CHROMIUM_NAMES:
        hit = shutil.which(name)
        if hit:
            return hit
    return None


# --------------------------------------------------------------------------------------------------
# DOM inspection

class _DomCounter(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.widgets = 0
        self.widget_kinds: dict[str, int] = {}
        self.placeholders = 0
        self.imgs: list[dict[str, str]] = []
        self.text_errors: list[str] = []
        self.math = 0
        self.remote_refs: list[str] = []
        self._script_type: str | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        classes = a.get("class", "").split()
        if "lm-Widget" in classes and "jupyter-widgets" in classes:
            self.widgets += 1
            kind = next((c for c in classes if c.startswith("widget-") and c not in
                         ("widget-inline-hbox", "widget-container", "widget-box")), "widget")
            self.widget_kinds[kind] = self.widget_kinds.get(kind, 0) + 1
        if tag == "mjx-container":  # one typeset formula (MathJax 3)
            self.math += 1
        ref = (a.get("src") if tag == "script" else
               a.get("href") if tag == "link" and _LOADING_RELS & set(a.get("rel", "").lower().split())
               else "")  # a canonical or alternate <link> names a page, it loads nothing
        if ref and urlsplit(ref).scheme in ("http", "https") and not _is_local_host(urlsplit(ref).hostname):
            self.remote_refs.append(ref)
        if tag == "script":
            self._script_type = a.get("type", "")
            if self._script_type == "application/vnd.jupyter.widget-view+json":
                self.placeholders += 1
        elif tag == "img":
            self.imgs.append({"src": a.get("src", ""), "class": a.get("class", "")})

    def handle_endtag(self, tag):
        if tag == "script":
            self._script_type = None

    def handle_data(self, data):
        if self._script_type is not None:
            return
        for err in _WIDGET_ERRORS:
            if err in data:
                self.text_errors.append(data.strip()[:200])


#: ``<link rel>`` values that make the browser fetch the ``href``.
_LOADING_RELS = {"stylesheet", "preload", "modulepreload", "prefetch", "icon", "manifest", "import"}


def _is_local_host(host: str | None) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


def _is_content_image(img: dict[str, str]) -> bool:
    """A figure or a widget image, not the theme's logo or an icon."""
    src, cls = img["src"], img["class"]
    if "logo" in cls:
        return False
    return ("_images/" in src or "widget-image" in cls or src.startswith("blob:")
            or src.startswith("data:image"))


# --------------------------------------------------------------------------------------------------
# local server that records what the page asked for

class _Handler(http.server.SimpleHTTPRequestHandler):
    record: list[tuple[str, int]]

    def log_request(self, code="-", size="-"):  # noqa: D401 - stdlib signature
        try:
            status = int(getattr(code, "value", code))
        except (TypeError, ValueError):
            status = 0
        self.record.append((unquote(urlsplit(self.path).path), status))

    def log_message(self, format, *args):  # silence stderr
        pass


class _Server:
    def __init__(self, root: Path):
        self.requests: list[tuple[str, int]] = []
        handler = type("Handler", (_Handler,), {"record": self.requests})
        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _site_root(html: Path) -> Path:
    """The built site's root: the nearest folder above the page that holds ``_static``."""
    for parent in html.parents:
        if (parent / "_static").is_dir():
            return parent
    return html.parent


# --------------------------------------------------------------------------------------------------
# running the browser

def _run_browser(exe: str, url: str, extra: list[str], rules: str, timeout_s: float
                 ) -> tuple[int, str, str]:
    with tempfile.TemporaryDirectory(prefix="npcrepro-chromium-") as profile:
        cmd = [exe, *_BROWSER_FLAGS, f"--user-data-dir={profile}", f"--host-resolver-rules={rules}",
               *extra, url]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                errors="replace", start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the browser's own process group only
            out, err = proc.communicate()
            return 124, out, err
        return proc.returncode, out, err


def _page_requests_off_machine(netlog: Path) -> list[str]:
    """URLs the page (not the browser itself) tried to fetch from anywhere but 127.0.0.1."""
    try:
        data = json.loads(netlog.read_text(errors="replace"))
    except (OSError, ValueError):
        try:  # a NetLog cut short lacks the closing brackets
            data = json.loads(netlog.read_text(errors="replace").rstrip().rstrip(",") + "]}")
        except (OSError, ValueError):
            return ["<NetLog unreadable: cannot tell which requests were tried>"]
    kinds = {v: k for k, v in data.get("constants", {}).get("logEventTypes", {}).items()}
    urls = []
    for ev in data.get("events", []):
        if kinds.get(ev.get("type")) != "URL_REQUEST_START_JOB":
            continue
        p = ev.get("params", {})
        url, initiator = p.get("url", ""), p.get("initiator")
        if not url or initiator == "not an origin":  # browser-internal (update checks, accounts)
            continue
        host = urlsplit(url).hostname or ""
        if not _is_local_host(host) and url not in urls:
            urls.append(url)
    return urls


def _nonwhite_fraction(png: Path, level: int = 245) -> float:
    import numpy as np
    from PIL import Image

    with Image.open(png) as im:
        a = np.asarray(im.convert("RGB"))
    return float((a < level).any(axis=2).mean())


def check_page(html: Path, screenshot: Path, *, expect_widgets: int = 1, expect_figures: int = 1,
               expect_math: int = 0, timeout_s: float = 60, min_nonwhite: float = 0.02,
               serve: bool = True, budget_ms: int = 15000, chromium: str | None = None) -> dict:
    """Render ``html`` in headless Chromium with no network and report what it drew.

    ``timeout_s`` bounds each of the two browser runs. ``serve=False`` opens the ``file://`` URL
    instead of serving the site from 127.0.0.1 (then missing local files are not detected).
    Returns a dict with ``widgets_rendered``, ``widget_placeholders``, ``widget_kinds``, ``images``
    (loaded content images: ``static_images`` + ``widget_images``), ``math_rendered``,
    ``nonwhite_fraction``, ``remote_references``, ``external_requests``, ``missing_local``,
    ``widget_errors``, ``console``, ``ok`` and ``reasons``. ``expect_math``: formulas MathJax must
    have typeset.
    Raises :class:`~npcrepro.errors.NpcreproError` when there is no browser or no such page.
    """
    html, screenshot = Path(html).resolve(), Path(screenshot).resolve()
    if not html.is_file():
        raise NpcreproError(f"{html}: no such page (build the book first)")
    exe = chromium or find_chromium()
    if exe is None:
        raise NpcreproError("no Chromium found: install it (`apt-get install chromium`) or set $CHROMIUM")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    root = _site_root(html)
    t0 = time.perf_counter()
    report: dict = {"page": str(html), "browser": exe, "serve": serve}
    reasons: list[str] = []

    with tempfile.TemporaryDirectory(prefix="npcrepro-browsercheck-") as tmp, \
            (_Server(root) if serve else _NoServer()) as server:
        if serve:
            url = f"http://127.0.0.1:{server.port}/{html.relative_to(root).as_posix()}"
            rules = "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
        else:
            url, rules = html.as_uri(), "MAP * ~NOTFOUND"
        report["url"] = url
        budget = f"--virtual-time-budget={budget_ms}"
        netlog = Path(tmp) / "netlog.json"
        rc, dom, err = _run_browser(exe, url, [budget, "--dump-dom", f"--log-net-log={netlog}",
                                               "--enable-logging=stderr", "--v=0"], rules, timeout_s)
        if rc != 0 or not dom.strip():
            reasons.append(f"chromium --dump-dom failed (exit {rc}): {_last_line(err)}")
        rc2, _, err2 = _run_browser(exe, url, [budget, f"--window-size={WINDOW[0]},{WINDOW[1]}",
                                               f"--screenshot={screenshot}"], rules, timeout_s)
        if rc2 != 0 or not screenshot.is_file():
            reasons.append(f"chromium --screenshot failed (exit {rc2}): {_last_line(err2)}")
        external = _page_requests_off_machine(netlog) if netlog.exists() else []
        served = list(server.requests)

    counter = _DomCounter()
    counter.feed(dom)
    counter.close()
    page_refs = _DomCounter()
    page_refs.feed(html.read_text(encoding="utf-8", errors="replace"))
    page_refs.close()
    remote = list(dict.fromkeys(page_refs.remote_refs + counter.remote_refs))
    got = {path for path, status in served if status < 400}
    missing = sorted({p for p, status in served if status >= 400 and not p.endswith("favicon.ico")})
    static_imgs = widget_imgs = 0
    for img in filter(_is_content_image, counter.imgs):
        src = img["src"]
        if src.startswith(("blob:", "data:image")):
            widget_imgs += 1
            continue
        target = urljoin(url, src)
        if serve:
            loaded = unquote(urlsplit(target).path) in got
        else:
            loaded = urlsplit(target).scheme == "file" and Path(unquote(urlsplit(target).path)).is_file()
        static_imgs += loaded
    console = [ln.split("CONSOLE", 1)[1].split("] ", 1)[-1][:300] for ln in err.splitlines()
               if ":CONSOLE" in ln]

    report.update(
        widgets_rendered=counter.widgets, widget_placeholders=counter.placeholders,
        widget_kinds=counter.widget_kinds, images=static_imgs + widget_imgs,
        static_images=static_imgs, widget_images=widget_imgs,
        nonwhite_fraction=_nonwhite_fraction(screenshot) if screenshot.is_file() else 0.0,
        math_rendered=counter.math, remote_references=remote,
        external_requests=external, missing_local=missing, widget_errors=counter.text_errors,
        console=console[:30], screenshot=str(screenshot),
    )
    if counter.widgets < expect_widgets:
        reasons.append(f"{counter.widgets} widget(s) drawn, expected >= {expect_widgets} "
                       f"({counter.placeholders} placeholder(s) in the page)")
    if report["images"] < expect_figures:
        reasons.append(f"{report['images']} figure image(s) loaded, expected >= {expect_figures}")
    if report["nonwhite_fraction"] <= min_nonwhite:
        reasons.append(f"screenshot nearly blank: {report['nonwhite_fraction']:.1%} non-white "
                       f"(need > {min_nonwhite:.1%})")
    if counter.math < expect_math:
        reasons.append(f"{counter.math} formula(s) typeset, expected >= {expect_math}")
    if external:
        reasons.append(f"the page tried {len(external)} off-machine request(s), e.g. {external[0]}")
    if remote:
        reasons.append(f"the page loads {len(remote)} script(s)/stylesheet(s) from off this machine, "
                       f"e.g. {remote[0]}")
    if missing:
        reasons.append(f"{len(missing)} local file(s) missing, e.g. {missing[0]}")
    if counter.text_errors:
        reasons.append(f"widget error in page: {counter.text_errors[0]}")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["ok"] = not reasons
    report["reasons"] = reasons
    return report


class _NoServer:
    requests: list = []
    port = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip() and "dbus" not in ln
             and "unexpected operator" not in ln]
    return lines[-1][:300] if lines else "no output"


# --------------------------------------------------------------------------------------------------
# command line

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m npcrepro.browsercheck",
                                description="Check that a built book page draws its widgets and "
                                            "figures in headless Chromium with no network.")
    p.add_argument("page", type=Path, help="built HTML page, e.g. _build/html/book/runs/smoke/explorer.html")
    p.add_argument("--screenshot", type=Path, default=None,
                   help="where to write the PNG (default: <temp dir>/<page>.png)")
    p.add_argument("--expect-widgets", type=int, default=1)
    p.add_argument("--expect-figures", type=int, default=1)
    p.add_argument("--expect-math", type=int, default=0, help="formulas MathJax must typeset")
    p.add_argument("--min-nonwhite", type=float, default=0.02)
    p.add_argument("--timeout", type=float, default=60, help="seconds per browser run")
    p.add_argument("--file", action="store_true", help="open the file:// URL instead of serving it")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON as well")
    a = p.parse_args(argv)
    shot = a.screenshot or Path(tempfile.gettempdir()) / f"npcrepro-{a.page.stem}.png"
    try:
        r = check_page(a.page, shot, expect_widgets=a.expect_widgets, expect_figures=a.expect_figures,
                       expect_math=a.expect_math, timeout_s=a.timeout, min_nonwhite=a.min_nonwhite,
                       serve=not a.file)
    except NpcreproError as exc:
        print(f"error: {exc}")
        return 1

    def line(name: str, good: bool, text: str) -> None:
        print(f"{name:<9} {'ok' if good else 'FAIL':<5} {text}")

    line("widgets", r["widgets_rendered"] >= a.expect_widgets,
         f"{r['widgets_rendered']} drawn (expected >= {a.expect_widgets}; "
         f"{r['widget_placeholders']} placeholder(s); {r['widget_kinds']})")
    line("figures", r["images"] >= a.expect_figures,
         f"{r['images']} loaded ({r['static_images']} figure file(s), {r['widget_images']} widget "
         f"image(s); expected >= {a.expect_figures})")
    line("maths", r["math_rendered"] >= a.expect_math,
         f"{r['math_rendered']} formula(s) typeset (expected >= {a.expect_math})")
    line("pixels", r["nonwhite_fraction"] > a.min_nonwhite,
         f"{r['nonwhite_fraction']:.1%} non-white (need > {a.min_nonwhite:.1%}) in {r['screenshot']}")
    line("network", not r["external_requests"],
         "no request left this machine (host names unresolvable)" if not r["external_requests"]
         else f"{len(r['external_requests'])} off-machine request(s): {r['external_requests'][:3]}")
    line("assets", not r["remote_references"],
         "every script and stylesheet is served from this machine" if not r["remote_references"]
         else f"{len(r['remote_references'])} from off this machine: {r['remote_references'][:3]}")
    line("local", not r["missing_local"],
         ("all requested files present" if a.file is False else "not checked (--file)")
         if not r["missing_local"] else f"missing: {r['missing_local'][:5]}")
    line("errors", not r["widget_errors"],
         "no widget errors in the page" if not r["widget_errors"] else r["widget_errors"][0])
    if a.json:
        print(json.dumps(r, indent=1))
    print(f"{'result':<9} {'OK' if r['ok'] else 'FAIL':<5} {r['page']} ({r['seconds']} s)")
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
