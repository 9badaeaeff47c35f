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


def _run(out, chapter: str, stamp: str, params: dict, *, methods, folds, structures=("GTVp",),
         seeds=(0,), metrics=(), data=None) -> RunFolder:
    """A run folder in the experiment runner's layout (run.json, splits.json, metrics.csv)."""
    from npcrepro.datasets.splits import Fold, save_splits

    path = out / "smoke" / chapter / f"{stamp}-{chapter}"
    path.mkdir(parents=True)
    run = RunFolder(path, writer=True)
    run.write_params(dict(params, paper=chapter))
    save_splits([Fold([], [], list(t)) for t in folds], path / "splits.json")
    (path / "run.json").write_text(json.dumps({
        "chapter": chapter, "status": "done", "methods": [{"name": m, "label": m.upper()} for m in methods],
        "folds": len(folds), "seeds": list(seeds), "structures": list(structures), "channels": ["T1"],
        "data": str(data)}))
    pd.DataFrame(list(metrics)).to_csv(path / "metrics.csv", index=False)
    return run


def _predict(run, method, fold, seed, case, structure, mask, geometry):
    from npcrepro.engine.experiment import job_dir

    RunFolder(job_dir(run.path, method, fold, seed), writer=True).write_prediction(case, structure, mask, geometry)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """An out_dir with four runs on a 2-case smoke phantom, in the runner's layout: a hold-out run of
    two methods (one fold), a cross-validated run (one test case per fold), a run with two structures
    and two seeds, and a run without predictions."""
    out = tmp_path_factory.mktemp("viz") / "runs"
    P = {"data": "phantom", "profile": "smoke", "seed": 0, "out_dir": str(out), "n_cases": 2,
         "phantom_preset": "smoke"}
    ds = load_data(Params(P))
    cases = {n: ds.load(n, channels=["T1"], structures=["GTVp", "Body"]) for n in ds.cases}
    names = list(cases)
    preds = {}
    for n, c in cases.items():
        gt = c.labels["GTVp"]
        preds[n] = {"unet": np.roll(gt, 1, axis=2), "cscn": np.roll(gt, 3, axis=1)}

    rows = []
    for n in names:
        for i, m in enumerate(("unet", "cscn")):
            rows.append({"method": m, "fold": 0, "seed": 0, "case": n, "structure": "GTVp",
                         "dice": 0.8123 - 0.1 * i - 0.01 * len(rows), "hd95": 3.25 + i, "assd": 1.0, "nsd": 0.9})
    lb = _run(out, "leaderboard", "20260101-000001", P, methods=["unet", "cscn"], folds=[names],
              metrics=rows, data=ds.root)
    for n, c in cases.items():
        for m in ("unet", "cscn"):
            _predict(lb, m, 0, 0, n, "GTVp", preds[n][m], c.geometry)

    cv = _run(out, "guo2021", "20260101-000002", P, methods=["CSCN"], folds=[[n] for n in names],
              metrics=[{"method": "CSCN", "fold": k, "seed": 0, "case": n, "structure": "GTVp",
                        "dice": 0.5 + k / 10} for k, n in enumerate(names)], data=ds.root)
    for k, (n, c) in enumerate(cases.items()):
        _predict(cv, "CSCN", k, 0, n, "GTVp", preds[n]["cscn"], c.geometry)

    multi = _run(out, "luo2020", "20260101-000003", P, methods=["ours"], folds=[names],
                 structures=("GTVp", "Body"), seeds=(0, 1), data=ds.root,
                 metrics=[{"method": "ours", "fold": 0, "seed": s, "case": n, "structure": st, "dice": d + s / 10}
                          for n in names for st, d in (("GTVp", 0.4), ("Body", 0.7)) for s in (0, 1)])
    for n, c in cases.items():
        for s in (0, 1):
            _predict(multi, "ours", 0, s, n, "GTVp", preds[n]["unet"], c.geometry)
            _predict(multi, "ours", 0, s, n, "Body", c.labels["Body"], c.geometry)

    nopred = _run(out, "xue2020", "20260101-000004", P, methods=["deeplab"], folds=[names], data=ds.root,
                  metrics=[{"method": "deeplab", "fold": 0, "seed": 0, "case": n, "structure": "GTVp",
                            "dice": 0.4} for n in names])
    return {"out": out, "cases": cases, "preds": preds, "names": names,
            "runs": {"lb": lb, "cv": cv, "multi": multi, "nopred": nopred}}


