"""The papers' transcribed numbers: structure, ranges, internal checks, and verbatim presence in the
paper texts (``<repo>/../shared/papers``; those tests skip when the folder is absent)."""
from __future__ import annotations

import math
import re
import statistics

import pandas as pd
import pytest

from npcrepro import papers as P
from npcrepro.errors import ParameterError
from npcrepro.paths import repo_root

PAPERS_DIR = repo_root().parent / "shared" / "papers"


def _text(key: str) -> str:
    path = PAPERS_DIR / P.TEXT_FILES[key]
    if not path.is_file():
        pytest.skip(f"paper text {path} not found (needs ../shared/papers)")
    return path.read_text(encoding="utf-8")


def _normalise(text: str) -> str:
    """Undo the extraction's spaces inside decimals ('0. 73', '3.  4') and LaTeX-escaped '\\%'."""
    text = re.sub(r"(\d)[ \t]*\.[ \t]*(\d)", r"\1.\2", text)
    return text.replace("\\%", "%")


def renderings(v: float) -> list[str]:
    """Plausible printed forms of ``v``: 0-4 decimals that round-trip, with and without the leading 0."""
    out: list[str] = []
    for n in range(5):
        s = f"{v:.{n}f}"
        if abs(float(s) - v) < 1e-9:
            out.append(s)
            if s.startswith("0."):
                out.append(s[1:])
    return out


def printed_in(v: float, text: str) -> bool:
    for s in renderings(v):
        if re.search(r"(?<![\d.])" + re.escape(s) + r"(?!\d)", text):
            return True
    return False


def _records(key: str, cited: bool = True) -> list[P.Reported]:
    mod = P.get(key)
    return list(mod.REPORTED) + (list(mod.CITED) if cited else [])


# ---------------------------------------------------------------------------------------------
# structure


@pytest.mark.parametrize("key", P.PAPERS)
def test_every_paper_has_info_and_reported(key):
    mod = P.get(key)
    assert isinstance(mod.INFO, P.PaperInfo)
    assert mod.INFO.key == key
    assert mod.INFO.citation and mod.INFO.journal and mod.INFO.year >= 2018
    assert mod.REPORTED and all(isinstance(r, P.Reported) for r in mod.REPORTED)
    assert P.info(key) is mod.INFO
    assert P.citation(key) == mod.INFO.citation
    for name in ("optimizer", "lr", "schedule", "batch_size", "loss", "augmentation", "input_size",
                 "preprocessing"):
        assert name in mod.INFO.recipe, (key, name)
    for name, e in mod.INFO.recipe.items():
        assert set(e) == {"value", "source", "note"}, (key, name)
        if e["value"] is None:
            assert e["note"], f"{key}: recipe item {name} left open without a note"
        else:
            assert e["source"], f"{key}: recipe item {name} has no source"


@pytest.mark.parametrize("key", P.PAPERS)
def test_metrics_canonical_and_values_in_range(key):
    for r in _records(key):
        assert r.metric in P.METRICS
        assert r.table and r.method
        for v in (r.value, r.sd, r.low, r.high):
            assert v is None or math.isfinite(v)
        if r.metric in P.UNIT_INTERVAL:
            assert 0.0 <= r.value <= 1.0, r
            for v in (r.low, r.high):
                assert v is None or 0.0 <= v <= 1.0, r
        elif r.metric == "corresponding_ratio":
            assert r.value <= 1.0
        else:
            assert r.value >= 0.0, r
        assert r.sd is None or r.sd >= 0.0
        if r.low is not None:
            assert r.low <= r.value, r
        if r.high is not None:
            assert r.value <= r.high, r
        if r.metric in ("assd", "hd", "hd95"):
            assert r.unit == "mm"


def test_reported_dataframe():
    df = P.reported()
    assert list(df.columns) == list(P.COLUMNS)
    assert set(df["paper"]) == set(P.PAPERS)
    assert (df["source"] == "reported").all()
    assert len(df) == sum(len(P.get(k).REPORTED) for k in P.PAPERS)
    with_cited = P.reported(include_cited=True)
    assert len(with_cited) == len(df) + sum(len(P.get(k).CITED) for k in P.PAPERS)
    dsc = P.reported("guo2021", table="Table 1", metric="dsc")
    assert list(dsc["method"]) == ["CNN", "ACDNet", "Deeplab", "CSCN"]
    assert P.reported("guo2021", method="DeepLab", metric="dsc")["value"].item() == 0.714
    assert len(P.reported("chen2020", table="Table I", method="MMFNet")) == 3
    assert P.reported("li2018", method="svm", metric="percent_match")["value"].item() == 0.79
    assert P.reported("xue2020", method="deeplabv3+", metric="dsc")["sd"].item() == 0.11
    assert P.reported("luo2020", method="nonexistent").empty


