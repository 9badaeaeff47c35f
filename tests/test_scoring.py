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
    with pytest.raises(DataError, match=r"no voxel of any prediction has label 99 \(values found: \[0, 2\]\)"):
        scoring.read_predictions(folder, cases, "GTVp", label=99)
    _write(folder, "c1.nii.gz", good.astype(np.uint8), ds, "c1", spacing=(2.0, 1.0, 1.2))
    with pytest.raises(DataError, match=r"c1.nii.gz: geometry differs from the reference case 'c1' \(spacing"):
        scoring.read_predictions(folder, cases, "GTVp")
    _write(folder, "c1.nii.gz", good.astype(np.uint8), ds, "c1", origin=(0.0, 0.0, 0.0))
    with pytest.raises(DataError, match=r"geometry differs .* \(origin"):
        scoring.read_predictions(folder, cases, "GTVp")
    with pytest.raises(DataError, match="prediction folder not found"):
        scoring.read_predictions(tmp_path / "nowhere", cases, "GTVp")


def _fake_run(root, ds, table: pd.DataFrame, test, status="done"):
    """A leaderboard run folder as the experiment runner lays it out (only what Results reads)."""
    from npcrepro.datasets import Fold, save_splits

    run = root / "smoke" / "leaderboard" / "20260101-000000-phantom"
    run.mkdir(parents=True)
    methods = sorted(set(table["method"]))
    (run / "run.json").write_text(json.dumps({
        "chapter": "leaderboard", "status": status, "folds": 1, "seeds": [0], "structures": ["GTVp"],
        "channels": ["CT"], "data": str(ds.root), "methods": [{"name": m, "label": m, "info": {}} for m in methods]}))
    (run / "params.json").write_text(json.dumps({"n_boot": 200, "seed": 0, "profile": "smoke"}))
    save_splits([Fold(["c0"], [], test)], run / "splits.json")
    table.assign(fold=0, seed=0).to_csv(run / "metrics.csv", index=False)
    if status == "done":
        (run / "DONE").write_text("")
    return run


def test_score_pairs_against_the_baselines_under_the_runs_protocol(tmp_path):
    from npcrepro.evaluation import evaluate_cases

    ds = _dataset(tmp_path / "ds")
    test = ["c1", "c2", "c3"]
    cases = [ds.load(n) for n in test]
    perfect = {c.name: {"GTVp": c.labels["GTVp"]} for c in cases}
    shifted = {c.name: {"GTVp": np.roll(c.labels["GTVp"], 1, axis=1)} for c in cases}
    table = pd.concat([evaluate_cases(shifted, cases, method="unet_ct"),
                       evaluate_cases(perfect, cases, method="deeplab_ct")], ignore_index=True)
    run = _fake_run(tmp_path / "runs", ds, table, test)
    for c in cases:
        _write(tmp_path / "mine", f"{c.name}.nii.gz", c.labels["GTVp"].astype(np.uint8), ds, c.name)
    ref = scoring.read_reference(scoring.find_reference(tmp_path / "runs", "smoke"))
    assert ref.run == run and ref.test == test and ref.n_boot == 200 and ref.seeds == [0]
    res = scoring.score(tmp_path / "mine", ref, name="mine", baselines=["unet_ct", "unet_cet1"],
                        metrics=["dice", "hd95"])
    assert list(res.table["case"]) == test and np.allclose(res.table["dice"], 1.0)
    assert list(res.table.columns[:5]) == ["method", "fold", "seed", "case", "structure"]
    assert list(res.paired["baseline"]) == ["unet_ct", "unet_ct"]  # unet_cet1 did not run
    dice = res.paired.set_index("metric").loc["dice"]
    expect = table[table["method"] == "unet_ct"]["dice"].to_numpy()
    assert dice["mean_b"] == pytest.approx(expect.mean()) and dice["mean_diff"] == pytest.approx(1 - expect.mean())
    s = res.summary.set_index("metric").loc["dice"]
    assert (s["mean"], s["ci_low"], s["ci_high"]) == (1.0, 1.0, 1.0)
    assert "vs unet_ct on dice" in str(res) and "1.0000 [1.0000, 1.0000]" in str(res)
    with pytest.raises(ParameterError, match="'deeplab_ct' is already a method"):
        scoring.score(tmp_path / "mine", ref, name="deeplab_ct", baselines=[], metrics=["dice"])
    _fake_run(tmp_path / "runs2", ds, table, test, status="running")
    with pytest.raises(DataError, match="no finished leaderboard run"):
        scoring.find_reference(tmp_path / "runs2", "smoke")
    with pytest.raises(DataError, match="did not finish"):
        scoring.read_reference(next((tmp_path / "runs2").glob("smoke/leaderboard/*")))


