"""Drive the static volume viewer of a built page in headless Chromium with the network off.

:mod:`npcrepro.browsercheck` looks at what a page draws; this module *uses* the viewer written by
:mod:`npcrepro.viz.static_viewer` as a reader would, through Playwright (the ``playwright`` Python
package driving the system's Chromium; no browser is downloaded), and measures what changes:

1. the page is served from 127.0.0.1 and every request to another host is aborted (and listed), with
   host names unresolvable in Chromium as well;
2. after the viewer reports ``data-state="ready"``, the picture (the viewer's canvas, as composited
   on screen) is captured; then the slice slider is moved with the keyboard, the first prediction is
   switched off, the plane and the image channel are changed, and after each step the picture is
   captured again once the viewer has redrawn.

:func:`drive_viewer` returns the share of pixels that changed at each step. Command line:
``python -m npcrepro.viewercheck _build/html/book/runs/smoke/explorer.html`` prints one line per step
and exits 1 when a step changed nothing, a request left the machine or the viewer failed.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from npcrepro.browsercheck import _Server, _is_local_host, _site_root, find_chromium
from npcrepro.errors import NpcreproError

#: Chromium flags that work headless in containers (no sandbox, software GL) and keep it off the net.
LAUNCH_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
#: Share of canvas pixels that must change for a step to count as a change.
MIN_CHANGE = 0.0005


def _pixels(png: bytes):
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def changed_fraction(a: bytes, b: bytes, tol: int = 8) -> float:
    """Share of pixels whose colour differs by more than ``tol`` (of 255) between two PNGs."""
    pa, pb = _pixels(a), _pixels(b)
    if pa.shape != pb.shape:
        return 1.0
    return float((abs(pa - pb).max(axis=2) > tol).mean())


def drive_viewer(html: Path, *, out_dir: Path | None = None, timeout_s: float = 90,
                 chromium: str | None = None) -> dict:
    """Open ``html`` (a built page with a viewer), drive the first viewer and report what changed.

    Returns a dict with ``steps`` (name -> changed share of the canvas), ``slice_start`` and
    ``slice_after``, ``blocked`` (off-machine URLs the page tried), ``missing`` (local files not
    found), ``errors`` (errors thrown by the viewer or NiiVue; ``other_errors``: by other scripts of
    the page, listed only), ``ok`` and ``reasons``. Screenshots go to ``out_dir``.
    Raises NpcreproError without Playwright, Chromium or the page.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise NpcreproError("the viewer check needs the playwright package (pip install playwright; "
                            "no browser download: it drives the system Chromium)") from None
    html = Path(html).resolve()
    if not html.is_file():
        raise NpcreproError(f"{html}: no such page (build the book first)")
    exe = chromium or find_chromium()
    if exe is None:
        raise NpcreproError("no Chromium found: install it (`apt-get install chromium`) or set $CHROMIUM")
    root = _site_root(html)
    report: dict = {"page": str(html), "steps": {}, "blocked": [], "errors": [], "console": []}
    reasons: list[str] = []
    t0 = time.perf_counter()
    with _Server(root) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=list(LAUNCH_FLAGS))
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            page.set_default_timeout(timeout_s * 1000)

            def route(r):
                if _is_local_host(urlsplit(r.request.url).hostname):
                    return r.continue_()
                report["blocked"].append(r.request.url)
                return r.abort()

            page.route("**/*", route)
            page.on("pageerror", lambda e: _page_error(e, report))
            page.on("console", lambda m: report["console"].append(f"{m.type}: {m.text[:200]}")
                    if m.type in ("error", "warning") else None)
            page.goto(f"http://127.0.0.1:{server.port}/{html.relative_to(root).as_posix()}")
            _drive(page, report, reasons, out_dir, timeout_s)
        finally:
            browser.close()
        report["missing"] = sorted({p for p, st in server.requests if st >= 400
                                    and not p.endswith("favicon.ico")})
    if report["blocked"]:
        reasons.append(f"the page tried {len(report['blocked'])} off-machine request(s), "
                       f"e.g. {report['blocked'][0]}")
    if report["missing"]:
        reasons.append(f"{len(report['missing'])} local file(s) missing, e.g. {report['missing'][0]}")
    if report["errors"]:
        reasons.append(f"page error: {report['errors'][0]}")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["ok"] = not reasons
    report["reasons"] = reasons
    return report


def _page_error(exc, report: dict) -> None:
    """Errors thrown by the viewer or NiiVue fail the check; others (the theme's scripts) are listed."""
    text = f"{exc} {getattr(exc, 'stack', '') or ''}"
    key = "errors" if ("npcviewer" in text or "niivue" in text) else "other_errors"
    report.setdefault(key, []).append(str(exc)[:300])