def test_unknown_key_and_metric_raise():
    for fn in (P.get, P.info, P.citation, P.headline, P.reported, P.claims):
        with pytest.raises(ParameterError, match="li2018"):
            fn("nope2020")
    with pytest.raises(ParameterError, match="dsc"):
        P.reported("li2018", metric="DSC")
    with pytest.raises(ParameterError):
        P.Reported("Table 1", "X", "dice", 0.5)
    with pytest.raises(ParameterError):
        P.Reported("Table 1", "X", "dsc", float("nan"))


@pytest.mark.parametrize("key", P.PAPERS)
def test_headline(key):
    h = P.headline(key)
    assert h
    table, method, *_ = P.get(key).HEADLINE
    for (m, metric), v in h.items():
        assert m == method and metric in P.METRICS
        row = P.reported(key, table=table, method=method, metric=metric)
        assert v in set(row["value"])


def test_headline_values():
    assert P.headline("li2018")[("CNN", "dsc")] == 0.89
    assert P.headline("luo2020")[("Ours", "dsc")] == 0.8251
    assert P.headline("guo2021")[("CSCN", "assd")] == 1.212
    assert P.headline("chen2020")[(P.get("chen2020").FULL, "dsc")] == 0.7191
    assert P.headline("xue2020") == {("DeepLabv3+", "dsc"): 0.76, ("DeepLabv3+", "jaccard"): 0.63,
                                     ("DeepLabv3+", "assd"): 3.4, ("DeepLabv3+", "hd"): 10.9}


# ---------------------------------------------------------------------------------------------
# li2018


def _li_table2() -> pd.DataFrame:
    df = P.reported("li2018", table="Table 2")
    return df[df["case"].notna()]


def test_li2018_table2_has_29_patients():
    t2 = _li_table2()
    assert t2["case"].nunique() == 29
    assert set(t2["case"]) == {str(i) for i in range(1, 30)}
    per = t2.groupby(["method", "metric"]).size()
    assert (per == 29).all() and len(per) == 7


def test_li2018_table2_means_match_summary():
    t2 = _li_table2()
    cnn = t2[t2["method"] == "CNN"]
    summary = P.reported("li2018", table="Table 2", method="CNN")
    summary = summary[summary["case"].isna()].set_index("metric")
    for metric in ("dsc", "percent_match", "corresponding_ratio", "precision", "jaccard"):
        vals = cnn[cnn["metric"] == metric]["value"].tolist()
        assert abs(statistics.mean(vals) - summary.loc[metric, "value"]) <= 0.01, metric
        assert abs(statistics.stdev(vals) - summary.loc[metric, "sd"]) <= 0.006, metric
        if not math.isnan(summary.loc[metric, "low"]):
            assert min(vals) == summary.loc[metric, "low"] and max(vals) == summary.loc[metric, "high"]
    dsc = cnn[cnn["metric"] == "dsc"]["value"]
    assert abs(dsc.mean() - 0.89) <= 0.01  # 0.8907


def test_li2018_recall_column_is_precision():
    """PM = TP/(TP+FN) and the 'Recall' column = TP/(TP+FP) reproduce DSC, JSC and CR per patient."""
    t2 = _li_table2()
    cnn = t2[t2["method"] == "CNN"].pivot(index="case", columns="metric", values="value")
    pm, col = cnn["percent_match"], cnn["precision"]
    assert ((2 * pm * col / (pm + col)) - cnn["dsc"]).abs().max() <= 0.0101
    assert ((1 / (1 / pm + 1 / col - 1)) - cnn["jaccard"]).abs().max() <= 0.0101
    assert ((pm - 0.5 * pm * (1 / col - 1)) - cnn["corresponding_ratio"]).abs().max() <= 0.0101
    # the opposite reading (column = TP/(TP+FN)) does not reproduce CR
    assert ((col - 0.5 * col * (1 / pm - 1)) - cnn["corresponding_ratio"]).abs().max() > 0.04
    notes = P.reported("li2018", metric="precision")["note"]
    assert notes.str.contains("paper labels this column 'recall'").all()


def test_li2018_text_swaps_recall_and_precision():
    text = _text("li2018")
    assert re.search(r"recall =\s*𝑇𝑃\s*𝑇𝑃 \+ 𝐹𝑃", text)
    assert re.search(r"precision =\s*𝑇𝑃\s*𝑇𝑃 \+ 𝐹𝑁", text)
    assert re.search(r"PM =\s*𝑇𝑃\s*𝑇𝑃 \+ 𝐹𝑁", text)