# -------------------------------------------------------------------------- the project's own U-Net
@pytest.fixture(scope="module")
def unet_run(tmp_path_factory):
    """A smoke leaderboard with the CET1 U-Net alone, and its predictions copied out as an outsider's
    nnU-Net-style folder (<case>.nii.gz)."""
    from npcrepro.chapters.leaderboard import tracks
    from npcrepro.profiles import resolve

    tmp = tmp_path_factory.mktemp("lb")
    P = resolve("leaderboard", "smoke", out_dir=str(tmp / "runs"), methods=["unet_cet1"], workers=1)
    res = tracks.phantom_run(P, progress=False)
    outsider = tmp / "my-model"
    for case in res.test_cases():
        io.write(io.read(res.prediction_path("unet_cet1", case)), outsider / f"{case}.nii.gz")
    return res, outsider, tmp


@pytest.mark.slow
def test_the_unets_predictions_scored_as_an_outsiders_equal_the_in_book_unet(unet_run, tmp_path):
    import shutil

    from npcrepro.chapters.leaderboard import report as L
    from npcrepro.chapters.leaderboard.external import add_external
    from npcrepro.engine.results import Results

    res, outsider, _ = unet_run
    res = Results.open(shutil.copytree(res.path, tmp_path / res.path.name))  # the shared run stays as it was
    rows = scoring.score_folder(outsider, res.dataset(), res.test_cases(), res.structures[0], name="my-model")
    book = res.metrics[res.metrics["method"] == "unet_cet1"].reset_index(drop=True)
    metrics = [c for c in rows.columns if c not in ("method", "fold", "seed", "case", "structure")]
    assert len(rows) == len(book) == len(res.test_cases())
    pd.testing.assert_frame_equal(rows[["case", *metrics]], book[["case", *metrics]], check_exact=True)
    # the leaderboard with the folder as an external row: same numbers, with CIs and paired tests
    more = add_external(res, [str(outsider)])
    board = L.leaderboard_table(more, n_boot=200).set_index("method")
    cols = ["DSC", "HD95 (mm)", "ASSD (mm)", "NSD", "failed patients"]
    assert list(board.loc["my-model", cols]) == list(board.loc["U-Net (CET1)", cols])
    # the interval does not break across lines (a non-breaking space after its comma)
    assert re.fullmatch(r"[0-9.]+ \[[0-9.]+,\u00a0[0-9.]+\]", board.loc["my-model", "DSC"])
    assert board.loc["my-model", "paper"] == "external" and board.loc["my-model", "p (Wilcoxon)"] == "1"
    assert board.loc["my-model", "Δ DSC vs U-Net [95% CI]"] == "0.000 [0.000,\u00a00.000]"
    assert L.paired_table(more).set_index("method").loc["my-model", "baseline"].iloc[0] == "U-Net (CET1)"
    assert "my-model" not in set(res.metrics["method"])  # the run's own Results are left as they were
    ext = pd.read_csv(res.path / "external.csv")
    assert list(ext["method"].unique()) == ["my-model"] and len(ext) == len(res.test_cases())
    with pytest.raises(ParameterError, match="already a leaderboard row"):
        add_external(res, [str(outsider), str(outsider)])
    # a later reader of the run sees the row; adding it again (a re-executed page) replaces it; none: dropped
    again = Results.open(res.path)
    assert again.label("my-model") == "my-model" and again.added_rows == {"my-model": "external.csv"}
    pd.testing.assert_frame_equal(again.metrics[again.metrics["method"] == "my-model"].reset_index(drop=True),
                                  more.metrics[more.metrics["method"] == "my-model"].reset_index(drop=True))
    twice = add_external(again, [str(outsider)])
    assert twice.methods.count("my-model") == 1 and (twice.metrics["method"] == "my-model").sum() == len(ext)
    assert Results.open(res.path).methods == twice.methods
    assert "my-model" not in add_external(again, []).methods and "my-model" not in Results.open(res.path).methods
    assert (res.path / "external.csv").exists()  # the scores stay; the run no longer lists the row


