"""The run explorer (npcrepro.viz): discovery of runs and predictions, slicing, PNG rendering, the
widgets and their callbacks, bad inputs, and the explorer notebook under papermill (widget state)."""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from npcrepro.engine.runs import RunFolder
from npcrepro.errors import DataError, ParameterError
from npcrepro.paths import repo_root
from npcrepro.profiles import Params, load_data
from npcrepro.viz import Explorer, RunView, gallery, list_runs, prediction_labels, render_png, slice_of
from npcrepro.viz import render as R

REPO = repo_root()
PNG = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG
    return struct.unpack(">II", data[16:24])


def _run(out, paper: str, stamp: str, params: dict) -> RunFolder:
    path = out / "smoke" / paper / f"{stamp}-{paper}"
    path.mkdir(parents=True)
    run = RunFolder(path, writer=True)
    run.write_params(dict(params, paper=paper))
    return run


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """An out_dir with five runs on a 2-case smoke phantom: a leaderboard run (root predictions of two
    methods + metrics.csv), a cross-validated run (fold_<k>/predictions), a run with one sub-run per
    model (<model>/predictions/<case>/GTVp), a run without predictions, and a run whose predictions are
    2D slices (not on the case grid)."""
    out = tmp_path_factory.mktemp("viz") / "runs"
    P = {"data": "phantom", "profile": "smoke", "seed": 0, "out_dir": str(out), "n_cases": 2,
         "phantom_preset": "smoke"}
    ds = load_data(Params(P))
    cases = {n: ds.load(n, channels=["T1"], structures=["GTVp", "Body"]) for n in ds.cases}
    preds = {}
    for n, c in cases.items():
        gt = c.labels["GTVp"]
        preds[n] = {"unet": np.roll(gt, 1, axis=2), "cscn": np.roll(gt, 3, axis=1)}

    lb = _run(out, "leaderboard", "20260101-000001", P)
    rows = []
    for n, c in cases.items():
        for i, (m, mask) in enumerate(preds[n].items()):
            lb.write_prediction(n, m, mask, c.geometry)
            dice = 0.8123 - 0.1 * i - 0.01 * len(rows)
            rows.append({"case": n, "method": m, "structure": "GTVp", "dice": dice, "hd95": 3.25 + i,
                         "assd": 1.0, "nsd": 0.9})
    lb.write_metrics(pd.DataFrame(rows))

    cv = _run(out, "guo2021", "20260101-000002", P)
    for k, (n, c) in enumerate(cases.items()):
        cv.sub(f"fold_{k}").write_prediction(n, "CSCN", preds[n]["cscn"], c.geometry)
    cv.write_metrics(pd.DataFrame([{"fold": k, "case": n, "method": "CSCN", "dice": 0.5 + k / 10}
                                   for k, n in enumerate(cases)]))

    models = _run(out, "xue2020", "20260101-000003", dict(P, rule="gtvp"))
    for n, c in cases.items():
        for m in ("deeplab", "unet2d"):
            models.sub(m).write_prediction(n, "GTVp", preds[n]["unet"], c.geometry)

    nopred = _run(out, "luo2020", "20260101-000004", P)
    nopred.write_metrics(pd.DataFrame([{"case": n, "structure": s, "dice": d} for n in cases
                                       for s, d in (("GTVp", 0.4), ("Parotid_L", 0.7))]))

    flat = _run(out, "other", "20260101-000005", P)
    n0, c0 = next(iter(cases.items()))
    flat.write_prediction(n0, "GTVp", c0.labels["GTVp"][10:12], c0.geometry)
    flat.write_prediction("ghost", "GTVp", c0.labels["GTVp"], c0.geometry)  # a case not in the data
    return {"out": out, "cases": cases, "preds": preds, "names": list(cases),
            "runs": {"lb": lb, "cv": cv, "models": models, "nopred": nopred, "flat": flat}}


