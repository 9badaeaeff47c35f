"""The static volume viewer (npcrepro.viz.static_viewer, book/_static/npcviewer/viewer.js) and its
browser check (npcrepro.viewercheck).

Export, geometry and publishing are checked without a browser. The browser tests build a one-page
site from a synthetic export with the vendored NiiVue and drive it in headless Chromium with the
network cut (Playwright over the system Chromium); they skip without Chromium, Playwright or the
vendored NiiVue (which `ensure_web_assets` fetches with npm). The built smoke book's explorer page is
driven in tests/test_book.py.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from npcrepro import io
from npcrepro.errors import DataError
from npcrepro.paths import repo_root
from npcrepro.viz import static_viewer as S

REPO = repo_root()


def _case(name: str = "npc_001", shift: int = 0, *, empty_prediction: bool = False,
          direction=None) -> S.ViewerCase:
    z, y, x = np.mgrid[:20, :48, :56]
    rng = np.random.default_rng(shift)
    img = (np.sin(x / 5.0) + np.cos(y / 7.0) + z / 10.0 + rng.normal(0, 0.1, z.shape)).astype(np.float32)
    gt = ((z - 10) ** 2 / 30 + (y - 24) ** 2 / 80 + (x - 28 - shift) ** 2 / 80) < 1
    unet = ((z - 10) ** 2 / 30 + (y - 26) ** 2 / 70 + (x - 26 - shift) ** 2 / 100) < 1
    other = np.zeros_like(gt) if empty_prediction else np.roll(gt, 3, axis=2)
    return S.ViewerCase(name, {"T1": img, "T2": 2 - img}, {"GTVp": gt}, {"unet": unet, "mmfnet": other},
                        (3.0, 0.8, 0.8), np.eye(3) if direction is None else direction,
                        scores={"unet": 0.8123}, notes={"mmfnet": "synthetic"}, default_channel="T1",
                        default_structure="GTVp", focus=(10, 24, 28))


def _run(**kw) -> S.ViewerRun:
    return S.ViewerRun("leaderboard/20260101-000000-smoke", [_case(**kw), _case("npc_002", 5, **kw)],
                       {"unet": "#00d5ff", "mmfnet": "#ff3b30"}, "synthetic run")


# ------------------------------------------------------------------------------------------ export
def test_export_writes_every_layer_on_the_case_grid(tmp_path):
    manifest = S.export([_run()], tmp_path / "_viewer")
    data = json.loads(manifest.read_text(encoding="utf-8"))
    (run,) = data["runs"]
    assert run["label"].startswith("leaderboard/") and len(run["cases"]) == 2
    case = run["cases"][0]
    assert [c["name"] for c in case["channels"]] == ["T1", "T2"] and case["default_channel"] == "T1"
    assert [s["name"] for s in case["structures"]] == ["GTVp"] and case["default_structure"] == "GTVp"
    assert [(p["label"], p["colour"], p["dsc"]) for p in case["predictions"]] == [
        ("unet", "#00d5ff", 0.8123), ("mmfnet", "#ff3b30", None)]
    assert case["predictions"][1]["note"] == "synthetic" and case["shape"] == [20, 48, 56]
    src = _case()
    layers = [c["url"] for c in case["channels"]] + [s["url"] for s in case["structures"]] + \
        [p["url"] for p in case["predictions"]]
    for url in layers:
        vol = io.read(manifest.parent / url)
        assert vol.shape == (20, 48, 56) and vol.array.dtype == np.uint8, url
        assert np.allclose(vol.spacing, (3.0, 0.8, 0.8))
    gt = io.read(manifest.parent / case["structures"][0]["url"]).array
    assert np.array_equal(gt.astype(bool), src.ground_truth["GTVp"])
    unet = io.read(manifest.parent / case["predictions"][0]["url"]).array
    assert np.array_equal(unet.astype(bool), src.predictions["unet"])
    # the image is quantised over its window, monotonically: brighter stays brighter
    img = io.read(manifest.parent / case["channels"][0]["url"]).array.astype(int)
    lo, hi = case["channels"][0]["window"]
    ref = src.images["T1"]
    inside = (ref > lo) & (ref < hi)
    order = np.argsort(ref[inside])
    assert np.all(np.diff(img[inside][order]) >= 0) and img.min() == 0 and img.max() == 255


def test_export_is_content_addressed_and_never_overwrites(tmp_path):
    a = S.export([_run()], tmp_path)
    b = S.export([_run()], tmp_path)
    assert a == b  # same data, same folder
    c = S.export([S.ViewerRun("other", [_case(shift=2)])], tmp_path)
    assert c.parent != a.parent and a.is_file() and c.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({a.parent.name, c.parent.name})


def test_export_refuses_layers_off_the_grid_and_empty_input(tmp_path):
    bad = _case()
    bad.predictions = {"unet": np.zeros((20, 48, 50), bool)}
    with pytest.raises(DataError, match="prediction 'unet' has shape"):
        S.export([S.ViewerRun("r", [bad])], tmp_path)
    with pytest.raises(DataError, match="no run with a case"):
        S.export([S.ViewerRun("r", [])], tmp_path)
    assert not list(tmp_path.iterdir())  # no half-written folder left behind


@pytest.mark.parametrize("flip", [False, True])
def test_focus_is_the_world_position_niivue_reads(tmp_path, flip):
    """The manifest's focus (RAS mm, NiiVue's world) is where the written NIfTI puts the focus voxel."""
    import SimpleITK as sitk

    direction = np.diag([-1.0, 1.0, -1.0]) if flip else np.eye(3)
    manifest = S.export([S.ViewerRun("r", [_case(direction=direction)])], tmp_path)
    case = json.loads(manifest.read_text(encoding="utf-8"))["runs"][0]["cases"][0]
    img = sitk.ReadImage(str(manifest.parent / case["channels"][0]["url"]))
    z, y, x = case["focus"]
    lps = img.TransformIndexToPhysicalPoint((x, y, z))
    assert np.allclose(case["focus_ras"], (-lps[0], -lps[1], lps[2]), atol=1e-3)


def test_page_html_refers_to_the_manifest_and_script_relative_to_the_page(tmp_path):
    page = Path("book/runs/cpu")
    html = S.page_html(page / "_viewer" / "0123456789abcdef" / "manifest.json", page_dir=page)
    assert 'data-manifest="_viewer/0123456789abcdef/manifest.json"' in html
    assert 'src="../../../_static/npcviewer/viewer.js"' in html and 'type="module"' in html
    assert "://" not in html


def test_publish_copies_the_exports_pages_refer_to(tmp_path):
    runs = tmp_path / "book" / "runs" / "smoke"
    runs.mkdir(parents=True)
    exports = tmp_path / "runs" / "smoke" / S.EXPORT_DIR
    used = S.export([_run()], exports)
    stale = S.export([S.ViewerRun("old", [_case(shift=1)])], exports)
    (runs / "explorer.ipynb").write_text(json.dumps({"cells": [{"outputs": [{"data": {
        "text/html": S.page_html(used, page_dir="book/runs/smoke")}}]}]}), encoding="utf-8")
    html = tmp_path / "_build" / "html" / "book" / "runs" / "smoke"
    copied, missing = S.publish(runs, html, [tmp_path / "elsewhere", exports])
    assert missing == []
    assert copied == [html / S.EXPORT_DIR / used.parent.name]
    assert (copied[0] / S.MANIFEST).read_bytes() == used.read_bytes()
    assert not (html / S.EXPORT_DIR / stale.parent.name).exists()
    shutil.rmtree(used.parent)
    shutil.rmtree(html)
    copied, missing = S.publish(runs, html, [exports])
    assert copied == [] and len(missing) == 1 and used.parent.name in missing[0]
    assert "re-run the explorer" in missing[0]


# ------------------------------------------------------------------------------------------ browser
@pytest.fixture(scope="module")
def niivue(tmp_path_factory) -> Path:
    """The vendored NiiVue folder: the checkout's when the book was built, else one fetched into a
    temp copy of book/_static/vendor with npm (tests never write into the checkout)."""
    from npcrepro import webassets
    from npcrepro.errors import NpcreproError

    here = REPO / webassets.VENDOR_DIR / webassets.NIIVUE_SUBDIR
    if (here / "niivue.js").is_file():
        return here
    root = tmp_path_factory.mktemp("vendor")
    (root / webassets.VENDOR_DIR).mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy2(REPO / webassets.VENDOR_DIR / name, root / webassets.VENDOR_DIR / name)
    try:
        webassets.ensure_web_assets(root, log=lambda *_: None)
    except NpcreproError as exc:
        pytest.skip(f"NiiVue is not vendored and npm could not fetch it: {exc}")
    return root / webassets.VENDOR_DIR / webassets.NIIVUE_SUBDIR


def _site(tmp_path: Path, run: S.ViewerRun, niivue: Path) -> Path:
    """A one-page site like the built book: _static/ at the root, the page three folders down."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "book" / "_static" / "npcviewer", site / "_static" / "npcviewer")
    shutil.copytree(niivue, site / "_static" / "vendor" / "niivue")
    page_dir = site / "book" / "runs" / "smoke"
    manifest = S.export([run], page_dir / S.EXPORT_DIR)
    page = page_dir / "explorer.html"
    page.write_text("<!doctype html><html><head><meta charset='utf-8'></head><body>"
                    + S.page_html(manifest, page_dir="book/runs/smoke") + "</body></html>",
                    encoding="utf-8")
    return page


