"""`npcrepro score` and the leaderboard's `external` rows: an outsider's NIfTI predictions under the
common protocol. The project's own U-Net, written out as NIfTI and scored as an outsider's, gets the
in-book U-Net's numbers exactly."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from npcrepro import io, scoring
from npcrepro.cli import main
from npcrepro.datasets import Case, write_dataset
from npcrepro.errors import DataError, ParameterError

SHAPE = (6, 16, 14)


def _dataset(root):
    cases = []
    for i in range(4):
        gtv = np.zeros(SHAPE, bool)
        gtv[2:4, 4:9, 3:8 + i] = True
        cases.append(Case(f"c{i}", {"CT": np.zeros(SHAPE, np.float32)}, {"GTVp": gtv}, (2.0, 1.0, 1.0),
                          origin=(5.0, 0.0, 0.0)))
    return write_dataset(root, cases, channels=["CT"], structures=["GTVp"])


def _write(folder, name, array, ds, case, **kw):
    g = ds.load(case).geometry
    io.write(io.Volume(array, kw.get("spacing", g.spacing), kw.get("origin", g.origin), g.direction),
             folder / name)


def test_predictions_in_either_layout_are_read_and_checked(tmp_path):
    ds = _dataset(tmp_path / "ds")
    cases = [ds.load(n) for n in ("c1", "c2")]
    folder = tmp_path / "pred"
    good = cases[0].labels["GTVp"]
    _write(folder, "c1.nii.gz", good.astype(np.uint8), ds, "c1")                  # nnU-Net naming
    _write(folder, "c2/GTVp.nii.gz", np.zeros(SHAPE, np.uint8), ds, "c2")          # the project's
    got = scoring.read_predictions(folder, cases, "GTVp")
    np.testing.assert_array_equal(got["c1"], good)
    assert not got["c2"].any()
    with pytest.raises(DataError, match=r"pred: no prediction for 2 of the 3 test case\(s\): c0, c3"):
        scoring.read_predictions(folder, [ds.load(n) for n in ("c0", "c1", "c3")], "GTVp")
    _write(folder, "c1.nii.gz", good.astype(np.uint8) * 2, ds, "c1")
    with pytest.raises(DataError, match=r"c1.nii.gz: not a binary mask \(values \[0, 2\]\).*--label N"):
        scoring.read_predictions(folder, cases, "GTVp")
    np.testing.assert_array_equal(scoring.read_predictions(folder, cases, "GTVp", label=2)["c1"], good)
    _write(folder, "c1.nii.gz", good.astype(np.uint8), ds, "c1", spacing=(2.0, 1.0, 1.2))
    with pytest.raises(DataError, match=r"c1.nii.gz: geometry differs from the reference case 'c1' \(spacing"):
        scoring.read_predictions(folder, cases, "GTVp")
    _write(folder, "c1.nii.gz", good.astype(np.uint8), ds, "c1", origin=(0.0, 0.0, 0.0))
    with pytest.raises(DataError, match=r"geometry differs .* \(origin"):
        scoring.read_predictions(folder, cases, "GTVp")
    with pytest.raises(DataError, match="prediction folder not found"):
        scoring.read_predictions(tmp_path / "nowhere", cases, "GTVp")


def _fake_run(root, ds, table: pd.DataFrame, test, done=True):
    from npcrepro.engine import RunFolder

    rf = RunFolder.create(root, "smoke", "leaderboard", "phantom", params={"data": str(ds.root), "n_boot": 200,
                                                                          "seed": 0})
    rf.write_metrics(table)
    rf.write_summary({"track": "phantom", "structure": "GTVp", "train": ["c0"], "test": test})
    if done:
        rf.mark_done()
    return rf.path


def test_score_pairs_against_the_baselines_under_the_runs_protocol(tmp_path):
    from npcrepro.evaluation import evaluate_cases

    ds = _dataset(tmp_path / "ds")
    test = ["c1", "c2", "c3"]
    cases = [ds.load(n) for n in test]
    perfect = {c.name: {"GTVp": c.labels["GTVp"]} for c in cases}
    shrunk = {c.name: {"GTVp": np.roll(c.labels["GTVp"], 1, axis=1)} for c in cases}
    table = pd.concat([evaluate_cases(shrunk, cases, method="unet_ct"),
                       evaluate_cases(perfect, cases, method="deeplab_ct")], ignore_index=True)
    run = _fake_run(tmp_path / "runs", ds, table, test)
    for c in cases:
        _write(tmp_path / "mine", f"{c.name}.nii.gz", c.labels["GTVp"].astype(np.uint8), ds, c.name)
    ref = scoring.read_reference(scoring.find_reference(tmp_path / "runs", "smoke"))
    assert ref.run == run and ref.test == test and ref.n_boot == 200
    res = scoring.score(tmp_path / "mine", ref, ds, name="mine", baselines=["unet_ct", "unet_cet1"],
                        metrics=["dice", "hd95"])
    assert list(res.table["case"]) == test and np.allclose(res.table["dice"], 1.0)
    assert list(res.paired["baseline"]) == ["unet_ct", "unet_ct"]  # unet_cet1 did not run
    dice = res.paired.set_index("metric").loc["dice"]
    expect = table[table["method"] == "unet_ct"]["dice"].to_numpy()
    assert dice["mean_b"] == pytest.approx(expect.mean()) and dice["mean_diff"] == pytest.approx(1 - expect.mean())
    s = res.summary.set_index("metric").loc["dice"]
    assert (s["mean"], s["ci_low"], s["ci_high"]) == (1.0, 1.0, 1.0)
    assert "vs unet_ct on dice" in str(res) and "1.0000 [1.0000, 1.0000]" in str(res)
    with pytest.raises(ParameterError, match="'deeplab_ct' is already a method"):
        scoring.score(tmp_path / "mine", ref, ds, name="deeplab_ct", baselines=[], metrics=["dice"])
    _fake_run(tmp_path / "runs2", ds, table, test, done=False)
    with pytest.raises(DataError, match="no finished leaderboard run"):
        scoring.find_reference(tmp_path / "runs2", "smoke")
    with pytest.raises(DataError, match="did not finish"):
        scoring.read_reference(next((tmp_path / "runs2").glob("smoke/leaderboard/*")))


# -------------------------------------------------------------------------- the project's own U-Net
@pytest.fixture(scope="module")
def unet_track(tmp_path_factory):
    """A smoke leaderboard with the CET1 U-Net alone, and its predictions copied out as an outsider's
    nnU-Net-style folder (<case>.nii.gz)."""
    import torch

    from npcrepro.pipelines import leaderboard as L
    from npcrepro.profiles import resolve

    tmp = tmp_path_factory.mktemp("lb")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        P = resolve("leaderboard", "smoke", out_dir=str(tmp / "runs"), methods=["unet_cet1"], workers=1)
        track = L.phantom_track(P, progress=False)
    finally:
        torch.set_num_threads(n)
    outsider = tmp / "my-model"
    for case in track.test:
        vol = io.read(track.run / "predictions" / case / "unet_cet1.nii.gz")
        io.write(vol, outsider / f"{case}.nii.gz")
    return track, outsider, tmp


@pytest.mark.slow
def test_the_unets_predictions_scored_as_an_outsiders_equal_the_in_book_unet(unet_track):
    from npcrepro.pipelines import leaderboard as L

    track, outsider, _ = unet_track
    rows = scoring.score_folder(outsider, track.data, track.test, track.structure, name="my-model")
    book = track.table[track.table["method"] == "unet_cet1"].reset_index(drop=True)
    metrics = [c for c in rows.columns if c not in ("case", "structure", "method")]
    pd.testing.assert_frame_equal(rows[["case", *metrics]], book[["case", *metrics]], check_exact=True)
    # the leaderboard with the folder as an external row: same numbers, with CIs and paired tests
    board = L.leaderboard_table(L.add_external(track, [str(outsider)]), n_boot=200).set_index("method")
    cols = ["DSC", "HD95 (mm)", "ASSD (mm)", "NSD"]
    assert list(board.loc["my-model", cols]) == list(board.loc["U-Net (CET1)", cols])
    assert re.fullmatch(r"[0-9.]+ \[[0-9.]+, [0-9.]+\]", board.loc["my-model", "DSC"])
    assert board.loc["my-model", "paper"] == "external"
    assert board.loc["my-model", "Δ DSC vs U-Net"] == "+0.000" and board.loc["my-model", "p (Wilcoxon)"] == "1"
    ext = pd.read_csv(track.run / "external.csv")
    assert list(ext["method"].unique()) == ["my-model"] and len(ext) == len(track.test)
    with pytest.raises(ParameterError, match="already a leaderboard row"):
        L.add_external(track, [str(outsider), str(outsider)])


@pytest.mark.slow
def test_cli_score_and_splits_export_use_the_runs_protocol(unet_track, tmp_path, capsys):
    track, outsider, tmp = unet_track
    assert main(["score", "phantom", str(outsider), "--name", "my-model", "--runs", str(tmp / "runs"),
                 "--profile", "smoke", "--out", str(tmp_path / "rows.csv")]) == 0
    out = capsys.readouterr().out
    book = track.table[track.table["method"] == "unet_cet1"]
    assert f"dice: {book['dice'].mean():.4f} [" in out and "vs unet_cet1 on dice" in out
    rows = pd.read_csv(tmp_path / "rows.csv")
    np.testing.assert_array_equal(rows["dice"].to_numpy(), book["dice"].to_numpy())
    assert main(["splits", "export", "leaderboard", str(tmp_path / "nn"), "--runs", str(tmp / "runs"),
                 "--profile", "smoke", "--track", "phantom"]) == 0
    splits = json.loads((tmp_path / "nn" / "splits_final.json").read_text())
    assert splits == [{"train": sorted(track.train), "val": sorted(track.test)}]
    missing = tmp_path / "partial"
    (missing / "x").mkdir(parents=True)
    assert main(["score", "phantom", str(missing), "--name", "x", "--runs", str(tmp / "runs"),
                 "--profile", "smoke"]) == 2
    assert f"no prediction for {len(track.test)} of the {len(track.test)} test case(s)" in capsys.readouterr().err


def _board_row(nb, label: str) -> list[str]:
    """The cells of the leaderboard table row named ``label`` in an executed notebook."""
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith("board = L.leaderboard_table"):
            html = "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)
            for tr in re.findall(r"<tr>(.*?)</tr>", html, flags=re.S):
                cells = [re.sub(r"<.*?>", "", c).strip() for c in re.findall(r"<t[dh].*?</t[dh]>", tr, flags=re.S)]
                if label in cells:
                    return cells[cells.index(label):]
    raise AssertionError(f"no leaderboard row {label!r}")


@pytest.mark.slow
def test_leaderboard_notebook_with_an_external_folder(run_notebook, unet_track):
    """The chapter at smoke with the U-Net alone and the outsider folder (made from the library run's
    U-Net above, on the same seeded phantom) as ``external``: its row equals the in-book U-Net's."""
    from npcrepro.pipelines import leaderboard as L

    track, outsider, _ = unet_track
    nb = run_notebook("leaderboard", methods=["unet_cet1"], workers=1, external=[str(outsider)])
    row = _board_row(nb, "my-model")  # method, paper, input, dims, DSC, HD95, ASSD, NSD, Δ DSC, p
    assert row[1:4] == ["external", "own", "—"] and row[8:10] == ["+0.000", "1"]
    assert row[4:8] == _board_row(nb, "U-Net (CET1)")[4:8]
    library = L.leaderboard_table(track, n_boot=2000, seed=0).set_index("method")
    assert row[4:8] == list(library.loc["U-Net (CET1)", ["DSC", "HD95 (mm)", "ASSD (mm)", "NSD"]])