# ---------------------------------------------------------------------------------- discovery
def test_discovery_labels(fake):
    runs = fake["runs"]
    names = fake["names"]
    assert sorted(prediction_labels(runs["lb"].path)[names[0]]) == ["cscn", "unet"]
    cv = prediction_labels(runs["cv"].path)
    assert set(cv) == set(names) and all(list(d) == ["CSCN"] for d in cv.values())
    assert cv[names[1]]["CSCN"].fold == "fold_1"
    # every label ends in GTVp: the stem is dropped
    assert sorted(prediction_labels(runs["models"].path)[names[0]]) == ["deeplab", "unet2d"]
    # a lone root prediction keeps its stem
    assert list(prediction_labels(runs["flat"].path)[names[0]]) == ["GTVp"]
    assert prediction_labels(runs["nopred"].path) == {}

    views = list_runs(fake["out"], "smoke")
    assert [v.paper for v in views] == ["leaderboard", "guo2021", "xue2020", "luo2020", "other"]
    lb = views[0]
    assert lb.label.startswith("leaderboard/") and lb.cases == names and lb.labels == ["cscn", "unet"]
    cv = lb.case(names[0])
    assert cv.shape == fake["cases"][names[0]].shape and "T1" in cv.channels
    assert cv.default_structure == "GTVp"
    mask, zs, note = lb.prediction(names[0], "unet")
    assert zs is None and note == "" and np.array_equal(mask, fake["preds"][names[0]]["unet"])
    rows = lb.metrics_for(names[0])
    assert list(rows.columns[:3]) == ["method", "structure", "dice"] and len(rows) == 2
    assert lb.score_for(names[0], "unet") == pytest.approx(0.8123)
    assert views[1].score_for(names[1], "CSCN") == pytest.approx(0.6)
    # no predictions: cases from metrics.csv, images still load
    nop = views[3]
    assert not nop.has_predictions and nop.cases == names and nop.notes()
    assert len(nop.metrics_for(names[0])) == 2
    assert list(nop.metrics_for(names[0], structure="GTVp").dice) == [0.4]
    assert nop.case(names[1]).image("T1").shape == cv.shape
    # 2D slices of an unknown chapter: reported, not shown
    assert views[4].cases == ["ghost", names[0]]
    with pytest.raises(DataError, match="'ghost' is not in the run's data"):
        views[4].case("ghost")
    mask, zs, note = views[4].prediction(names[0], "GTVp")
    assert mask is None and "not the case grid" in note


# ---------------------------------------------------------------------------------- rendering
def test_slices_and_spacing():
    vol = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    assert slice_of(vol, "axial", 2).shape == (5, 6)
    assert slice_of(vol, "coronal", 3).shape == (4, 6)
    assert slice_of(vol, "sagittal", 5).shape == (4, 5)
    assert np.array_equal(slice_of(vol, "coronal", 1), vol[::-1, 1, :])  # superior (high z) on top
    assert np.array_equal(slice_of(vol, "sagittal", 1, superior_up=False), vol[:, :, 1])
    assert R.plane_spacing((3.0, 1.0, 0.5), "coronal") == (3.0, 0.5)
    assert R.plane_spacing((3.0, 1.0, 0.5), "sagittal") == (3.0, 1.0)
    m = np.zeros((4, 5, 6), bool)
    m[1, 1:3, 1:3] = True
    m[2, 2, 2] = True
    assert R.best_slice(m, "axial") == 1 and R.best_slice(m, "coronal") == 2
    with pytest.raises(ParameterError, match="plane"):
        slice_of(vol, "oblique", 0)
    with pytest.raises(ParameterError, match=r"\[0, 3\]"):
        slice_of(vol, "axial", 4)


def test_render_png():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(40, 60)).astype(np.float32)
    gt = np.zeros((40, 60), bool)
    gt[10:25, 20:40] = True
    preds = {"a": np.roll(gt, 3, axis=1), "b": np.roll(gt, -4, axis=0), "c": None}
    contour = render_png(img, gt, preds, style="contour", spacing2d=(3.0, 1.0), title="t", width=420)
    fill = render_png(img, gt, preds, style="fill", opacity=0.5, spacing2d=(3.0, 1.0), title="t", width=420)
    w, h = png_size(contour)
    assert w == 420 and png_size(fill)[0] == 420 and h > 100
    assert contour != fill
    faint, strong = (render_png(img, gt, preds, opacity=a, width=420) for a in (0.2, 0.9))
    assert faint != strong
    assert png_size(render_png(img, None, {}, width=300))[0] == 300
    with pytest.raises(ParameterError):
        render_png(img, gt, preds, style="dots")
    with pytest.raises(ParameterError):
        render_png(img, gt[:5], preds)