# ---------------------------------------------------------------------------------- discovery
def test_discovery_labels(fake):
    runs = fake["runs"]
    names = fake["names"]
    assert list(prediction_labels(runs["lb"].path)[names[0]]) == ["unet", "cscn"]
    cv = prediction_labels(runs["cv"].path)
    assert set(cv) == set(names) and all(list(d) == ["CSCN"] for d in cv.values())
    assert cv[names[1]]["CSCN"].fold == 1
    multi = prediction_labels(runs["multi"].path)[names[0]]
    assert sorted(multi) == ["ours/Body (seed 0)", "ours/Body (seed 1)", "ours/GTVp (seed 0)",
                             "ours/GTVp (seed 1)"]
    assert prediction_labels(runs["nopred"].path) == {}

    views = list_runs(fake["out"], "smoke")
    assert [v.paper for v in views] == ["leaderboard", "guo2021", "luo2020", "xue2020"]
    # an aborted run is not offered: a copy of the leaderboard's run, marked FAILED
    import shutil

    aborted = fake["out"] / "smoke" / "leaderboard" / "20260101-000009-aborted"
    shutil.copytree(views[0].path, aborted)
    (aborted / "FAILED").write_text("KeyboardInterrupt\n")
    try:
        assert [v.name for v in list_runs(fake["out"], "smoke")] == [v.name for v in views]
    finally:
        shutil.rmtree(aborted)
    lb = views[0]
    assert lb.label.startswith("leaderboard/") and lb.cases == names and lb.labels == ["unet", "cscn"]
    cv = lb.case(names[0])
    assert cv.shape == fake["cases"][names[0]].shape and "T1" in cv.channels
    assert cv.default_structure == "GTVp"
    mask, zs, note = lb.prediction(names[0], "unet")
    assert zs is None and note == "" and np.array_equal(mask, fake["preds"][names[0]]["unet"])
    rows = lb.metrics_for(names[0])
    assert list(rows.columns[:2]) == ["method", "dice"] and len(rows) == 2
    assert lb.score_for(names[0], "unet") == pytest.approx(0.8123)
    assert views[1].score_for(names[1], "CSCN") == pytest.approx(0.6)
    m = views[2]
    assert m.score_for(names[0], "ours/Body (seed 1)") == pytest.approx(0.8)
    assert list(m.metrics_for(names[0], structure="GTVp").dice) == [0.4, 0.5]
    # no predictions: cases from the splits, images still load
    nop = views[3]
    assert not nop.has_predictions and nop.cases == names and nop.notes()
    assert nop.case(names[1]).image("T1").shape == cv.shape
    with pytest.raises(DataError, match="'ghost' is not in the run's data"):
        nop.case("ghost")


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
    assert ex.slice.value == R.best_slice(gt, "axial") + 1 and ex.slice.min == 1  # counted from 1
    assert "0.812" in ex.metrics.value and "DSC" in ex.metrics.value

    first = ex.image.value
    ex.case.value = names[1]
    assert ex.image.value != first
    assert f"{0.8123 - 0.02:.3f}" in ex.metrics.value and "0.812" not in ex.metrics.value
    v = ex.image.value
    ex.slice.value = (ex.slice.value + 2) % ex.slice.max + 1
    assert ex.image.value != v
    v = ex.image.value
    ex.plane.value = "sagittal"
    assert ex.image.value != v and ex.slice.max == gt.shape[2]
    v = ex.image.value
    ex.style.value = "fill"
    assert ex.image.value != v
    v = ex.image.value
    ex.predictions.value = ("unet",)
    assert ex.image.value != v
    v = ex.image.value
    ex.modality.value = "CT"
    assert ex.image.value != v

    ex.run.value = next(lab for lab in ex.run.options if lab.startswith("xue2020/"))
    assert "no predictions" in ex.status.value and ex.predictions.options == ()
    assert "0.400" in ex.metrics.value
    assert png_size(ex.image.value)[0] == 480
    ex.run.value = next(lab for lab in ex.run.options if lab.startswith("luo2020/"))
    assert "0.400" in ex.metrics.value and "0.700" not in ex.metrics.value  # the GT structure's rows
    ex.structure.value = "Body"
    assert "0.700" in ex.metrics.value and "0.400" not in ex.metrics.value

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
    assert len(tagged) == 1 and "\nrun: str = None  # " in "".join(tagged[0]["source"])

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


