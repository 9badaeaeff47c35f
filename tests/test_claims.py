"""Claims with the patient as the unit (npcrepro.claims): hand-computed cases and scipy."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from npcrepro import claims
from npcrepro.errors import DataError


def _table(diffs, seeds=2, structures=("GTVp",), base=0.7):
    """Method A = B + diffs[i] on patient i, for every seed and structure (B varies by patient)."""
    rows = []
    for i, d in enumerate(diffs):
        for s in range(seeds):
            for st in structures:
                b = base + 0.01 * i
                rows += [{"method": "A", "case": f"p{i}", "seed": s, "structure": st, "dice": b + d},
                         {"method": "B", "case": f"p{i}", "seed": s, "structure": st, "dice": b}]
    return pd.DataFrame(rows)


def test_per_patient_averages_seeds_and_structures_and_drops_non_finite():
    t = pd.DataFrame({"method": ["A"] * 5, "case": ["p", "p", "p", "q", "q"], "seed": [0, 1, 1, 0, 1],
                      "dice": [0.2, 0.4, 0.9, np.nan, 0.5]})
    pp = claims.per_patient(t).set_index("case")
    assert pp.loc["p", "dice"] == pytest.approx(0.5) and pp.loc["p", "rows"] == 3
    assert pp.loc["q", "dice"] == 0.5 and pp.loc["q", "rows"] == 1
    with pytest.raises(DataError, match="no 'hd95' column"):
        claims.per_patient(t, "hd95")


@pytest.mark.parametrize("n", [1, 4, 5, 6, 8])
def test_min_wilcoxon_p_is_scipys_exact_p_when_all_differences_agree(n):
    d = np.arange(1, n + 1) * 0.01
    assert claims.min_wilcoxon_p(n) == pytest.approx(stats.wilcoxon(d, method="exact").pvalue)
    assert claims.min_wilcoxon_p(0) == 1.0


def test_patients_needed():
    assert claims.patients_needed(1) == 6   # 2/2**5 = 0.0625, 2/2**6 = 0.031
    assert claims.patients_needed(3) == 7   # 3 x 0.031 = 0.094, 3 x 0.0156 = 0.047
    assert claims.patients_needed(5) == 8


def test_detectable_difference_by_hand():
    # (z_0.975 + z_0.8) x sd / sqrt(n) = (1.959964 + 0.841621) x 0.1 / 4
    assert claims.detectable_difference(0.1, 16) == pytest.approx(0.0700396, abs=1e-6)
    assert math.isnan(claims.detectable_difference(0.1, 1))


def test_compare_counts_patients_not_seeds():
    diffs = [0.05, 0.02, 0.04, -0.01, 0.03]
    r = claims.compare(_table(diffs, seeds=3, structures=("GTVp", "CTVp")), "A", "B")
    assert r["n"] == 5 and r["favour_a"] == 4 and r["favour_b"] == 1
    assert r["mean_diff"] == pytest.approx(np.mean(diffs))
    assert r["p_wilcoxon"] == pytest.approx(stats.wilcoxon(diffs).pvalue)
    assert r["min_p"] == 0.0625
    assert r["detectable"] == pytest.approx(claims.detectable_difference(np.std(diffs, ddof=1), 5))
    with pytest.raises(DataError, match="no finite dice for 'C'"):
        claims.compare(_table(diffs), "A", "C")


def test_compare_says_how_many_trainings_stand_behind_each_patient():
    from npcrepro.evaluation import average_seeds

    t = _table([0.05, 0.02, 0.04], seeds=3)
    assert claims.compare(t, "A", "B")["seeds"] == 3
    assert claims.compare(average_seeds(t), "A", "B")["seeds"] == 3  # an averaged table keeps the count
    assert claims.compare(t[t["seed"] == 0], "A", "B")["seeds"] == 1
    assert claims.compare(t.drop(columns="seed"), "A", "B")["seeds"] == 1
    # one patient of B trained once: the fewest trainings behind a patient's mean
    short = t[~((t["method"] == "B") & (t["case"] == "p1") & (t["seed"] > 0))]
    assert claims.compare(average_seeds(short), "A", "B")["seeds"] == 1
    r, same = claims.compare(t, "A", "B"), claims.compare(average_seeds(t), "A", "B")
    assert {k: v for k, v in r.items()} == pytest.approx({k: v for k, v in same.items()}, nan_ok=True)


def test_compare_uses_only_patients_both_were_scored_on():
    t = _table([0.1, 0.2, 0.3])
    t = t[~((t["method"] == "B") & (t["case"] == "p2"))]
    assert claims.compare(t, "A", "B")["n"] == 2


def test_judge_verdicts():
    eight_up = claims.compare(_table([0.01 * (i + 1) for i in range(8)]), "A", "B")
    five_up = claims.compare(_table([0.01 * (i + 1) for i in range(5)]), "A", "B")
    mixed = claims.compare(_table([0.05, -0.04, 0.03, -0.02, 0.01, -0.06, 0.02, -0.01]), "A", "B")
    assert eight_up["p_wilcoxon"] == pytest.approx(2 / 256)
    v = claims.judge([eight_up])
    assert v[0]["verdict"] == "holds" and v[0]["p_holm"] == pytest.approx(2 / 256) and v[0]["decidable"]
    assert claims.judge([eight_up], claimed=-1)[0]["verdict"] == "reversed"
    # five patients: a Wilcoxon p is never below 0.0625, whatever the differences
    assert claims.judge([five_up])[0]["verdict"] == "not decidable at this sample size"
    # Holm over the family: the mixed claim is decidable (2 x 2/256 < 0.05) but not significant
    fam = claims.judge([eight_up, mixed], claimed=[1, 1])
    assert [t["verdict"] for t in fam] == ["holds", "not shown"]
    assert fam[0]["p_holm"] == pytest.approx(2 * 2 / 256) and fam[0]["family"] == 2
    # a family too large for eight patients decides nothing: 7 x 2/256 = 0.055
    assert {t["verdict"] for t in claims.judge([eight_up] * 7)} == {"not decidable at this sample size"}
    with pytest.raises(DataError, match="2 claimed signs for 1 tests"):
        claims.judge([eight_up], claimed=[1, 1])