@pytest.mark.slow
def test_nnunets_rows_join_the_run_with_their_half_budget_and_are_not_retrained(unet_run, tmp_path, monkeypatch):
    """nnunet.add_to_run on a run whose nnU-Net predictions (here the U-Net's, copied; at half the
    epochs empty masks) are already there for the asked budget: rows added without training, scored
    as the book's, paired against the CET1 U-Net, with their convergence; off and missing-environment
    accounts in one line."""
    import shutil

    from npcrepro.chapters.leaderboard import nnunet
    from npcrepro.chapters.leaderboard import report as L
    from npcrepro.engine.results import Results
    from npcrepro.profiles import resolve

    from npcrepro.predict import predict
    from npcrepro.quality import quality_table

    res, outsider, _ = unet_run
    res = Results.open(shutil.copytree(res.path, tmp_path / "smoke" / "leaderboard" / res.path.name))
    P = resolve("leaderboard", "smoke", out_dir=str(tmp_path), methods=["unet_cet1"], workers=1)
    same, said = nnunet.add_to_run(P, res)
    assert same is res and said.startswith("off in the smoke profile (nnunet = [])")
    P = P.replace(nnunet=["cet1"], nnunet_epochs=2, nnunet_iterations=3)
    monkeypatch.setenv("NPCREPRO_NNUNET_PYTHON", str(tmp_path / "nowhere" / "python"))
    same, said = nnunet.add_to_run(P, res)
    assert same is res and said.startswith("not run: no nnU-Net environment at") and "setup_nnunet_env.sh" in said
    monkeypatch.setattr(nnunet, "environment", lambda: (tmp_path / "python", "2.8.1"))
    monkeypatch.setattr(nnunet, "train", lambda *a, **k: pytest.fail("trained again"))
    folder = res.path / "nnunet" / "nnunet-2d-cet1"
    shutil.copytree(outsider, folder)
    for case in res.test_cases():
        v = io.read(folder / f"{case}.nii.gz")
        io.write(io.Volume.on_grid(np.zeros(v.array.shape, np.uint8), v), folder / "half_budget" / f"{case}.nii.gz")
    (folder / "nnunet.json").write_text(json.dumps({"nnunetv2": "2.8.1", "configuration": "2d", "inputs": "cet1",
                                                     "epochs": 2, "iterations_per_epoch": 3, "channels": ["CET1"]}))
    more, said = nnunet.add_to_run(P, res)
    assert said == "1 nnU-Net row(s) (nnunetv2 2.8.1, 2d; 2 epochs x 3 iterations on cpu)"
    board = L.leaderboard_table(more, n_boot=200).set_index("method")
    row, unet = board.loc["nnU-Net 2D (CET1)"], board.loc["U-Net (CET1)"]
    assert (row["paper"], row["input"], row["dims"]) == ("nnU-Net", "CET1", "2D")
    assert row["DSC"] == unet["DSC"] and row["Δ DSC vs U-Net [95% CI]"] == "0.000 [0.000,\u00a00.000]"
    conv = more.convergence(labels=True).set_index("method").loc["nnU-Net 2D (CET1)"]
    dice = res.metrics.loc[res.metrics["method"] == "unet_cet1", "dice"].mean()
    assert conv["dice at half budget"] == 0 and conv["dice at full budget"] == pytest.approx(dice)
    versus = L.nnunet_table(more).set_index("method").loc["U-Net (CET1)"]
    assert versus["Δ DSC vs nnU-Net [95% CI]"] == "0.000 [0.000,\u00a00.000]"
    assert versus["beats nnU-Net?"] == "not decidable at this sample size"  # 2 test patients
    written = pd.read_csv(res.path / "nnunet" / "metrics.csv")
    assert list(written["method"].unique()) == ["nnunet-2d-cet1"] and len(written) == len(res.test_cases())
    assert (pd.read_csv(res.path / "nnunet" / "metrics_half.csv")["dice"] == 0).all()
    # every later reader of the run sees the row: the quality bars, its convergence; it is not a network to apply
    again = Results.open(res.path)
    assert again.label("nnunet-2d-cet1") == "nnU-Net 2D (CET1)"
    assert again.method_info("nnunet-2d-cet1")["inputs"] == "cet1"
    assert again.convergence(labels=True).set_index("method").loc["nnU-Net 2D (CET1)", "dice at half budget"] == 0
    bars = quality_table(tmp_path, "smoke").set_index("method")
    assert bars.loc["nnU-Net 2D (CET1)", "dice"] == pytest.approx(dice)
    assert bars.loc["nnU-Net 2D (CET1)", "input"] == "MRI"
    with pytest.raises(ParameterError, match="row scored from prediction files"):
        predict(res.path, tmp_path / "nowhere", tmp_path / "out", method="nnunet-2d-cet1")
    # a re-executed page adds the row once; with nnU-Net off the run no longer lists it
    assert nnunet.add_to_run(P, again)[0].methods.count("nnunet-2d-cet1") == 1
    assert "nnunet-2d-cet1" not in nnunet.add_to_run(P.replace(nnunet=[]), again)[0].methods
    assert "nnunet-2d-cet1" not in Results.open(res.path).methods
    nnunet.add_to_run(P, again)
    (res.path / "added_rows.json").write_text("{not json")  # a damaged record hides the rows, not the run
    with pytest.warns(UserWarning, match="read without its added rows"):
        damaged = Results.open(res.path)
    assert damaged.methods == res.methods and "nnunet-2d-cet1" not in set(damaged.metrics["method"])
    # another budget is another nnU-Net: trained (here: the stand-in refuses)
    with pytest.raises(pytest.fail.Exception, match="trained again"):
        nnunet.add_to_run(P.replace(nnunet_epochs=4), res)


