"""The book's quality bars (npcrepro.quality) on run folders made here, and li2018's named exceptions."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from npcrepro import quality, summary
from npcrepro.cli import main


def _run(root, chapter, folder, methods, rows, half=None, channels=(), data_label="phantom"):
    """A finished run folder: ``methods`` name -> method info; ``rows`` (method, seed, case, dice,
    pred_empty) on GTVp; ``half`` the same rows at half the budget (default: the full ones)."""
    p = root / "cpu" / chapter / folder
    p.mkdir(parents=True)
    info = {"chapter": chapter, "status": "done", "data_label": data_label, "channels": list(channels),
            "methods": [{"name": m, "label": m.title(), "info": i} for m, i in methods.items()]}
    (p / "run.json").write_text(json.dumps(info))
    (p / "params.json").write_text("{}")
    cols = ["method", "seed", "case", "dice", "pred_empty"]
    for name, table in (("metrics.csv", rows), ("metrics_half.csv", half if half is not None else rows)):
        pd.DataFrame(table, columns=cols).assign(structure="GTVp", fold=0).to_csv(p / name, index=False)


@pytest.fixture
def runs(tmp_path):
    # template reads T1 (MRI); the unet averages its two seeds on p1 first: (0.5 + 0.7) / 2 = 0.6, then
    # with p2's 0.8 the mean is 0.7 (a mean over rows would give 0.667)
    _run(tmp_path, "template", "20260101-000000-unet2d", {"unet": {}},
         [("unet", 0, "p1", 0.5, False), ("unet", 1, "p1", 0.7, False), ("unet", 0, "p2", 0.8, False)],
         channels=["T1"])
    # the leaderboard records channels per method: a CT network at 0.55 meets the CT bar (0.50), an MRI
    # one at 0.60 misses the MRI bar (0.65); at half the budget the CT one scored 0.40 (not converged)
    _run(tmp_path, "leaderboard", "20260101-000000-phantom",
         {"ct_net": {"channels": ["CT"]}, "mr_net": {"channels": ["CET1", "T2"]}},
         [("ct_net", 0, "p1", 0.55, False), ("mr_net", 0, "p1", 0.60, False)],
         half=[("ct_net", 0, "p1", 0.40, False), ("mr_net", 0, "p1", 0.60, False)],
         channels=["CT", "CET1", "T2"])
    # li2018 records no channels (its DCE cohort): the paper's modality says MRI. faithful finds nothing
    # and is a named exception; working is fine
    _run(tmp_path, "li2018", "20260101-000000-cv", {"working": {}, "faithful": {}},
         [("working", 0, "p1", 0.9, False), ("faithful", 0, "p1", 0.0, True),
          ("faithful", 0, "p2", 0.0, True)], channels=[])
    # a real-data track is held to the bar of its input: a CT network at 0.1 on OpenKBP misses it
    _run(tmp_path, "xue2020", "20260101-000000-openkbp", {"unet": {}}, [("unet", 0, "k1", 0.1, False)],
         channels=["CT"], data_label="OpenKBP CT (1 patient)")
    return tmp_path


def test_table_reads_inputs_means_and_empty_cases(runs):
    t = quality.quality_table(runs, "cpu").set_index(["chapter", "method"])
    assert len(t) == 6
    real = t.loc[("xue2020", "Unet")]
    assert (real["data"], real["input"], real["structures"], real["test cases"]) == (
        "OpenKBP CT (1 patient)", "CT", "GTVp", 1)
    assert real["dice"] == pytest.approx(0.1) and not real["meets bar"]
    assert set(t.drop(index=("xue2020", "Unet"))["data"]) == {"phantom"}
    t = t.drop(index=("xue2020", "Unet"))
    assert t.loc[("template", "Unet"), "dice"] == pytest.approx(0.7)
    assert t.loc[("template", "Unet"), "test cases"] == 2
    assert t["input"].to_dict() == {("template", "Unet"): "MRI", ("leaderboard", "Ct_Net"): "CT",
                                    ("leaderboard", "Mr_Net"): "MRI", ("li2018", "Working"): "MRI",
                                    ("li2018", "Faithful"): "MRI"}
    assert t.loc[("leaderboard", "Ct_Net"), "bar"] == 0.50 and t.loc[("leaderboard", "Ct_Net"), "meets bar"]
    assert not t.loc[("leaderboard", "Mr_Net"), "meets bar"]
    assert t.loc[("li2018", "Faithful"), "cases predicted empty"] == 2
    assert t.loc[("li2018", "Faithful"), "exception"].startswith("the printed SGD")
    assert t.loc[("li2018", "Working"), "exception"] == ""


def test_summary_separates_misses_from_named_exceptions(runs):
    t = quality.quality_table(runs, "cpu")
    conv = summary.convergence_table(runs, "cpu")
    s = quality.quality_summary(t, conv)
    assert s["misses"] == ["leaderboard / Mr_Net", "xue2020 / Unet on OpenKBP CT (1 patient)"]
    assert not s["passed"]
    assert s["excused"] == ["li2018 / Faithful"]
    # 6 networks (the real-data one included); converged: template, mr_net, working, openkbp unet
    # (ct_net moved 0.15; faithful finds nothing)
    assert (s["networks"], s["converged"]) == (6, 4)
    assert (s["networks without exceptions"], s["converged without exceptions"]) == (5, 4)
    lines = quality.summary_lines(s)
    assert lines[0] == "bars: missed by leaderboard / Mr_Net; xue2020 / Unet on OpenKBP CT (1 patient)"
    assert "4 of 6 (67%)" in lines[-1] and "4 of 5 (80%) without the named exceptions" in lines[-1]


def test_a_network_that_predicts_nothing_misses_even_above_the_bar(tmp_path):
    # an all-empty prediction scores DSC 1 on a case without tumour; it still found no tumour
    _run(tmp_path, "template", "20260101-000000-unet2d", {"unet": {}}, [("unet", 0, "p1", 1.0, True)],
         channels=["T1"])
    t = quality.quality_table(tmp_path, "cpu")
    assert not t.loc[0, "meets bar"]


def test_cli_exit_status_follows_the_bars(runs, tmp_path, capsys):
    assert main(["quality", "--runs", str(runs)]) == 1
    out = capsys.readouterr().out
    assert "missed by leaderboard / Mr_Net" in out and "named exceptions below the bar: li2018 / Faithful" in out
    ok = tmp_path / "ok"
    _run(ok, "template", "20260101-000000-unet2d", {"unet": {}}, [("unet", 0, "p1", 0.9, False)], channels=["T1"])
    assert main(["quality", "--runs", str(ok)]) == 0
    empty = quality.quality_summary(quality.quality_table(tmp_path / "absent", "cpu"), pd.DataFrame())
    assert quality.summary_lines(empty) == ["bars: no finished run to check"]
    assert main(["quality", "--runs", str(tmp_path / "absent")]) == 2
    assert "no run folder" in capsys.readouterr().err
    assert main(["quality", "--runs", str(ok), "--profile", "gpu"]) == 2
    assert "no finished run" in capsys.readouterr().err


def _collapsing_run(root, volumes=((1.0, 1.0), (1.0, 1.0))):
    """A leaderboard run of one MRI network with two seeds on two cases: seed 0 converged (0.90 at
    half, 0.92 at full budget), seed 1 collapsed (0.90 -> 0.40). Their mean, 0.66, clears the MRI bar
    (0.65). ``volumes``: (predicted, reference) cm3 of seed 1 on p1 and p2."""
    p = root / "cpu" / "leaderboard" / "20260101-000000-phantom"
    p.mkdir(parents=True)
    (p / "run.json").write_text(json.dumps({"chapter": "leaderboard", "status": "done", "data_label": "phantom",
                                            "methods": [{"name": "net", "label": "Net",
                                                         "info": {"channels": ["CET1"]}}]}))
    (p / "params.json").write_text("{}")
    rows = []
    for seed, half, full in ((0, 0.90, 0.92), (1, 0.90, 0.40)):
        for case, (vp, vr) in zip(("p1", "p2"), volumes if seed == 1 else ((1.0, 1.0), (1.0, 1.0))):
            rows.append(dict(method="net", seed=seed, case=case, half=half, dice=full, pred_empty=False,
                             volume_pred_cm3=vp, volume_ref_cm3=vr, structure="GTVp", fold=0))
    df = pd.DataFrame(rows)
    df.drop(columns="half").to_csv(p / "metrics.csv", index=False)
    df.drop(columns="dice").rename(columns={"half": "dice"}).to_csv(p / "metrics_half.csv", index=False)
    return p


def test_a_collapsed_seed_is_flagged_although_the_mean_clears_the_bar(tmp_path, capsys):
    from npcrepro.engine.results import Results

    run = _collapsing_run(tmp_path, volumes=((5.0, 1.0), (1.0, 4.0)))
    f = Results.open(run).flags().set_index("seed")
    assert f.loc[0, "flag"] == "" and f.loc[0, "drop"] == pytest.approx(-0.02)
    assert f.loc[1, "drop"] == pytest.approx(0.50)
    # 5x over on p1 and 4x under on p2: off on 2 of 2 cases
    assert (f.loc[1, "volume off"], f.loc[1, "cases"]) == (2, 2)
    assert f.loc[1, "flag"] == ("DSC fell 0.500 from half to full budget (0.900 to 0.400); "
                                "volume off more than 3x on 2 of 2 cases")
    t = quality.quality_table(tmp_path, "cpu")
    assert t.loc[0, "dice"] == pytest.approx(0.66) and t.loc[0, "meets bar"]
    s = quality.quality_summary(t, summary.convergence_table(tmp_path, "cpu"), summary.flags_table(tmp_path, "cpu"))
    assert not s["passed"] and not s["misses"]
    assert s["collapses"] == ["leaderboard / Net, seed 1: " + f.loc[1, "flag"]]
    assert main(["quality", "--runs", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "every network that is not a named exception meets its bar" in out
    assert "collapses: leaderboard / Net, seed 1: DSC fell 0.500" in out


def test_flags_thresholds_are_strict_and_need_most_cases(tmp_path):
    from npcrepro.engine.results import Results

    # the volume is off (3.5x) on one case of two: not most; a drop of exactly 0.03 is no collapse
    run = _collapsing_run(tmp_path, volumes=((3.5, 1.0), (1.0, 1.0)))
    m = pd.read_csv(run / "metrics.csv")
    m.loc[m["seed"] == 1, "dice"] = 0.87
    m.to_csv(run / "metrics.csv", index=False)
    f = Results.open(run).flags().set_index("seed")
    assert f.loc[1, "volume off"] == 1 and f.loc[1, "drop"] == pytest.approx(0.03)
    assert f.loc[1, "flag"] == ""
    # a case without reference volume is not counted
    m.loc[(m["seed"] == 1) & (m["case"] == "p2"), "volume_ref_cm3"] = 0.0
    m.to_csv(run / "metrics.csv", index=False)
    f = Results.open(run).flags().set_index("seed")
    assert (f.loc[1, "volume off"], f.loc[1, "cases"]) == (1, 1)
    assert f.loc[1, "flag"] == "volume off more than 3x on 1 of 1 cases"


def test_flags_and_convergence_leave_out_a_structure_absent_from_the_reference(tmp_path):
    """An OpenKBP patient without a larynx: the network that predicts none scores 1.0 there at half
    budget and 0.0 at full (a stray voxel); neither row is scored, so nothing moves and no flag shows."""
    from npcrepro.engine.results import Results

    run = _collapsing_run(tmp_path)
    extra = dict(method="net", seed=0, case="p1", structure="Larynx", fold=0, pred_empty=False, ref_empty=True,
                 volume_pred_cm3=0.1, volume_ref_cm3=0.0)
    for name, value in (("metrics.csv", 0.0), ("metrics_half.csv", 1.0)):
        m = pd.read_csv(run / name).assign(ref_empty=False)
        pd.concat([m, pd.DataFrame([dict(extra, dice=value)])]).to_csv(run / name, index=False)
    res = Results.open(run)
    f = res.flags().set_index("seed")
    assert f.loc[0, "dice at half budget"] == pytest.approx(0.90)
    assert f.loc[0, "dice at full budget"] == pytest.approx(0.92) and f.loc[0, "flag"] == ""
    c = res.convergence().set_index("method")
    assert c.loc["net", "dice at half budget"] == pytest.approx(0.90)
    assert c.loc["net", "dice at full budget"] == pytest.approx(0.66)  # taking the larynx in: 0.933 -> 0.613


def test_li2018_names_its_printed_recipes_and_their_reasons_hold():
    """The reasons of li2018's EXCEPTIONS: from the printed N(0, 1) weights the logits are huge (the
    sigmoid saturates); from Caffe's small filler they are near 0 (probability 1/2 everywhere)."""
    import torch

    from npcrepro.chapters.li2018 import methods as M

    named = quality.exceptions("li2018")
    assert set(named) == {"faithful", "printed"}
    assert set(named) <= set(M.MODES)
    assert quality.exceptions("template") == {} and quality.exceptions("not-a-chapter") == {}
    torch.manual_seed(0)
    x = torch.randn(2, 1, 144, 144)
    with torch.no_grad():
        printed = M.build_model("printed", 0.25, init_std=0.01)(x)
        faithful = M.build_model("faithful", 0.25, init_std=0.01)(x)
    assert float(printed.abs().max()) > 1e6
    assert float(faithful.abs().max()) < 0.1