# ---------------------------------------------------------------------------------- widgets
def test_explorer_widgets(fake):
    names = fake["names"]
    ex = Explorer(out_dir=fake["out"], profile="smoke", width=480)
    assert ex.view.paper == "leaderboard"  # the leaderboard run is preferred over newer runs
    assert ex.widget is not None and ex.image.format == "png"
    assert png_size(ex.image.value)[0] == 480
    assert set(ex.predictions.value) == {"cscn", "unet"}
    gt = fake["cases"][ex.case.value].labels["GTVp"]
    assert ex.slice.value == R.best_slice(gt, "axial")
    assert "0.812" in ex.metrics.value and "DSC" in ex.metrics.value

    first = ex.image.value
    ex.case.value = names[1]
    assert ex.image.value != first
    assert f"{0.8123 - 0.02:.3f}" in ex.metrics.value and "0.812" not in ex.metrics.value
    v = ex.image.value
    ex.slice.value = (ex.slice.value + 3) % (ex.slice.max + 1)
    assert ex.image.value != v
    v = ex.image.value
    ex.plane.value = "sagittal"
    assert ex.image.value != v and ex.slice.max == gt.shape[2] - 1
    v = ex.image.value
    ex.style.value = "fill"
    assert ex.image.value != v
    v = ex.image.value
    ex.predictions.value = ("unet",)
    assert ex.image.value != v
    v = ex.image.value
    ex.modality.value = "CT"
    assert ex.image.value != v

    ex.run.value = next(lab for lab in ex.run.options if lab.startswith("luo2020/"))
    assert "no predictions" in ex.status.value and ex.predictions.options == ()
    assert "0.400" in ex.metrics.value and "0.700" not in ex.metrics.value  # the GT structure's rows
    ex.structure.value = "Body"  # not scored: every row of the case
    assert "0.700" in ex.metrics.value
    assert png_size(ex.image.value)[0] == 480
    ex.run.value = next(lab for lab in ex.run.options if lab.startswith("other/"))
    assert "not the case grid" in ex.status.value and ex.image.value[:8] == PNG
    ex.case.value = "ghost"
    assert "not in the run's data" in ex.status.value and len(ex.image.value) == 0
    ex.case.value = names[0]
    assert "not in the run's data" not in ex.status.value and ex.image.value[:8] == PNG

    ex2 = Explorer(out_dir=fake["out"], profile="smoke", run="guo2021", case=names[1], plane="coronal",
                   style="fill")
    assert ex2.view.paper == "guo2021" and ex2.case.value == names[1] and ex2.plane.value == "coronal"
    assert "0.600" in ex2.metrics.value and ex2.image.value[:8] == PNG

    fig = gallery(ex2.view)
    assert len(fig.axes) == 2 * 2


def test_bad_inputs(fake, tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        list_runs(tmp_path / "missing", "smoke")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no runs under"):
        Explorer(out_dir=tmp_path / "empty", profile="smoke")
    with pytest.raises(ParameterError, match="unknown run 'nope'"):
        Explorer(out_dir=fake["out"], profile="smoke", run="nope")
    with pytest.raises(ParameterError, match="unknown case 'npc_999'"):
        Explorer(out_dir=fake["out"], profile="smoke", case="npc_999")
    with pytest.raises(ParameterError, match="plane"):
        Explorer(out_dir=fake["out"], profile="smoke", plane="oblique")
    with pytest.raises(DataError, match="not a run folder"):
        RunView(tmp_path)


# ---------------------------------------------------------------------------------- notebook
def _execute(tmp_path, out_dir, name):
    import nbformat
    import papermill as pm

    dst = tmp_path / f"{name}.ipynb"
    pm.execute_notebook(str(REPO / "notebooks" / "explorer.ipynb"), str(dst),
                        parameters={"profile": "smoke", "out_dir": str(out_dir)}, kernel_name="python3",
                        cwd=str(REPO), progress_bar=False)
    return nbformat.read(dst, as_version=4)


def test_notebook_stores_widget_state(fake, tmp_path):
    src = json.loads((REPO / "notebooks" / "explorer.ipynb").read_text(encoding="utf-8"))
    assert all(not c.get("outputs") for c in src["cells"] if c["cell_type"] == "code")
    tagged = [c for c in src["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1 and 'run = ""' in "".join(tagged[0]["source"])

    nb = _execute(tmp_path, fake["out"], "explorer")
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    images = [m for m in state.values() if m["model_name"] == "ImageModel"]
    assert len(images) == 1 and images[0]["state"]["format"] == "png"
    assert images[0].get("buffers") or images[0]["state"].get("value")
    views = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) == 1
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the static gallery is missing"
    viewer = [o["data"]["text/html"] for o in outputs if "npc-viewer" in str(o.get("data", {}).get("text/html", ""))]
    assert len(viewer) == 1, "the static viewer is missing"
    digest = re.search(r"_viewer/([0-9a-f]{16})/manifest.json", "".join(viewer[0])).group(1)
    assert (Path(fake["out"]) / "smoke" / "_viewer" / digest / "manifest.json").is_file()


def test_notebook_without_runs(tmp_path):
    nb = _execute(tmp_path, tmp_path / "nothing", "empty")
    text = json.dumps([o for c in nb.cells if c.cell_type == "code" for o in c.outputs])
    assert "Nothing to explore yet" in text and "0 run(s)" in text
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not any(o.get("output_type") == "error" for o in outputs)