@pytest.mark.slow
def test_cli_score_and_splits_export_use_the_runs_protocol(unet_run, tmp_path, capsys):
    res, outsider, tmp = unet_run
    assert main(["score", "phantom", str(outsider), "--name", "my-model", "--runs", str(tmp / "runs"),
                 "--profile", "smoke", "--out", str(tmp_path / "rows.csv")]) == 0
    out = capsys.readouterr().out
    book = res.metrics[res.metrics["method"] == "unet_cet1"]
    assert f"dice: {book['dice'].mean():.4f} [" in out and "vs unet_cet1 on dice" in out
    rows = pd.read_csv(tmp_path / "rows.csv")
    np.testing.assert_array_equal(rows["dice"].to_numpy(), book["dice"].to_numpy())
    assert main(["splits", "export", "leaderboard", str(tmp_path / "nn"), "--runs", str(tmp / "runs"),
                 "--profile", "smoke", "--track", "phantom"]) == 0
    splits = json.loads((tmp_path / "nn" / "splits_final.json").read_text())
    fold = res.splits()[0]  # the leaderboard's hold-out: no validation cases
    assert splits == [{"train": sorted(fold.train), "val": sorted(fold.test)}]
    assert splits[0]["val"] == sorted(set(book["case"])) and len(splits[0]["train"]) == 3
    missing = tmp_path / "partial"
    (missing / "x").mkdir(parents=True)
    assert main(["score", "phantom", str(missing), "--name", "x", "--runs", str(tmp / "runs"),
                 "--profile", "smoke"]) == 2
    n = len(res.test_cases())
    assert f"no prediction for {n} of the {n} test case(s)" in capsys.readouterr().err


def _board(nb) -> dict[str, dict[str, str]]:
    """The leaderboard table of an executed notebook: method label -> column -> cell text."""
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith("board = L.leaderboard_table"):
            html = "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)
            rows = [[re.sub(r"<.*?>", "", c).strip() for c in re.findall(r"<t[dh][^>]*>.*?</t[dh]>", tr, flags=re.S)]
                    for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", html, flags=re.S)]
            header = rows[0]
            return {r[header.index("method")]: dict(zip(header, r)) for r in rows[1:]}
    raise AssertionError("no leaderboard table in the notebook")


@pytest.mark.slow
def test_leaderboard_notebook_with_an_external_folder(run_notebook, unet_run):
    """The chapter at smoke with the U-Net alone and the outsider folder (made from the library run's
    U-Net above, on the same seeded phantom) as ``external``: its row equals the in-book U-Net's."""
    from npcrepro.chapters.leaderboard import report as L

    res, outsider, _ = unet_run
    nb = run_notebook("leaderboard", methods=["unet_cet1"], workers=1, external=[str(outsider)])
    board = _board(nb)
    mine, unet = board["my-model"], board["U-Net (CET1)"]
    assert (mine["paper"], mine["input"], mine["dims"]) == ("external", "own", "—")
    cols = ["DSC", "HD95 (mm)", "ASSD (mm)", "NSD"]
    library = L.leaderboard_table(res, n_boot=2000, seed=0).set_index("method")
    assert [mine[c] for c in cols] == [unet[c] for c in cols] == list(library.loc["U-Net (CET1)", cols])
    assert mine["p (Wilcoxon)"] == "1" and mine["Δ DSC vs U-Net [95% CI]"] == "0.000 [0.000,\u00a00.000]"
    said = [o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any(t.startswith("nnU-Net rows: off in the smoke profile (nnunet = [])") for t in said)