def test_a_real_track_scores_every_structure_it_has_and_names_its_folder(tmp_path):
    """OpenKBP's organs: the DSC per patient is the mean over its structures, then over patients; a
    data label that is a path is named by its folder."""
    p = tmp_path / "cpu" / "luo2020" / "20260101-000000-openkbp"
    p.mkdir(parents=True)
    (p / "run.json").write_text(json.dumps({"chapter": "luo2020", "status": "done", "channels": ["CT"],
                                            "data_label": "/data/cache/openkbp-subset",
                                            "methods": [{"name": "unet", "label": "U-Net", "info": {}}]}))
    (p / "params.json").write_text("{}")
    rows = [("k1", "Brainstem", 0.8, False), ("k1", "SpinalCord", 0.6, False), ("k2", "Brainstem", 0.2, False),
            ("k2", "SpinalCord", 1.0, True)]  # k2 has no spinal cord: left out, as in the chapters' tables
    df = pd.DataFrame([dict(method="unet", seed=0, fold=0, case=c, structure=s, dice=d, pred_empty=e, ref_empty=e)
                       for c, s, d, e in rows])
    df.to_csv(p / "metrics.csv", index=False)
    df.to_csv(p / "metrics_half.csv", index=False)
    t = quality.quality_table(tmp_path, "cpu")
    assert t.loc[0, "data"] == "openkbp-subset" and t.loc[0, "structures"] == "Brainstem, SpinalCord"
    assert t.loc[0, "dice"] == pytest.approx((0.7 + 0.2) / 2) and t.loc[0, "bar"] == 0.50
    assert quality.quality_summary(t, summary.convergence_table(tmp_path, "cpu"))["misses"] == [
        "luo2020 / U-Net on openkbp-subset"]