HOSTILE = "<img src=x onerror=alert(1)>"


def _live_html(nb) -> list[str]:
    """Every HTML or Markdown output of an executed notebook that holds the hostile string unescaped."""
    found = []
    for c in nb.cells:
        for o in c.get("outputs", []) if c.cell_type == "code" else []:
            for kind in ("text/html", "text/markdown"):
                text = "".join(o.get("data", {}).get(kind, ""))
                if "<img src=x" in text:
                    found.append(text[max(0, text.index("<img src=x") - 80):][:200])
    return found


def test_the_explorer_page_shows_hostile_run_names_and_paths_as_text(fake, tmp_path):
    """A shared run folder named like HTML, under an out_dir whose path is HTML too, and the same path
    with no runs (the "Nothing to explore yet" message): executed, the page holds no live HTML."""
    import shutil

    out = tmp_path / HOSTILE / "runs"
    shutil.copytree(fake["out"], out)
    run = next((out / "smoke" / "guo2021").iterdir())
    run.rename(run.with_name(f"{run.name}-{HOSTILE}"))
    nb = _execute(tmp_path, out, "hostile")
    assert not _live_html(nb)
    assert HOSTILE.replace("<", "&lt;").replace(">", "&gt;") in json.dumps([c.get("outputs") for c in nb.cells])
    nb = _execute(tmp_path, tmp_path / HOSTILE / "nothing", "hostile-empty")
    assert not _live_html(nb) and "Nothing to explore yet" in json.dumps([c.get("outputs") for c in nb.cells])


def test_notebook_without_runs(tmp_path):
    nb = _execute(tmp_path, tmp_path / "nothing", "empty")
    text = json.dumps([o for c in nb.cells if c.cell_type == "code" for o in c.outputs])
    assert "Nothing to explore yet" in text and "0 run(s)" in text
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not any(o.get("output_type") == "error" for o in outputs)


def test_convergence_section_is_written_once_with_the_codes_tolerance(monkeypatch):
    from npcrepro.engine import results as results_module
    from npcrepro.viz import sections

    text = sections.convergence_text()
    assert f"at most {results_module.CONVERGENCE_TOLERANCE:g} over" in text and text.endswith("spread.")
    assert sections.convergence_text(0.05, note=" Stepwise. ").endswith("spread. Stepwise.")
    assert "at most 0.05 over" in sections.convergence_text(0.05)

    shown, calls = [], []

    class FakeResults:
        def convergence(self, **kw):
            calls.append(kw)
            return "table"

    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj.data))
    assert sections.convergence(FakeResults(), note="Particular.") == "table"
    assert calls == [{"tolerance": results_module.CONVERGENCE_TOLERANCE, "labels": True}]
    assert shown == [sections.convergence_text(note="Particular.")]


def test_panel_grid_gives_one_panel_per_item_and_blanks_the_rest():
    import matplotlib

    matplotlib.use("Agg")
    from npcrepro.plots import panel_grid

    fig, axes = panel_grid(4)
    assert len(axes) == 4 and len(fig.axes) == 6                      # two rows of three
    assert [a.axison for a in fig.axes] == [True] * 4 + [False] * 2
    assert tuple(fig.get_size_inches()) == pytest.approx((12.6, 5.6))
    fig, axes = panel_grid(2, cols=2, width=5.0, height=3.2)
    assert len(axes) == 2 and tuple(fig.get_size_inches()) == pytest.approx((10.0, 3.2))