def test_li2018_table2_columns_verbatim():
    """Each Table 2 column appears in the text as its 29 consecutive lines."""
    text = _text("li2018")
    t2 = _li_table2()
    for (method, metric), fmt in {
        ("CNN", "volume_cm3"): "{:.1f}", ("Two readers", "volume_cm3"): "{:.1f}",
        ("CNN", "percent_match"): "{:.2f}", ("CNN", "corresponding_ratio"): "{:.2f}",
        ("CNN", "dsc"): "{:.2f}", ("CNN", "precision"): "{:.2f}", ("CNN", "jaccard"): "{:.2f}",
    }.items():
        col = t2[(t2["method"] == method) & (t2["metric"] == metric)]
        col = col.assign(i=col["case"].astype(int)).sort_values("i")
        block = "\n".join(fmt.format(v) for v in col["value"])
        assert block in text, (method, metric)


# ---------------------------------------------------------------------------------------------
# luo2020


def test_luo2020_table1_and_consistency_audit():
    t1 = P.reported("luo2020", table="Table 1").pivot(index="method", columns="metric", values="value")
    assert set(t1.index) == {"U-Net", "FCN-8", "Mask R-CNN", "Ours"}
    assert set(t1.columns) == {"dsc", "auc", "f1", "jaccard"}
    # facts about the paper the book shows: impossible for hard masks (JSC <= DSC, F1 == DSC)
    assert t1.loc["Ours", "jaccard"] > t1.loc["Ours", "dsc"]
    assert (t1["jaccard"] > t1["dsc"]).all()
    assert (t1["f1"] != t1["dsc"]).all()
    assert (t1["jaccard"] > t1["dsc"] / (2 - t1["dsc"])).all()


def test_luo2020_table1_rows_verbatim():
    text = _text("luo2020")
    t1 = P.reported("luo2020", table="Table 1")
    for m in ("U-Net", "FCN-8", "Mask R-CNN", "Ours"):
        v = t1[t1["method"] == m].set_index("metric")["value"]
        pat = r"\s+".join([re.escape(m)] + [f"{v[k]:.4f}" for k in ("dsc", "auc", "f1", "jaccard")])
        assert re.search(pat, text), m


# ---------------------------------------------------------------------------------------------
# guo2021


def test_guo2021_table1():
    t1 = P.reported("guo2021", table="Table 1")
    assert set(t1["method"]) == {"CNN", "ACDNet", "Deeplab", "CSCN"}
    assert "V-Net" not in set(P.reported("guo2021")["method"])
    assert any("V-Net" in n and "converge" in n for n in P.info("guo2021").notes)
    phys = P.reported("guo2021", method="Two physicians").set_index("metric")["value"]
    assert phys.to_dict() == {"dsc": 0.642, "assd": 2.692, "f1": 0.686}


def test_guo2021_table1_rows_verbatim():
    text = _text("guo2021")
    t1 = P.reported("guo2021", table="Table 1")
    for m in ("CNN", "ACDNet", "Deeplab", "CSCN"):
        v = t1[t1["method"] == m].set_index("metric")["value"]
        assert f"{m}\t{v['dsc']:.3f}\t{v['assd']:.3f} mm\t{v['f1']:.3f}" in text, m
    assert re.search(r"V-Net\t_", text)


# ---------------------------------------------------------------------------------------------
# chen2020


def test_chen2020_rows_and_configs():
    mod = P.get("chen2020")
    assert len(mod.TABLE_I_ROWS) == 13 and len(mod.TABLE_II_ROWS) == 12
    for table, rows in (("Table I", mod.TABLE_I_ROWS), ("Table II", mod.TABLE_II_ROWS)):
        df = P.reported("chen2020", table=table)
        labels = list(dict.fromkeys(df["method"]))
        assert labels == [r["label"] for r in rows]
        assert len({r["key"] for r in rows}) == len(rows)
        for r in rows:
            assert set(r["modalities"]) <= {"T1", "T2", "CET1"}
            assert set(df[df["method"] == r["label"]]["metric"]) == {"dsc", "ap", "dice_loss"}
    full = [r for r in mod.TABLE_II_ROWS if r["key"] == "mmfnet_full"][0]
    assert full == {"key": "mmfnet_full", "label": mod.FULL, "family": "mmfnet", "dims": "3D",
                    "modalities": ("T1", "T2", "CET1"), "fusion_block": True, "shared_mlp": False,
                    "std_channel": True, "std_spatial": True, "self_transfer": True}
    t = P.reported("chen2020", metric="seconds_per_patient").set_index("method")["value"]
    assert t[mod.FULL] == 9