def test_bars_are_shares_of_the_inter_rater_ceiling_where_the_run_has_raters(tmp_path):
    # the same MRI network at 0.60: it misses the fixed bar (0.65) but meets 0.85 of a 0.70 ceiling (0.595)
    _run(tmp_path, "template", "20260101-000000-unet2d", {"unet": {}},
         [("unet", 0, "p1", 0.60, False), ("unet", 0, "p2", 0.60, False)], channels=["T1"])
    assert not quality.quality_table(tmp_path, "cpu").loc[0, "meets bar"]
    run = tmp_path / "cpu" / "template" / "20260101-000000-unet2d"
    pd.DataFrame({"case": ["p1", "p2"], "structure": "GTVp", "raters": 3, "pairwise_dice": [0.65, 0.75],
                  "rater_vs_reference": [0.8, 0.9]}).to_csv(run / "raters.csv", index=False)
    row = quality.quality_table(tmp_path, "cpu").loc[0]
    assert row["ceiling"] == pytest.approx(0.70) and row["bar"] == pytest.approx(0.85 * 0.70)
    assert row["meets bar"]
    assert quality.bar_for("CT", 0.70) == pytest.approx(0.65 * 0.70) and quality.bar_for("CT", None) == 0.50


def test_a_real_track_is_held_to_its_chapters_reference_that_reads_no_image(tmp_path, monkeypatch):
    """A CT network at 0.60 on OpenKBP meets the fixed bar (0.50); it misses when the chapter's location
    prior scores 0.65 on the same patients, and meets it again when the prior scores 0.55. The phantom's
    rows never ask for a reference."""
    from npcrepro.chapters.xue2020.methods import CHAPTER

    _run(tmp_path, "xue2020", "20260101-000000-openkbp", {"unet": {}},
         [("unet", 0, "k1", 0.5, False), ("unet", 0, "k2", 0.7, False)], channels=["CT"],
         data_label="OpenKBP CT (2 patients)")
    _run(tmp_path, "xue2020", "20260101-000000-run", {"unet": {}}, [("unet", 0, "p1", 0.9, False)],
         channels=["CECT"])
    asked = []

    def reference(res, prior):
        asked.append(res.data_label)
        return pd.DataFrame({"case": ["k1", "k2"], "dice": [prior - 0.05, prior + 0.05]})

    for prior, meets in ((0.65, False), (0.55, True)):
        monkeypatch.setattr(CHAPTER, "reference", lambda res, prior=prior: reference(res, prior))
        t = quality.quality_table(tmp_path, "cpu").set_index("data")
        real = t.loc["OpenKBP CT (2 patients)"]
        assert real["dice"] == pytest.approx(0.60) and real["bar"] == 0.50
        assert real["no-image reference"] == pytest.approx(prior) and bool(real["meets bar"]) is meets
        assert pd.isna(t.loc["phantom", "no-image reference"]) and t.loc["phantom", "meets bar"]
    assert asked == ["OpenKBP CT (2 patients)"] * 2
    monkeypatch.undo()
    # the run's own parameters name no PTV70 target: xue2020 defines no reference for it
    assert pd.isna(quality.quality_table(tmp_path, "cpu").set_index("data").loc["OpenKBP CT (2 patients)",
                                                                                "no-image reference"])