def _needs_browser():
    from npcrepro.browsercheck import find_chromium

    pytest.importorskip("playwright", reason="playwright is not installed (pip install playwright)")
    if find_chromium() is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium); viewer not driven")


@pytest.mark.slow
def test_viewer_changes_with_slice_prediction_plane_and_channel_offline(tmp_path, niivue):
    _needs_browser()
    from npcrepro.viewercheck import drive_viewer

    report = drive_viewer(_site(tmp_path, _run(), niivue), out_dir=tmp_path / "shots")
    assert report["ok"], report["reasons"]
    steps = report["steps"]
    assert set(steps) == {"slice", "prediction off", "prediction on", "window", "plane", "channel"}
    assert all(v > 0.001 for v in steps.values()), steps
    assert report["slice_start"] == "axial 10/20" and report["slice_after"] == "axial 7/20"
    assert report["predictions"] == 2 and report["channels"] == 2
    assert report["blocked"] == [] and report["missing"] == [] and report["errors"] == []


@pytest.mark.slow
def test_viewer_check_fails_when_a_toggle_changes_nothing(tmp_path, niivue):
    """Control: a prediction that is empty everywhere cannot change the picture when toggled off,
    and the check says so (the first prediction listed is the empty one here)."""
    _needs_browser()
    from npcrepro.viewercheck import drive_viewer

    run = _run(empty_prediction=True)
    for case in run.cases:
        case.predictions = {"empty": case.predictions["mmfnet"], "unet": case.predictions["unet"]}
    report = drive_viewer(_site(tmp_path, run, niivue))
    assert not report["ok"]
    assert report["steps"]["prediction off"] < 0.0005 and report["steps"]["slice"] > 0.001
    assert any(r.startswith("prediction off: the picture did not change") for r in report["reasons"])