def test_chen2020_text_statements_hold():
    """Self-transfer improves every fusion design on all three metrics; all three modalities beat
    every pair; the full model is best in both tables."""
    t2 = P.reported("chen2020", table="Table II").pivot(index="method", columns="metric", values="value")
    rows = {r["key"]: r["label"] for r in P.get("chen2020").TABLE_II_ROWS}
    for without, with_ in (("base_mmfnet", "base_mmfnet_st"), ("multi_mlp", "multi_mlp_st"),
                           ("multi_mlp_std", "mmfnet_full")):
        a, b = t2.loc[rows[without]], t2.loc[rows[with_]]
        assert b["dsc"] > a["dsc"] and b["ap"] > a["ap"] and b["dice_loss"] < a["dice_loss"]
    for pair in ("full_t1_t2", "full_t1_cet1", "full_t2_cet1"):
        assert t2.loc[rows["mmfnet_full"], "dsc"] > t2.loc[rows[pair], "dsc"]
    assert t2["dsc"].idxmax() == rows["mmfnet_full"]
    t1 = P.reported("chen2020", table="Table I").pivot(index="method", columns="metric", values="value")
    assert t1["dsc"].idxmax() == t1["ap"].idxmax() == t1["dice_loss"].idxmin() == P.get("chen2020").FULL


def test_chen2020_table_rows_verbatim():
    text = _text("chen2020")
    for table in ("Table I", "Table II"):
        df = P.reported("chen2020", table=table)
        for label in dict.fromkeys(df["method"]):
            v = df[df["method"] == label].set_index("metric")["value"]
            line = f"{label}\t{v['dsc']:.4f}\t{v['ap']:.4f}\t{v['dice_loss']:.4f}"
            assert line in text, (table, label)


# ---------------------------------------------------------------------------------------------
# xue2020


def test_xue2020_results_and_demographics():
    df = P.reported("xue2020", table="Sec. 2")
    both = df[df["method"].isin(["DeepLabv3+", "U-Net"]) & df["metric"].isin(["dsc", "jaccard", "assd", "hd"])]
    assert len(both) == 8 and both["sd"].notna().all()
    mod = P.get("xue2020")
    assert set(mod.P_VALUES) == {"dsc", "jaccard", "assd", "hd"}
    assert {k: r.value for k, r in mod.P_VALUES.items()} == {"dsc": 0.001, "jaccard": 0.001,
                                                              "assd": 0.014, "hd": 0.745}
    d = mod.DEMOGRAPHICS
    n = d["n_patients"]
    assert n == 150 == mod.INFO.dataset["n_patients"]
    for group in ("sex", "t_stage", "n_stage", "treatment"):
        counts = d[group]
        assert sum(c for c, _ in counts.values()) == n, group
        for c, pct in counts.values():
            assert round(100 * c / n, 1) == pct, (group, c, pct)


def test_xue2020_demographics_verbatim():
    text = _normalise(_text("xue2020"))
    d = P.get("xue2020").DEMOGRAPHICS
    for group in ("sex", "t_stage", "n_stage", "treatment"):
        for c, pct in d[group].values():
            assert re.search(rf"{c}\(\s*{pct:.1f}\)", text), (group, c, pct)
    assert "52" in text and "22.0" in text and "80.0" in text


# ---------------------------------------------------------------------------------------------
# claims and verbatim presence


@pytest.mark.parametrize("key", P.PAPERS)
def test_claims_match_tables(key):
    recs = {(r.table, r.method, r.metric): r.value for r in P.get(key).REPORTED if r.case is None}
    for c in P.claims(key):
        better = recs[(*c.better, c.metric)]
        worse = recs[(*c.worse, c.metric)]
        diff = worse - better if c.metric in P.LOWER_IS_BETTER else better - worse
        assert abs(diff - c.value) <= c.tolerance + 1e-12, c


@pytest.mark.parametrize("key", P.PAPERS)
def test_claims_printed_in_text(key):
    text = _normalise(_text(key))
    for c in P.claims(key):
        for frag in c.printed:
            assert frag in text, (key, c.statement, frag)


@pytest.mark.parametrize("key", P.PAPERS)
def test_every_number_appears_verbatim_in_text(key):
    text = _normalise(_text(key))
    missing = []
    for r in _records(key, cited=True):
        if r.printed:
            for frag in r.printed:
                if _normalise(frag) not in text:
                    missing.append((r.table, r.method, r.metric, frag))
            continue
        for name in ("value", "sd", "low", "high"):
            v = getattr(r, name)
            if v is not None and not printed_in(v, text):
                missing.append((r.table, r.method, r.metric, name, v))
    assert not missing, f"{key}: not found in the paper text: {missing}"


def test_renderings_helper():
    assert ".7528" in renderings(0.7528) and "0.7528" in renderings(0.7528)
    assert "0.90" in renderings(0.9) and "52" in renderings(52)
    assert printed_in(0.9, "PM 0.90±0.04") and not printed_in(0.9, "PM 0.905")
    assert _normalise("0. 73 ± 0. 13, 3.  4") == "0.73 ± 0.13, 3.4"