def test_a_reference_over_several_structures_is_averaged_per_case_first(tmp_path, monkeypatch):
    """luo2020's prior has a row per (case, structure): k1 has one structure (0.2), k2 two (0.4 and 0.8);
    per case first, as the networks' DSC, gives (0.2 + 0.6) / 2 = 0.4, not the rows' mean 0.467."""
    from npcrepro.chapters.xue2020.methods import CHAPTER

    _run(tmp_path, "xue2020", "20260101-000000-openkbp", {"unet": {}},
         [("unet", 0, "k1", 0.5, False), ("unet", 0, "k2", 0.7, False)], channels=["CT"],
         data_label="OpenKBP CT (2 patients)")
    monkeypatch.setattr(CHAPTER, "reference", lambda res: pd.DataFrame(
        {"case": ["k1", "k2", "k2"], "structure": ["Brainstem", "Brainstem", "PTV70"], "dice": [0.2, 0.4, 0.8]}))
    assert quality.no_image_reference("xue2020", None) == pytest.approx(0.4)
    row = quality.quality_table(tmp_path, "cpu").iloc[0]
    assert row["no-image reference"] == pytest.approx(0.4) and row["meets bar"]
    assert row["structures"] == "GTVp"
    # a run on xue2020's PTV70 stand-in scores it under the chapter's target name; the table says PTV70
    for run in (tmp_path / "cpu" / "xue2020").iterdir():
        (run / "params.json").write_text(json.dumps({"target": "ptv70"}))
    assert quality.quality_table(tmp_path, "cpu").iloc[0]["structures"] == "PTV70"
