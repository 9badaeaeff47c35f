"""Summaries, bootstrap CI, paired tests against scipy, and the paper-vs-reproduced table."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from npcrepro import evaluation as E
from npcrepro.datasets import Case
from npcrepro.errors import DataError, ParameterError

DICE_A = [0.81, 0.77, 0.90, 0.65, 0.72, 0.88, 0.79]
DICE_B = [0.78, 0.74, 0.86, 0.66, 0.61, 0.80, 0.75]


def _table(values, method="a", empty=()):
    return pd.DataFrame({"case": [f"p{i}" for i in range(len(values))], "structure": "GTVp",
                         "method": method, "dice": values,
                         "hd": [5.0 + i for i in range(len(values))],
                         "pred_empty": [i in empty for i in range(len(values))],
                         "ref_empty": False})


def test_format_mean_sd():
    assert E.format_mean_sd(0.8912, 0.051) == "0.89 ± 0.05"
    assert E.format_mean_sd(3.4, 2.0, 1, "mm") == "3.4 ± 2.0 mm"
    assert E.format_mean_sd(0.5) == "0.50"
    assert E.format_mean_sd(0.5, float("nan")) == "0.50"
    assert E.format_mean_sd(None) == "—" and E.format_mean_sd(float("nan")) == "—"


def test_average_seeds_by_hand():
    t = pd.DataFrame({"method": ["a"] * 4 + ["b"] * 2, "fold": 0, "case": ["p", "p", "q", "q", "p", "q"],
                      "structure": "GTVp", "seed": [1, 0, 0, 1, 0, 0], "dice": [0.8, 0.6, 0.5, np.nan, 0.4, 0.3],
                      "pred_empty": [False, True, False, pd.NA, False, False],
                      "status": ["s1", "s0", "x", "x", "y", "y"]})
    a = E.average_seeds(t).set_index(["method", "case"])
    assert list(E.average_seeds(t).columns) == [*t.columns, "seeds"]
    assert a.loc[("a", "p"), "dice"] == pytest.approx(0.7) and a.loc[("a", "p"), "seeds"] == 2
    assert a.loc[("a", "q"), "dice"] == 0.5          # a NaN seed is left out of the mean
    assert bool(a.loc[("a", "p"), "pred_empty"]) and not bool(a.loc[("a", "q"), "pred_empty"])  # any seed
    assert a.loc[("a", "p"), "seed"] == 0 and a.loc[("a", "p"), "status"] == "s0"  # the first seed's
    assert a.loc[("b", "p"), "seeds"] == 1 and len(a) == 4
    one = t[t["seed"] == 0]
    pd.testing.assert_frame_equal(E.average_seeds(one), one.reset_index(drop=True))  # one seed: as it is


def test_summarize_matches_numpy():
    s = E.summarize(_table(DICE_A, empty=(3,)), seed=1).set_index("metric")
    assert set(s.index) == {"dice", "hd"}  # flags and identifiers are not metrics
    d = s.loc["dice"]
    v = np.array(DICE_A)
    assert d["n"] == 7 and d["n_empty"] == 1 and d["n_nonfinite"] == 0
    assert d["mean"] == pytest.approx(v.mean())
    assert d["sd"] == pytest.approx(v.std(ddof=1))
    assert d["median"] == pytest.approx(np.median(v))
    assert d["ci_low"] < v.mean() < d["ci_high"]
    assert (d["ci_low"], d["ci_high"]) == pytest.approx(E.bootstrap_ci(v, seed=1))


def test_bootstrap_ci_is_scipys_bca():
    from scipy import stats

    v = np.array(DICE_A)
    ref = stats.bootstrap((v,), np.mean, n_resamples=500, method="BCa",
                          random_state=np.random.default_rng(3)).confidence_interval
    assert E.bootstrap_ci(v, n_boot=500, seed=3) == pytest.approx((ref.low, ref.high))
    pct = stats.bootstrap((v,), np.mean, n_resamples=500, method="percentile",
                          random_state=np.random.default_rng(3)).confidence_interval
    assert E.bootstrap_ci(v, n_boot=500, seed=3, method="percentile") == pytest.approx((pct.low, pct.high))
    lo, hi = E.bootstrap_ci(v, ci=0.5, seed=0)
    lo95, hi95 = E.bootstrap_ci(v, ci=0.95, seed=0)
    assert lo95 <= lo < hi <= hi95
    assert E.bootstrap_ci([0.7]) == (0.7, 0.7)
    assert E.bootstrap_ci([0.7, 0.7, 0.7]) == pytest.approx((0.7, 0.7))  # BCa is undefined there
    assert all(math.isnan(x) for x in E.bootstrap_ci([]))


def test_holm_hand_computed():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06 (monotone), 0.5
    assert E.holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    out = E.holm([0.2, float("nan"), 0.01])  # NaN neither adjusted nor counted
    assert out[0] == pytest.approx(0.2) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert E.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert len(E.holm([])) == 0


def test_paired_test_gives_the_ci_of_the_mean_difference():
    from scipy import stats

    a = np.array(DICE_A)
    b = a - np.linspace(0.01, 0.1, a.size)
    r = E.paired_test(a, b, n_boot=500, seed=2)
    ref = stats.bootstrap((a - b,), np.mean, n_resamples=500, method="BCa",
                          random_state=np.random.default_rng(2)).confidence_interval
    assert (r["diff_ci_low"], r["diff_ci_high"]) == pytest.approx((ref.low, ref.high))
    assert r["diff_ci_low"] < r["mean_diff"] < r["diff_ci_high"]


def test_summarize_counts_failed_patients():
    t = _table(DICE_A, empty=(3,))
    t["ref_empty"] = False
    t.loc[0, "pred_empty"], t.loc[0, "ref_empty"] = True, True  # both empty: not a failure
    s = E.summarize(t, ["dice"]).set_index("metric")
    assert s.loc["dice", "n_failed"] == 1 and s.loc["dice", "n_empty"] == 2


def test_summarize_groups_and_nonfinite():
    t = pd.concat([_table(DICE_A, "a"), _table(DICE_B, "b")])
    t.loc[t.index[0], "hd"] = np.inf
    s = E.summarize(t, ["dice", "hd"], by="method")
    assert list(s.columns[:3]) == ["method", "metric", "n"]
    hd_a = s[(s.method == "a") & (s.metric == "hd")].iloc[0]
    assert hd_a["n"] == 6 and hd_a["n_nonfinite"] == 1
    assert s[(s.method == "b") & (s.metric == "dice")]["mean"].item() == pytest.approx(np.mean(DICE_B))
    with pytest.raises(ParameterError, match="not in the table"):
        E.summarize(t, ["nsd"])
    with pytest.raises(DataError):
        E.summarize(t.iloc[:0])


def test_paired_test_against_scipy():
    r = E.paired_test(DICE_A, DICE_B)
    t = stats.ttest_rel(DICE_A, DICE_B)
    w = stats.wilcoxon(DICE_A, DICE_B)
    assert r["n"] == 7
    assert r["t"] == pytest.approx(t.statistic) and r["p_t"] == pytest.approx(t.pvalue)
    assert r["w"] == pytest.approx(w.statistic) and r["p_wilcoxon"] == pytest.approx(w.pvalue)
    assert r["mean_diff"] == pytest.approx(np.mean(np.subtract(DICE_A, DICE_B)))


def test_paired_test_on_tables_joins_by_case():
    a = _table(DICE_A, "a")
    b = _table(DICE_B, "b").iloc[::-1]  # order must not matter
    r = E.paired_test(a, b, "dice")
    assert r["p_t"] == pytest.approx(stats.ttest_rel(DICE_A, DICE_B).pvalue)
    with pytest.raises(DataError, match="same cases"):
        E.paired_test(a, b.iloc[1:], "dice")
    long = pd.concat([a, b])
    tests = E.paired_tests(long, "a", "b")
    assert set(tests.metric) == {"dice", "hd"}
    assert tests.set_index("metric").loc["hd", "p_t"] == 1.0  # identical hd: no difference
    with pytest.raises(ParameterError, match="no rows for method 'c'"):
        E.paired_tests(long, "a", "c")


def test_paired_test_drops_nonfinite_pairs():
    r = E.paired_test([1.0, 2.0, np.nan, 4.0], [1.5, 2.5, 3.0, 3.0])
    assert r["n"] == 3


def _reported():
    return pd.DataFrame([
        {"paper": "xue2020", "table": "Sec. 2", "method": "U-Net", "metric": "dsc", "value": 0.73,
         "sd": 0.13, "ref": "Sec. 2"},
        {"paper": "xue2020", "table": "Sec. 2", "method": "U-Net", "metric": "hd", "value": 11.1,
         "sd": 7.5, "ref": "Sec. 2"},
        {"paper": "xue2020", "table": "Sec. 2", "method": "DeepLabv3+", "metric": "dsc", "value": 0.76,
         "sd": np.nan, "ref": "Sec. 2"},
        {"paper": "li2018", "table": "Table 2", "method": "CNN", "metric": "dsc", "value": 0.89,
         "sd": 0.05, "ref": "Table 2"},
    ])


def test_compare_with_paper_marks_every_cell():
    repro = _table(DICE_A, "unet2d")
    ct = E.compare_with_paper(_reported(), repro, paper="xue2020", data_source="phantom",
                              profile="smoke", method_map={"U-Net": "unet2d"}, units={"hd": "mm"})
    f = ct.frame
    assert list(f.columns) == ["reported", "reproduced"]
    assert list(f.index.names) == ["metric", "method"] and len(f) == 3  # li2018 row left out
    assert all(c.endswith("(reported)") for c in f["reported"])
    assert all(c.endswith("(reproduced)") or c.endswith("(not reproduced)") for c in f["reproduced"])
    assert f.loc[("dsc", "U-Net"), "reported"] == "0.73 ± 0.13 (reported)"
    assert f.loc[("dsc", "U-Net"), "reproduced"] == E.format_mean_sd(
        np.mean(DICE_A), np.std(DICE_A, ddof=1)) + " (reproduced)"
    assert f.loc[("hd", "U-Net"), "reported"].endswith("mm (reported)")
    assert f.loc[("dsc", "DeepLabv3+"), "reproduced"] == "— (not reproduced)"
    assert "phantom" in ct.caption and "smoke" in ct.caption and "Sec. 2" in ct.caption
    assert "n = 7" in ct.caption
    assert ct.numbers.loc[0, "column"] == "dice"
    assert "(reported)" in ct._repr_html_() and ct.to_markdown().startswith("*xue2020")


def test_compare_with_paper_options_and_errors():
    repro = _table(DICE_A, "x").drop(columns="method")
    ct = E.compare_with_paper(_reported(), repro, paper="xue2020", data_source="d", profile="cpu",
                              default_method="U-Net", metrics=["dsc"], metric_map={"dsc": "hd"})
    assert ct.numbers.loc[0, "reproduced_mean"] == pytest.approx(repro["hd"].mean())
    with pytest.raises(ParameterError, match="default_method"):
        E.compare_with_paper(_reported(), repro, paper="xue2020", data_source="d", profile="cpu")
    with pytest.raises(DataError, match="no reported numbers"):
        E.compare_with_paper(_reported(), repro, paper="chen2020", data_source="d", profile="cpu",
                             default_method="m")
    with pytest.raises(DataError, match="columns"):
        E.compare_with_paper(pd.DataFrame({"x": [1]}), repro, paper="p", data_source="d", profile="c")


def test_a_run_is_compared_with_its_own_paper_and_named_without_the_machines_path():
    from types import SimpleNamespace

    phantom = SimpleNamespace(chapter="xue2020", profile="cpu", data_label="phantom", cohort="evaluation",
                              held_out=0, data="/home/me/runs/_cache/phantom-cpu", params={"phantom_preset": "cpu"})
    real = SimpleNamespace(chapter="xue2020", profile="cpu", data_label="/home/me/cache/openkbp-n12", held_out=4,
                           cohort="evaluation", data="/home/me/cache/openkbp-n12", params={"n_cases": 12})
    assert E.data_source(phantom) == "digital phantom (cpu preset, evaluation cohort)"
    assert E.data_source(real, "PTV70") == "dataset openkbp-n12 (4 held-out test patients, PTV70)"
    ct = E.compare_run(real, _table(DICE_A, "U-Net"), table="Sec. 2", metrics=["dsc"])
    assert ct.frame.loc[("dsc", "U-Net"), "reported"].endswith("(reported)")      # xue2020's own Sec. 2
    assert "on dataset openkbp-n12 (4 held-out test patients) data, cpu profile" in ct.caption
    assert "/home/me" not in ct.caption and "Inter-rater" not in ct.caption  # no raters: no ceiling
    phantom.raters = pd.DataFrame({"case": ["a", "b"], "structure": "GTVp", "raters": 3,
                                   "pairwise_dice": [0.70, 0.76], "rater_vs_reference": [0.86, 0.9]})
    ct = E.compare_run(phantom, _table(DICE_A, "U-Net"), table="Sec. 2", metrics=["dsc"])
    assert ct.caption.endswith("Inter-rater ceiling on these 2 test patients: the data's 3 raters of GTVp agree "
                               "at a mean pairwise DSC of 0.73, and each with their consensus (the reference) at 0.88.")


def test_canonical_metric_names():
    assert E.canonical_metric("DSC") == "dice" and E.canonical_metric("JI") == "jaccard"
    assert E.canonical_metric("ASD") == "assd" and E.canonical_metric("weird") == "weird"


def test_evaluate_cases_builds_per_case_rows():
    ref = np.zeros((4, 10, 10), bool)
    ref[1:3, 2:6, 2:6] = True
    pred = np.zeros_like(ref)
    pred[1:3, 2:6, 3:7] = True
    case = Case("p0", {"CT": np.zeros(ref.shape, np.float32)}, {"GTVp": ref}, (3.0, 1.0, 1.0))
    t = E.evaluate_cases({"p0": {"GTVp": pred, "GTVnd": np.zeros_like(ref)}}, [case],
                         probabilities={"p0": {"GTVp": pred.astype(float)}}, method="m", extra={"fold": 2})
    assert len(t) == 2 and set(t.columns) >= {"case", "structure", "method", "fold", "dice", "hd", "auc"}
    row = t.set_index("structure").loc["GTVp"]
    assert row["dice"] == pytest.approx(2 * 24 / 64)
    assert bool(t.set_index("structure").loc["GTVnd", "ref_empty"])
    with pytest.raises(DataError, match="unknown case"):
        E.evaluate_cases({"nobody": {"GTVp": pred}}, [case])
    with pytest.raises(DataError, match="shape"):
        E.evaluate_cases({"p0": {"GTVp": pred[:2]}}, {"p0": case})


def test_rater_agreement_is_the_raters_pairwise_dice_and_their_dice_against_the_reference(tmp_path):
    from npcrepro.datasets import write_dataset

    def box(x0, x1):
        m = np.zeros((2, 4, 10), bool)
        m[:, :, x0:x1] = True
        return m

    # raters cover x 0-4, 0-6, 2-6 (8, 12, 8 voxels per row); the reference x 0-6
    labels = {"GTVp": box(0, 6), "GTVp_rater1": box(0, 4), "GTVp_rater2": box(0, 6), "GTVp_rater3": box(2, 6),
              "GTVnd": box(8, 10)}
    case = Case("p1", {"T1": np.zeros((2, 4, 10), np.float32)}, labels, (1.0, 1.0, 1.0))
    ds = write_dataset(tmp_path / "ds", [case], channels=["T1"], structures=list(labels), source="test")
    assert E.raters_of("GTVp", ds.structures) == ["GTVp_rater1", "GTVp_rater2", "GTVp_rater3"]
    t = E.rater_agreement(ds, ["p1"], ["GTVp", "GTVnd"])
    assert list(t.columns) == E.RATER_COLUMNS and len(t) == 1  # GTVnd has no raters: no row
    # pairs: (1,2) 2*4/(4+6) = 0.8, (1,3) 2*2/(4+4) = 0.5, (2,3) 2*4/(6+4) = 0.8
    assert t.loc[0, "pairwise_dice"] == pytest.approx((0.8 + 0.5 + 0.8) / 3)
    # against the reference (x 0-6): 0.8, 1.0, 0.8
    assert t.loc[0, "rater_vs_reference"] == pytest.approx((0.8 + 1.0 + 0.8) / 3)
    assert t.loc[0, "raters"] == 3
    # part: the raters scored where the networks are (here the first slice, where rater 3 now agrees)
    labels["GTVp_rater3"] = box(0, 6)
    labels["GTVp_rater3"][1] = False
    ds2 = write_dataset(tmp_path / "ds2", [Case("p1", case.images, labels, case.spacing)], channels=["T1"],
                        structures=list(labels), source="test")
    whole = E.rater_agreement(ds2, ["p1"], ["GTVp"])
    first = E.rater_agreement(ds2, ["p1"], ["GTVp"], part=lambda c: Case(
        c.name, {k: v[:1] for k, v in c.images.items()}, {k: v[:1] for k, v in c.labels.items()}, c.spacing))
    # first slice: rater 3 = rater 2 = the reference -> pairs 0.8, 0.8, 1.0; against the reference 0.8, 1, 1
    assert first.loc[0, "pairwise_dice"] == pytest.approx(2.6 / 3)
    assert first.loc[0, "rater_vs_reference"] == pytest.approx(2.8 / 3)
    # both slices: rater 3 is empty on the second, so (1,3) = 2*4/(8+6) and (2,3) = 2*6/(12+6)
    assert whole.loc[0, "pairwise_dice"] == pytest.approx((0.8 + 8 / 14 + 12 / 18) / 3)