def _drive(page, report: dict, reasons: list[str], out_dir: Path | None, timeout_s: float) -> None:
    viewer = page.locator(".npc-viewer").first
    try:
        page.wait_for_function(
            "() => { const v = document.querySelector('.npc-viewer');"
            " return v && ['ready', 'error'].includes(v.dataset.state); }", timeout=timeout_s * 1000)
    except Exception as exc:  # noqa: BLE001 - Playwright's TimeoutError; reported, not raised
        reasons.append(f"the viewer never became ready: {str(exc).splitlines()[0]}")
        return
    if viewer.get_attribute("data-state") != "ready":
        reasons.append(f"viewer error: {viewer.inner_text()[-300:]}")
        return
    canvas = viewer.locator("canvas")

    def shot(name: str) -> bytes:
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        png = canvas.screenshot()
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / f"viewer-{name}.png").write_bytes(png)
        return png

    def after(action) -> None:
        before = int(viewer.get_attribute("data-draws") or 0)
        action()
        page.wait_for_function(
            "n => +document.querySelector('.npc-viewer').dataset.draws > n"
            " && document.querySelector('.npc-viewer').dataset.state === 'ready'", arg=before)

    def step(name: str, action, expect_change: bool = True) -> None:
        prev = shot(f"{name}-before")
        after(action)
        frac = changed_fraction(prev, shot(name))
        report["steps"][name] = round(frac, 5)
        if expect_change and frac < MIN_CHANGE:
            reasons.append(f"{name}: the picture did not change ({frac:.3%} of pixels)")

    report["slice_start"] = viewer.get_attribute("data-slice")
    slider = viewer.locator("input.npc-slice")
    step("slice", lambda: [slider.press("ArrowLeft") for _ in range(3)])
    report["slice_after"] = viewer.get_attribute("data-slice")
    if report["slice_after"] == report["slice_start"]:
        reasons.append(f"the slice did not move ({report['slice_start']})")
    preds = viewer.locator("input.npc-pred")
    report["predictions"] = preds.count()
    if preds.count():
        step("prediction off", lambda: preds.first.uncheck())
        step("prediction on", lambda: preds.first.check())
    else:
        reasons.append("the viewer lists no prediction to toggle")
    width = viewer.locator("input.npc-width")
    if width.count():  # a narrow window raises the contrast: the picture changes
        step("window", lambda: width.evaluate("e => { e.value = 40; e.dispatchEvent(new Event('input')); }"))
    else:
        reasons.append("the viewer has no window control")
    step("plane", lambda: viewer.locator("label:has-text('Plane') select").select_option("coronal"))
    channels = viewer.locator("label:has-text('Image') select option")
    report["channels"] = channels.count()
    if channels.count() > 1:
        # two channels may look alike at this slice (the phantom's CT and contrast-enhanced CT differ only
        # where contrast enhances): the step passes when any other channel changes the picture
        select = viewer.locator("label:has-text('Image') select")
        values = [channels.nth(i).get_attribute("value") for i in range(1, channels.count())]
        for i, value in enumerate(values):
            step("channel", lambda v=value: select.select_option(v), expect_change=i == len(values) - 1)
            if report["steps"]["channel"] >= MIN_CHANGE:
                break


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m npcrepro.viewercheck",
                                description="Drive the static volume viewer of a built page in "
                                            "headless Chromium with no network.")
    p.add_argument("page", type=Path, help="built page, e.g. _build/html/book/runs/cpu/explorer.html")
    p.add_argument("--out", type=Path, default=None, help="folder for the screenshots")
    p.add_argument("--timeout", type=float, default=90)
    a = p.parse_args(argv)
    try:
        r = drive_viewer(a.page, out_dir=a.out, timeout_s=a.timeout)
    except NpcreproError as exc:
        print(f"error: {exc}")
        return 1
    for name, frac in r["steps"].items():
        print(f"{name:<15} {'ok' if frac >= MIN_CHANGE else 'FAIL':<5} {frac:.2%} of the picture changed")
    print(f"{'slices':<15} {r.get('slice_start')} -> {r.get('slice_after')}")
    print(f"{'network':<15} {'ok' if not r['blocked'] else 'FAIL':<5} "
          f"{len(r['blocked'])} off-machine request(s) tried")
    for why in r["reasons"]:
        print(f"reason: {why}")
    print(f"{'result':<15} {'OK' if r['ok'] else 'FAIL':<5} {r['page']} ({r['seconds']} s)")
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
